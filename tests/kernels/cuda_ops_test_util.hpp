#pragma once
// Helpers of the CUDA ops tests (test_cuda_*.cpp): the run's random seed, host tensors of any dtype, poisoned
// device buffers and the normalised error against the CPU reference.
//
// Error metric: max|gpu − cpu| / max(1, max|cpu|), on inputs rounded to the dtype first for both backends.
// Bounds (tolerance()): the two backends compute in f32 and differ only in the order of sums and in the last
// bits of expf/cosf, so an output stored in a 16-bit type can land on the neighbouring representable value:
// one unit in the last place is 2^-8 (bf16, 8 bits of precision) or 2^-11 (f16) of the value, and the value is
// at most max|cpu|. The bounds are twice that. f32 outputs see only f32 rounding: 1e-5 for element-wise ops,
// 1e-4 for attention and GEMM, whose reference sums thousands of terms in sequence (n·ε ≈ 1.2e-4 at n = 2k).

#include <boost/test/unit_test.hpp>

#include <cuda_runtime.h>

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

#include "gpu/cuda_buffer.hpp"
#include "kernels/dtype.hpp"

namespace loraplex::test {

/// This run's seed: $LORAPLEX_TEST_SEED when set (to replay a failure), else fresh. Printed once.
inline std::uint64_t run_seed() {
  static const std::uint64_t seed = [] {
    std::uint64_t s = 0;
    if (const char* env = std::getenv("LORAPLEX_TEST_SEED")) {
      s = std::strtoull(env, nullptr, 10);
    } else {
      std::random_device rd;
      s = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
    }
    BOOST_TEST_MESSAGE("random seed " << s << " (replay with LORAPLEX_TEST_SEED=" << s << ")");
    return s;
  }();
  return seed;
}

/// A generator per test case: the run seed mixed with the case name, so cases do not depend on their order.
inline std::mt19937_64 make_rng(const std::string& name) {
  std::uint64_t h = run_seed();
  for (const char c : name) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  return std::mt19937_64(h);
}

enum class tol_kind { elementwise, reduction };

/// The normalised-error bound of an output stored in `t` (see the file comment for the reasons).
inline double tolerance(dtype t, tol_kind kind = tol_kind::elementwise) {
  switch (t) {
    case dtype::bf16: return 2.0 * std::ldexp(1.0, -8);
    case dtype::f16: return 2.0 * std::ldexp(1.0, -11);
    case dtype::f32: return kind == tol_kind::elementwise ? 1e-5 : 1e-4;
  }
  return 0.0;
}

/// The coarser of two types (the bound of a value that went through both).
inline dtype coarser(dtype a, dtype b) {
  const auto rank = [](dtype t) { return t == dtype::bf16 ? 2 : t == dtype::f16 ? 1 : 0; };
  return rank(a) >= rank(b) ? a : b;
}

/// Host tensor of n elements of one dtype, read and written as f32 (writes round to the dtype).
class host_tensor {
 public:
  host_tensor(dtype t, std::size_t n) : type_(t), n_(n), bytes_(n * dtype_size(t)) {}

  [[nodiscard]] dtype type() const { return type_; }
  [[nodiscard]] std::size_t size() const { return n_; }
  [[nodiscard]] std::size_t bytes() const { return bytes_.size(); }
  [[nodiscard]] void* data() { return bytes_.data(); }
  [[nodiscard]] const void* data() const { return bytes_.data(); }
  [[nodiscard]] float get(std::size_t i) const { return load_as_f32(bytes_.data(), type_, i); }
  void set(std::size_t i, float v) { store_from_f32(bytes_.data(), type_, i, v); }

  void fill_uniform(std::mt19937_64& rng, float lo, float hi) {
    std::uniform_real_distribution<float> d(lo, hi);
    for (std::size_t i = 0; i < n_; ++i) set(i, d(rng));
  }
  void fill_nan() {
    for (std::size_t i = 0; i < n_; ++i) set(i, std::numeric_limits<float>::quiet_NaN());
  }
  [[nodiscard]] cuda_buffer upload() const {
    cuda_buffer b(std::max<std::size_t>(bytes_.size(), 16));
    if (!bytes_.empty()) b.upload(bytes_.data(), bytes_.size());
    return b;
  }
  void download(const cuda_buffer& b) {
    if (!bytes_.empty()) b.download(bytes_.data(), bytes_.size());
  }

 private:
  dtype type_;
  std::size_t n_;
  std::vector<std::uint8_t> bytes_;
};

/// A device buffer filled with 0xFF bytes: NaN in f32, bf16 and f16, so anything not written shows.
inline cuda_buffer poisoned(std::size_t bytes) {
  cuda_buffer b(std::max<std::size_t>(bytes, 16));
  LORAPLEX_CUDA_CALL(cudaMemset(b.get(), 0xff, b.bytes()));
  return b;
}

template <typename T>
inline cuda_buffer upload_vec(const std::vector<T>& v) {
  cuda_buffer b(std::max<std::size_t>(v.size() * sizeof(T), 16));
  if (!v.empty()) b.upload(v.data(), v.size() * sizeof(T));
  return b;
}

struct error_report {
  double norm_err = 0.0;  // max|gpu − cpu| / max(1, max|cpu|)
  double max_ref = 0.0;
  std::size_t nan = 0;    // values finite on one side only
  std::size_t checked = 0;
};

/// Compares element idx(i) of gpu and cpu for i < count (both read as f32).
template <typename Get1, typename Get2>
inline error_report compare(std::size_t count, Get1 gpu, Get2 cpu) {
  error_report r;
  double max_diff = 0.0;
  for (std::size_t i = 0; i < count; ++i) {
    const double c = cpu(i);
    const double g = gpu(i);
    if (std::isfinite(g) != std::isfinite(c)) {  // not written, NaN produced, or written where it should not be
      ++r.nan;
      continue;
    }
    if (!std::isfinite(c)) continue;
    r.max_ref = std::max(r.max_ref, std::fabs(c));
    max_diff = std::max(max_diff, std::fabs(g - c));
  }
  r.checked = count;
  r.norm_err = max_diff / std::max(1.0, r.max_ref);
  return r;
}

inline error_report compare(const host_tensor& gpu, const host_tensor& cpu) {
  BOOST_REQUIRE_EQUAL(gpu.size(), cpu.size());
  return compare(gpu.size(), [&](std::size_t i) { return gpu.get(i); }, [&](std::size_t i) { return cpu.get(i); });
}

/// The largest error seen per label (one per output dtype), logged when the test case ends: the numbers the
/// report quotes.
class max_tracker {
 public:
  explicit max_tracker(std::string name) : name_(std::move(name)) {}
  max_tracker(const max_tracker&) = delete;
  max_tracker& operator=(const max_tracker&) = delete;
  ~max_tracker() {
    for (int t = 0; t < 3; ++t)
      if (cases_[t] > 0)
        BOOST_TEST_MESSAGE(name_ << " [" << dtype_name(static_cast<dtype>(t)) << "]: " << cases_[t]
                                 << " checks, max normalised error " << worst_[t] << " (bound " << bound_[t] << ")");
  }
  void add(dtype t, const error_report& r, double bound) {
    const int i = static_cast<int>(t);
    worst_[i] = std::max(worst_[i], r.norm_err);
    bound_[i] = bound;
    ++cases_[i];
  }

 private:
  std::string name_;
  double worst_[3] = {0, 0, 0};
  double bound_[3] = {0, 0, 0};
  int cases_[3] = {0, 0, 0};
};

/// Checks a report against a bound (no NaN or unwritten value, error within the bound) and records it.
inline void check_error(const error_report& r, double bound, const std::string& what, max_tracker& track, dtype t) {
  track.add(t, r, bound);
  BOOST_TEST(r.nan == 0u, what << ": " << r.nan << " values not written, not finite, or written out of place");
  BOOST_TEST(r.norm_err <= bound, what << ": normalised error " << r.norm_err << " above " << bound << " (max|cpu| "
                                       << r.max_ref << ")");
}

}  // namespace loraplex::test
