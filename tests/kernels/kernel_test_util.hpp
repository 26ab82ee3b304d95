#pragma once
/// Helpers of the CPU kernel tests: seeded generators, typed buffers with NaN-poisoned padding, and a
/// tolerance check that reports the worst element once.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <boost/test/unit_test.hpp>

#include "kernels/dtype.hpp"

namespace loraplex::test {

constexpr int odd_token_counts[] = {1, 2, 3, 7, 133};
constexpr double nan_d = std::numeric_limits<double>::quiet_NaN();
constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();

[[nodiscard]] inline unsigned base_seed() {
  static const unsigned seed = [] {
    if (const char* e = std::getenv("LORAPLEX_TEST_SEED")) return static_cast<unsigned>(std::strtoul(e, nullptr, 10));
    return static_cast<unsigned>(std::random_device{}());
  }();
  return seed;
}

/// The generator of one test case: the run's seed mixed with the case name (FNV-1a), logged for replay.
[[nodiscard]] inline std::mt19937 make_rng(const std::string& name) {
  std::uint32_t h = 2166136261u;
  for (const char c : name) h = (h ^ static_cast<unsigned char>(c)) * 16777619u;
  BOOST_TEST_MESSAGE(name << ": LORAPLEX_TEST_SEED=" << base_seed());
  return std::mt19937(base_seed() ^ h);
}

[[nodiscard]] inline float uniform(std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  return std::uniform_real_distribution<float>(lo, hi)(rng);
}
[[nodiscard]] inline int uniform_int(std::mt19937& rng, int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }

/// n elements of one dtype; values read and written through the (separately tested) dtype conversions.
struct buffer {
  dtype type = dtype::f32;
  std::vector<std::uint8_t> bytes;
  buffer(dtype t, std::size_t n, float fill = 0.0f) : type(t), bytes(n * dtype_size(t)) {
    for (std::size_t i = 0; i < n; ++i) set(i, fill);
  }
  [[nodiscard]] void* data() { return bytes.data(); }
  [[nodiscard]] const void* data() const { return bytes.data(); }
  [[nodiscard]] float at(std::size_t i) const { return load_as_f32(bytes.data(), type, i); }
  void set(std::size_t i, float v) { store_from_f32(bytes.data(), type, i, v); }
  [[nodiscard]] bool same_bits(const buffer& o, std::size_t i) const {
    const std::size_t s = dtype_size(type);
    return std::memcmp(bytes.data() + i * s, o.bytes.data() + i * s, s) == 0;
  }
};

[[nodiscard]] inline buffer random_buffer(dtype t, std::size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  buffer b(t, n);
  for (std::size_t i = 0; i < n; ++i) b.set(i, uniform(rng, lo, hi));
  return b;
}

/// rows × cols random values with row stride ld and NaN in the padding: a kernel reading past cols shows it.
[[nodiscard]] inline buffer random_matrix(dtype t, int rows, int cols, int ld, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  buffer b = random_buffer(t, static_cast<std::size_t>(rows) * ld, rng, lo, hi);
  for (int r = 0; r < rows; ++r)
    for (int c = cols; c < ld; ++c) b.set(static_cast<std::size_t>(r) * ld + c, nan_f);
  return b;
}

[[nodiscard]] inline std::string name(dtype t) { return std::string(dtype_name(t)); }

/// Half the spacing of type t's representable values at |v| (0 for f32: callers add the f32 bound themselves).
[[nodiscard]] inline double half_ulp(dtype t, double v) {
  if (t == dtype::f32 || v == 0.0) return t == dtype::f32 ? 0.0 : std::ldexp(1.0, -25);
  const int e = std::ilogb(std::abs(v));
  if (t == dtype::bf16) return std::ldexp(1.0, std::max(e, -126) - 8);
  return std::ldexp(1.0, std::max(e, -14) - 11);
}

/// Collects |got - ref| ≤ allowance per element and reports the worst ratio once; NaN always fails.
class close_check {
 public:
  explicit close_check(std::string label) : label_(std::move(label)) {}
  void operator()(std::size_t i, double got, double ref, double allowance) {
    ++count_;
    const double err = std::abs(got - ref);
    const double ratio = std::isnan(err) ? std::numeric_limits<double>::infinity()
                                         : (err == 0.0 ? 0.0 : err / std::max(allowance, 1e-300));
    if (ratio > worst_) worst_ = ratio, at_ = i, got_ = got, ref_ = ref;
  }
  [[nodiscard]] std::size_t count() const noexcept { return count_; }
  void report() const {
    BOOST_CHECK_MESSAGE(count_ > 0 && worst_ <= 1.0, label_ << ": worst error/allowance " << worst_ << " at element " << at_
                                                            << " (got " << got_ << ", expected " << ref_ << ") of " << count_);
  }

 private:
  std::string label_;
  std::size_t count_ = 0, at_ = 0;
  double worst_ = 0.0, got_ = 0.0, ref_ = 0.0;
};

}  // namespace loraplex::test
