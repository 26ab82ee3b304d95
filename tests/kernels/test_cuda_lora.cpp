// The CUDA LoRA kernels (shrink, expand, merge) against the CPU reference, on fresh random inputs each run
// (seed printed; LORAPLEX_TEST_SEED=<n> replays one).
//
// Error measure: max |gpu - cpu| / max(1, max |cpu|) over the elements the op computes. Both sides see the same
// inputs (rounded to the device dtype first); the CPU reference computes in f32 from them, so what remains is
//  * y (expand):  the rounding of y to its dtype, at most one unit roundoff u of |y| (bf16: u = 2^-8, 8
//    significant bits; f16: u = 2^-11; f32: none), plus f32 summation-order differences (products of 16-bit
//    numbers are exact in f32; sums of <= 4096 terms of size <= 1 in another order differ by < 1e-5 here) and
//    the 2^-16 residue of the kernel's hi/lo split of the shrink values: bound u + 1e-4.
//  * shrink_out (f32): summation order only: bound 1e-4.
// Elements the op must not touch (rows without adapter, slices an adapter does not target, columns between
// and beside the slices) must stay bit-identical, and no output may be NaN. Inputs carry NaN in every padding
// element (beyond in_features in x rows, beyond the width in A/Bt rows, between matrices) and shrink_out is
// filled with NaN before each shrink, so reading or leaving anything unwritten shows up.
// Merge: the kernel sums in the reference loop's order with unfused f32 operations; merged weights must match
// bit for bit or (BLAS-built reference) within 1 ulp of the weight type.

#define BOOST_TEST_MODULE cuda_lora
#include <boost/test/unit_test.hpp>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "gpu/cuda_buffer.hpp"
#include "kernels/cuda/detail/lora_tuning.hpp"
#include "kernels/cuda/ops.hpp"
#include "kernels/dtype.hpp"
#include "kernels/lora.hpp"
#include "kernels/merge.hpp"

namespace {

using loraplex::cuda_buffer;
using loraplex::cuda_stream;
using loraplex::dtype;
namespace lk = loraplex::kernels;
namespace tuning = loraplex::kernels::cuda::lora_tuning;

// --- randomness --------------------------------------------------------------------------------------------

std::uint64_t base_seed() {
  static const std::uint64_t s = [] {
    if (const char* e = std::getenv("LORAPLEX_TEST_SEED")) return static_cast<std::uint64_t>(std::strtoull(e, nullptr, 10));
    std::random_device rd;
    return (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
  }();
  return s;
}

struct rng {
  std::uint64_t s;
  explicit rng(std::uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) {}
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float uniform(float lo, float hi) { return lo + (hi - lo) * static_cast<float>(next() >> 40) * (1.0f / 16777216.0f); }
  int below(int n) { return static_cast<int>(next() % static_cast<std::uint64_t>(n)); }
};

// --- host buffers in a dtype -------------------------------------------------------------------------------

/// Elements of one dtype on the host, NaN wherever nothing was written.
struct host_array {
  dtype t = dtype::f32;
  std::vector<std::uint8_t> bytes;
  host_array() = default;
  host_array(dtype type, std::size_t n) : t(type), bytes(n * loraplex::dtype_size(type)) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (std::size_t i = 0; i < n; ++i) loraplex::store_from_f32(bytes.data(), t, i, nan);
  }
  [[nodiscard]] std::size_t size() const { return bytes.size() / loraplex::dtype_size(t); }
  /// Stores v rounded to the dtype and returns the rounded value.
  float set(std::size_t i, float v) {
    loraplex::store_from_f32(bytes.data(), t, i, v);
    return get(i);
  }
  [[nodiscard]] float get(std::size_t i) const { return loraplex::load_as_f32(bytes.data(), t, i); }
  [[nodiscard]] std::uint32_t bits(std::size_t i) const {
    std::uint32_t b = 0;
    std::memcpy(&b, bytes.data() + i * loraplex::dtype_size(t), loraplex::dtype_size(t));
    return b;
  }
  [[nodiscard]] const void* at(std::size_t i) const { return bytes.data() + i * loraplex::dtype_size(t); }
};

// --- error bookkeeping -------------------------------------------------------------------------------------

std::map<std::string, double>& max_errors() {
  static std::map<std::string, double> m;
  return m;
}
void record(const std::string& key, double err) {
  double& m = max_errors()[key];
  m = std::max(m, err);
}

double unit_roundoff(dtype t) {
  switch (t) {
    case dtype::bf16: return std::ldexp(1.0, -8);
    case dtype::f16: return std::ldexp(1.0, -11);
    case dtype::f32: return 0.0;
  }
  return 0.0;
}
double y_bound(dtype t) { return unit_roundoff(t) + 1e-4; }
constexpr double shrink_bound = 1e-4;

// --- one LoRA case -----------------------------------------------------------------------------------------

enum class mix { distinct, uniform, zipf, identical };
const char* mix_name(mix m) {
  switch (m) {
    case mix::distinct: return "distinct";
    case mix::uniform: return "uniform";
    case mix::zipf: return "zipf";
    case mix::identical: return "identical";
  }
  return "?";
}
const char* path_name(tuning::path p) {
  switch (p) {
    case tuning::path::automatic: return "auto";
    case tuning::path::decode: return "decode";
    case tuning::path::prefill: return "prefill";
  }
  return "?";
}
const char* pdl_name(tuning::pdl p) {
  switch (p) {
    case tuning::pdl::off: return "off";
    case tuning::pdl::on: return "on";
    case tuning::pdl::prefetch: return "prefetch";
  }
  return "?";
}

struct lora_case {
  dtype act = dtype::bf16;
  dtype w = dtype::bf16;
  int rows = 7;
  int in = 456;                        // multiple of 8 (vector path), 57 k-chunks of 8, not of 64: k tail
  std::vector<int> widths = {512};     // slice widths
  std::vector<int> ranks = {16};       // choices for an adapter's rank
  mix m = mix::uniform;
  double unadapted = 0.0;              // fraction of rows without adapter
  bool sorted = false;                 // rows sorted by adapter (long segments)
  bool shuffle_segments = false;       // segment list in random order
  bool aligned = true;                 // false: odd paddings and offsets (scalar fallback kernels)
  int adapters = 0;                    // adapters for uniform / zipf (0: default)
  std::uint64_t seed = 0;

  [[nodiscard]] std::string str() const {
    std::ostringstream o;
    o << loraplex::dtype_name(act) << "/" << loraplex::dtype_name(w) << " rows " << rows << " in " << in << " widths";
    for (int v : widths) o << " " << v;
    o << " ranks";
    for (int r : ranks) o << " " << r;
    o << " " << mix_name(m) << (sorted ? " sorted" : "") << (shuffle_segments ? " shuffled" : "")
      << " unadapted " << unadapted << (aligned ? "" : " unaligned") << " seed " << seed;
    return o.str();
  }
};

/// Inputs of a case on host and device, and the CPU reference results.
class lora_fixture {
 public:
  explicit lora_fixture(const lora_case& c) : c_(c), rng_(c.seed) {
    ns_ = static_cast<int>(c.widths.size());
    build_mapping();
    build_weights();
    build_activations();
    build_segments();
    reference();
    upload();
  }

  /// Runs the GPU ops with the given knobs and checks every output element.
  void check(tuning::path path, tuning::pdl pdl) {
    const std::string what = c_.str() + " path " + path_name(path) + " pdl " + pdl_name(pdl);
    const tuning::path old_path = tuning::get_path();
    const tuning::pdl old_pdl = tuning::get_pdl();
    tuning::set_path(path);
    tuning::set_pdl(pdl);
    cuda_stream stream;
    d_y_.upload(y0_.bytes.data(), y0_.bytes.size());
    LORAPLEX_CUDA_CALL(cudaMemsetAsync(d_s_.get(), 0xff, d_s_.bytes(), stream.get()));  // NaN
    LORAPLEX_CUDA_CALL(cudaDeviceSynchronize());  // the pageable upload may still be in flight
    lk::lora_args g = args_;
    g.x = d_x_.get();
    g.y = d_y_.get();
    g.act_type = c_.act;
    g.a_ptrs = d_aptr_.as<const void* const>();
    g.bt_ptrs = d_bptr_.as<const void* const>();
    g.ranks = d_rank_.as<const std::int32_t>();
    g.lda = d_lda_.as<const std::int32_t>();
    g.ldb = d_ldb_.as<const std::int32_t>();
    g.seg_begin = d_sb_.as<const std::int32_t>();
    g.seg_end = d_se_.as<const std::int32_t>();
    g.seg_adapter = d_sa_.as<const std::int32_t>();
    g.row_adapter = d_ra_.as<const std::int32_t>();
    g.shrink_out = d_s_.as<float>();
    try {
      lk::cuda::lora_shrink(g, stream.get());
      lk::cuda::lora_expand(g, stream.get());
      stream.synchronize();
    } catch (const std::exception& e) {
      tuning::set_path(old_path);
      tuning::set_pdl(old_pdl);
      BOOST_ERROR(what << ": threw " << e.what());
      return;
    }
    tuning::set_path(old_path);
    tuning::set_pdl(old_pdl);

    host_array y(c_.act, y0_.size());
    d_y_.download(y.bytes.data(), y.bytes.size());
    std::vector<float> s(d_s_.bytes() / sizeof(float));
    d_s_.download(s.data(), d_s_.bytes());

    // shrink_out where it is defined
    double s_err = 0.0, s_max = 0.0;
    bool s_nan = false;
    for (int t = 0; t < c_.rows; ++t) {
      const int ad = row_adapter_[t];
      if (ad < 0) continue;
      for (int j = 0; j < ns_; ++j) {
        const int r = rank_[ad * ns_ + j];
        for (int k = 0; k < r; ++k) {
          const std::size_t i = (static_cast<std::size_t>(j) * c_.rows + t) * max_rank_ + k;
          if (std::isnan(s[i])) s_nan = true;
          s_err = std::max(s_err, static_cast<double>(std::fabs(s[i] - s_ref_[i])));
          s_max = std::max(s_max, static_cast<double>(std::fabs(s_ref_[i])));
        }
      }
    }
    s_err /= std::max(1.0, s_max);

    // y: computed elements within the bound, everything else untouched bit for bit
    double y_err = 0.0, y_max = 0.0;
    bool y_nan = false;
    long untouched_changed = 0;
    std::vector<std::uint8_t> computed(static_cast<std::size_t>(c_.rows) * ldy_, 0);
    for (int t = 0; t < c_.rows; ++t) {
      const int ad = row_adapter_[t];
      if (ad < 0) continue;
      for (int j = 0; j < ns_; ++j)
        if (rank_[ad * ns_ + j] > 0)
          for (int o = 0; o < c_.widths[j]; ++o) computed[static_cast<std::size_t>(t) * ldy_ + offset_[j] + o] = 1;
    }
    for (std::size_t i = 0; i < computed.size(); ++i) {
      const float v = y.get(i);
      if (std::isnan(v)) y_nan = true;
      if (computed[i]) {
        y_err = std::max(y_err, static_cast<double>(std::fabs(v - y_ref_[i])));
        y_max = std::max(y_max, static_cast<double>(std::fabs(y_ref_[i])));
      } else if (y.bits(i) != y0_.bits(i)) {
        ++untouched_changed;
      }
    }
    y_err /= std::max(1.0, y_max);

    const std::string key = std::string(loraplex::dtype_name(c_.act)) + "/" + std::string(loraplex::dtype_name(c_.w)) +
                            " " + path_name(path);
    record(key + " y", y_err);
    record(key + " shrink", s_err);
    ++checked_;
    BOOST_CHECK_MESSAGE(!s_nan, what << ": NaN in shrink_out");
    BOOST_CHECK_MESSAGE(s_err <= shrink_bound, what << ": shrink error " << s_err << " > " << shrink_bound);
    BOOST_CHECK_MESSAGE(!y_nan, what << ": NaN in y");
    BOOST_CHECK_MESSAGE(y_err <= y_bound(c_.act), what << ": y error " << y_err << " > " << y_bound(c_.act));
    BOOST_CHECK_MESSAGE(untouched_changed == 0, what << ": " << untouched_changed << " untouched y elements changed");
  }

  static long checked() { return checked_; }

 private:
  void build_mapping() {
    int na = 1;
    switch (c_.m) {
      case mix::distinct: na = c_.rows; break;
      case mix::uniform: na = c_.adapters > 0 ? c_.adapters : 4; break;
      case mix::zipf: na = c_.adapters > 0 ? c_.adapters : 8; break;
      case mix::identical: na = 1; break;
    }
    na_ = na;
    row_adapter_.assign(c_.rows, -1);
    std::vector<double> zipf_cdf;
    if (c_.m == mix::zipf) {
      double acc = 0.0;
      for (int k = 0; k < na; ++k) zipf_cdf.push_back(acc += 1.0 / std::pow(k + 1.0, 1.1));
      for (double& v : zipf_cdf) v /= acc;
    }
    for (int t = 0; t < c_.rows; ++t) {
      if (c_.unadapted > 0.0 && rng_.uniform(0.0f, 1.0f) < c_.unadapted) continue;
      switch (c_.m) {
        case mix::distinct: row_adapter_[t] = t; break;
        case mix::uniform: row_adapter_[t] = rng_.below(na); break;
        case mix::zipf: {
          const double u = rng_.uniform(0.0f, 1.0f);
          row_adapter_[t] = static_cast<int>(std::lower_bound(zipf_cdf.begin(), zipf_cdf.end(), u) - zipf_cdf.begin());
          row_adapter_[t] = std::min(row_adapter_[t], na - 1);
          break;
        }
        case mix::identical: row_adapter_[t] = 0; break;
      }
    }
    if (c_.sorted) std::sort(row_adapter_.begin(), row_adapter_.end());

    // Ranks per (adapter, slice): a choice per adapter; some adapters use another rank on slice 1, and skip
    // slice 2 or slice 0 (rank 0: not targeted), so the concatenated rank space is irregular.
    rank_.assign(static_cast<std::size_t>(na) * ns_, 0);
    for (int a = 0; a < na; ++a) {
      const int base = c_.ranks[rng_.below(static_cast<int>(c_.ranks.size()))];
      for (int j = 0; j < ns_; ++j) rank_[a * ns_ + j] = base;
      if (ns_ == 3) {
        if (a % 4 == 2) rank_[a * ns_ + 1] = std::max(1, base / 2 + 1);
        if (a % 3 == 1) rank_[a * ns_ + 2] = 0;
        if (a % 5 == 3) rank_[a * ns_ + 0] = 0;
      }
    }
    max_rank_ = std::max(1, *std::max_element(rank_.begin(), rank_.end()));
  }

  /// Row padding of matrix e: multiples of 8 elements (16-byte rows) when aligned, odd otherwise.
  [[nodiscard]] int pad(int e) const { return c_.aligned ? 8 * (e % 3) : (e % 3) * 3 + 1; }

  void build_weights() {
    // One pool per kind; every matrix at an 8-element boundary with a NaN gap after it.
    const int n = na_ * ns_;
    lda_.assign(n, 0);
    ldb_.assign(n, 0);
    a_off_.assign(n, 0);
    b_off_.assign(n, 0);
    std::size_t total = 64;
    for (int e = 0; e < n; ++e) {
      const int j = e % ns_, r = rank_[e];
      lda_[e] = c_.in + pad(e);
      ldb_[e] = c_.widths[j] + pad(e + 1);
      if (r == 0) continue;
      a_off_[e] = total;
      total += (static_cast<std::size_t>(r) * lda_[e] + 64 + 7) / 8 * 8;
      b_off_[e] = total;
      total += (static_cast<std::size_t>(r) * ldb_[e] + 64 + 7) / 8 * 8;
    }
    pool_ = host_array(c_.w, total);
    const float sa = 1.0f / std::sqrt(static_cast<float>(c_.in));
    for (int e = 0; e < n; ++e) {
      const int j = e % ns_, r = rank_[e];
      if (r == 0) continue;
      const float sb = 2.0f / std::sqrt(static_cast<float>(r));
      for (int k = 0; k < r; ++k) {
        for (int i = 0; i < c_.in; ++i) pool_.set(a_off_[e] + static_cast<std::size_t>(k) * lda_[e] + i, rng_.uniform(-sa, sa));
        for (int o = 0; o < c_.widths[j]; ++o)
          pool_.set(b_off_[e] + static_cast<std::size_t>(k) * ldb_[e] + o, rng_.uniform(-sb, sb));
      }
    }
  }

  void build_activations() {
    ldx_ = c_.in + (c_.aligned ? 8 : 3);
    x_ = host_array(c_.act, static_cast<std::size_t>(c_.rows) * ldx_);  // NaN padding
    for (int t = 0; t < c_.rows; ++t)
      for (int i = 0; i < c_.in; ++i) x_.set(static_cast<std::size_t>(t) * ldx_ + i, rng_.uniform(-1.0f, 1.0f));
    // Slices with gaps between and beside them; everything outside the slices must stay as it is.
    int col = c_.aligned ? 8 : 3;
    offset_.assign(ns_, 0);
    for (int j = 0; j < ns_; ++j) {
      offset_[j] = col;
      col += c_.widths[j] + (c_.aligned ? 8 : 5);
    }
    ldy_ = col;
    y0_ = host_array(c_.act, static_cast<std::size_t>(c_.rows) * ldy_);
    for (std::size_t i = 0; i < y0_.size(); ++i) y0_.set(i, rng_.uniform(-1.0f, 1.0f));
  }

  void build_segments() {
    for (int t = 0; t < c_.rows;) {
      const int ad = row_adapter_[t];
      int e = t + 1;
      while (e < c_.rows && row_adapter_[e] == ad) ++e;
      if (ad >= 0) {
        seg_begin_.push_back(t);
        seg_end_.push_back(e);
        seg_adapter_.push_back(ad);
      }
      t = e;
    }
    if (c_.shuffle_segments) {
      for (std::size_t i = seg_begin_.size(); i > 1; --i) {
        const std::size_t k = static_cast<std::size_t>(rng_.below(static_cast<int>(i)));
        std::swap(seg_begin_[i - 1], seg_begin_[k]);
        std::swap(seg_end_[i - 1], seg_end_[k]);
        std::swap(seg_adapter_[i - 1], seg_adapter_[k]);
      }
    }
  }

  void reference() {
    args_ = lk::lora_args{};
    args_.num_tokens = c_.rows;
    args_.in_features = c_.in;
    args_.ldx = ldx_;
    args_.ldy = ldy_;
    args_.act_type = dtype::f32;
    args_.weight_type = c_.w;
    args_.num_slices = ns_;
    for (int j = 0; j < ns_; ++j) {
      args_.slice_offset[j] = offset_[j];
      args_.slice_width[j] = c_.widths[j];
    }
    args_.num_adapters = na_;
    args_.max_rank = max_rank_;
    args_.num_segments = static_cast<int>(seg_begin_.size());

    std::vector<float> xf(x_.size()), yf(y0_.size());
    for (std::size_t i = 0; i < xf.size(); ++i) xf[i] = x_.get(i);
    for (std::size_t i = 0; i < yf.size(); ++i) yf[i] = y0_.get(i);
    std::vector<const void*> ap(rank_.size(), nullptr), bp(rank_.size(), nullptr);
    for (std::size_t e = 0; e < rank_.size(); ++e)
      if (rank_[e] > 0) {
        ap[e] = pool_.at(a_off_[e]);
        bp[e] = pool_.at(b_off_[e]);
      }
    s_ref_.assign(lk::lora_shrink_buffer_bytes(ns_, c_.rows, max_rank_) / sizeof(float), 0.0f);
    lk::lora_args h = args_;
    h.x = xf.data();
    h.y = yf.data();
    h.a_ptrs = ap.data();
    h.bt_ptrs = bp.data();
    h.ranks = rank_.data();
    h.lda = lda_.data();
    h.ldb = ldb_.data();
    h.seg_begin = seg_begin_.data();
    h.seg_end = seg_end_.data();
    h.seg_adapter = seg_adapter_.data();
    h.row_adapter = row_adapter_.data();
    h.shrink_out = s_ref_.data();
    lk::cpu::lora_shrink(h);
    lk::cpu::lora_expand(h);
    y_ref_ = std::move(yf);
  }

  void upload() {
    const std::size_t esz = loraplex::dtype_size(c_.w);
    d_pool_ = cuda_buffer(pool_.bytes.size());
    d_pool_.upload(pool_.bytes.data(), pool_.bytes.size());
    std::vector<const void*> ap(rank_.size(), nullptr), bp(rank_.size(), nullptr);
    const auto* base = static_cast<const std::uint8_t*>(d_pool_.get());
    for (std::size_t e = 0; e < rank_.size(); ++e)
      if (rank_[e] > 0) {
        ap[e] = base + a_off_[e] * esz;
        bp[e] = base + b_off_[e] * esz;
      }
    d_aptr_ = cuda_buffer::from(ap);
    d_bptr_ = cuda_buffer::from(bp);
    d_rank_ = cuda_buffer::from(rank_);
    d_lda_ = cuda_buffer::from(lda_);
    d_ldb_ = cuda_buffer::from(ldb_);
    auto upload_or_dummy = [](const std::vector<std::int32_t>& v) {
      return v.empty() ? cuda_buffer(sizeof(std::int32_t)) : cuda_buffer::from(v);
    };
    d_sb_ = upload_or_dummy(seg_begin_);
    d_se_ = upload_or_dummy(seg_end_);
    d_sa_ = upload_or_dummy(seg_adapter_);
    d_ra_ = upload_or_dummy(row_adapter_);
    d_x_ = cuda_buffer(x_.bytes.size());
    d_x_.upload(x_.bytes.data(), x_.bytes.size());
    d_y_ = cuda_buffer(y0_.bytes.size());
    d_s_ = cuda_buffer(std::max<std::size_t>(4, lk::lora_shrink_buffer_bytes(ns_, c_.rows, max_rank_)));
    LORAPLEX_CUDA_CALL(cudaDeviceSynchronize());
  }

  lora_case c_;
  rng rng_;
  int ns_ = 1, na_ = 1, max_rank_ = 1, ldx_ = 0, ldy_ = 0;
  std::vector<std::int32_t> row_adapter_, rank_, lda_, ldb_, seg_begin_, seg_end_, seg_adapter_;
  std::vector<int> offset_;
  std::vector<std::size_t> a_off_, b_off_;
  host_array pool_, x_, y0_;
  std::vector<float> s_ref_, y_ref_;
  lk::lora_args args_;
  cuda_buffer d_pool_, d_aptr_, d_bptr_, d_rank_, d_lda_, d_ldb_, d_sb_, d_se_, d_sa_, d_ra_, d_x_, d_y_, d_s_;
  static inline long checked_ = 0;
};

std::uint64_t next_seed() {
  static std::uint64_t n = 0;
  return base_seed() + 1000003ull * ++n;
}

void run_case(lora_case c, std::initializer_list<tuning::path> paths,
              std::initializer_list<tuning::pdl> pdls = {tuning::pdl::on}) {
  c.seed = next_seed();
  lora_fixture f(c);
  for (const auto p : paths)
    for (const auto m : pdls) f.check(p, m);
}

bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

struct announce {
  announce() { BOOST_TEST_MESSAGE("seed " << base_seed() << " (set LORAPLEX_TEST_SEED to replay)"); }
};
BOOST_GLOBAL_FIXTURE(announce);

const std::vector<std::vector<int>> rank_sets = {{1}, {4}, {12}, {16}, {64}, {128}, {256}, {1, 4, 12, 16, 64, 128, 256}};
const int row_counts[] = {1, 2, 3, 7, 133};
const mix mixes[] = {mix::distinct, mix::uniform, mix::zipf, mix::identical};

}  // namespace

BOOST_AUTO_TEST_CASE(lora_sweep) {
  BOOST_REQUIRE_MESSAGE(have_gpu(), "no CUDA device");
  // Every row count × rank set × adapter mix, bf16 and f16, each through the decode kernels, the prefill
  // kernels and the automatic choice. Slices alternate between one (512) and three of unequal widths
  // (q 512, k 128, v 136); ordering, unadapted rows and segment order vary with the case.
  int n = 0;
  for (const dtype dt : {dtype::bf16, dtype::f16})
    for (const int rows : row_counts)
      for (const auto& rs : rank_sets)
        for (const mix m : mixes) {
          ++n;
          lora_case c;
          c.act = c.w = dt;
          c.rows = rows;
          c.ranks = rs;
          c.m = m;
          c.widths = (n % 2 == 0) ? std::vector<int>{512} : std::vector<int>{512, 128, 136};
          c.unadapted = rows >= 3 ? (m == mix::uniform || m == mix::zipf ? 0.2 : 0.1) : 0.0;
          c.sorted = (m == mix::uniform || m == mix::zipf) && (n % 3 != 0);
          c.shuffle_segments = n % 4 == 1;
          run_case(c, {tuning::path::decode, tuning::path::prefill, tuning::path::automatic});
        }
}

BOOST_AUTO_TEST_CASE(lora_llama_shapes) {
  BOOST_REQUIRE_MESSAGE(have_gpu(), "no CUDA device");
  // Real shapes: hidden 4096, q 4096 / k 1024 / v 1024 (GQA), and a down-projection input of 11008;
  // decode batches and a prefill of three long segments.
  for (const dtype dt : {dtype::bf16, dtype::f16}) {
    lora_case c;
    c.act = c.w = dt;
    c.in = 4096;
    c.widths = {4096, 1024, 1024};
    c.ranks = {16, 64};
    c.rows = 32;
    c.m = mix::distinct;
    run_case(c, {tuning::path::decode, tuning::path::prefill, tuning::path::automatic});
    c.rows = 300;
    c.m = mix::uniform;
    c.adapters = 3;
    c.sorted = true;
    c.ranks = {8, 16, 128};
    run_case(c, {tuning::path::decode, tuning::path::prefill, tuning::path::automatic});
    lora_case d;
    d.act = d.w = dt;
    d.in = 11008;
    d.widths = {4096};
    d.ranks = {16};
    d.rows = 64;
    d.m = mix::uniform;
    d.sorted = true;
    run_case(d, {tuning::path::decode, tuning::path::prefill});
  }
}

BOOST_AUTO_TEST_CASE(lora_pdl_modes) {
  BOOST_REQUIRE_MESSAGE(have_gpu(), "no CUDA device");
  // Programmatic dependent launch, plain and with the early weight loads (registers + L2), on both paths and
  // for one, two and four tokens per decode pass.
  const std::initializer_list<tuning::pdl> modes = {tuning::pdl::off, tuning::pdl::on, tuning::pdl::prefetch};
  for (const int rows : {7, 133}) {
    lora_case c;
    c.rows = rows;
    c.widths = {512, 128, 136};
    c.ranks = {1, 16, 64, 256};
    c.m = mix::zipf;
    c.sorted = true;
    c.unadapted = 0.2;
    run_case(c, {tuning::path::decode, tuning::path::prefill}, modes);
  }
  for (const dtype dt : {dtype::bf16, dtype::f16}) {
    lora_case c;
    c.act = c.w = dt;
    c.rows = 32;
    c.in = 4096;
    c.widths = {4096, 1024, 1024};
    c.ranks = {16};
    c.m = mix::distinct;
    run_case(c, {tuning::path::decode, tuning::path::automatic}, modes);
    c.rows = 64;
    c.ranks = {8, 16, 40};
    c.m = mix::uniform;
    c.adapters = 40;
    run_case(c, {tuning::path::decode, tuning::path::automatic}, modes);
  }
}

BOOST_AUTO_TEST_CASE(lora_design_variants) {
  BOOST_REQUIRE_MESSAGE(have_gpu(), "no CUDA device");
  // Every combination of the kernels' design switches (lora_tuning::variant: the shrink's L2 prefetch of Bt,
  // lean decode kernels, L2-only early loads, prefill y through shared memory, decode weights through shared
  // memory by bulk copies with prefetch or always, 8-warp prefill shrink, L1 prefetch of the prefill expand's
  // shrink values) on the same inputs, through every path and launch mode: single-token decode at a real
  // shape, mixed ranks and multi-token segments (small ranks: the bulk expand; large: its fallback),
  // prefills (tiles of 16, 32 and 64 tokens), f32 activations and unaligned shapes.
  const std::initializer_list<tuning::pdl> modes = {tuning::pdl::off, tuning::pdl::on, tuning::pdl::prefetch};
  std::vector<lora_case> cases;
  {
    lora_case c;
    c.rows = 32;
    c.in = 4096;
    c.widths = {4096, 1024, 1024};
    c.ranks = {16};
    c.m = mix::distinct;
    cases.push_back(c);
    c.ranks = {16, 64};
    cases.push_back(c);
    c.act = c.w = dtype::f16;
    c.rows = 3;
    c.ranks = {1, 12, 256};
    cases.push_back(c);
  }
  {
    lora_case c;
    c.rows = 133;
    c.widths = {512, 128, 136};
    c.ranks = {1, 16, 64, 256};
    c.m = mix::zipf;
    c.sorted = true;
    c.unadapted = 0.2;
    cases.push_back(c);
    c.rows = 7;
    c.m = mix::uniform;
    c.shuffle_segments = true;
    cases.push_back(c);
    c.act = dtype::f32;
    c.rows = 33;
    cases.push_back(c);
    c.ranks = {3, 16};
    c.rows = 9;
    c.shuffle_segments = false;
    c.sorted = true;
    cases.push_back(c);
    c.act = c.w = dtype::bf16;
    c.ranks = {1, 5, 16, 20};
    c.rows = 133;
    c.m = mix::zipf;
    cases.push_back(c);
    c.act = c.w = dtype::f16;
    c.rows = 2;
    c.m = mix::identical;
    cases.push_back(c);
    c.act = c.w = dtype::bf16;
    c.rows = 300;  // long segments: prefill tiles of 64 tokens, in_features split over a cluster
    c.m = mix::uniform;
    c.adapters = 3;
    c.ranks = {8, 16, 128};
    cases.push_back(c);
    c.rows = 100;  // tiles of 32
    c.act = c.w = dtype::f16;
    cases.push_back(c);
    c.act = c.w = dtype::bf16;
    c.adapters = 0;
    c.rows = 7;
    c.in = 100;
    c.widths = {36, 20, 13};
    c.ranks = {1, 5, 16};
    c.aligned = false;
    cases.push_back(c);
  }
  const int old_variant = tuning::get_variant();
  for (lora_case c : cases) {
    c.seed = next_seed();
    lora_fixture f(c);
    for (int v = 0; v < 256; ++v) {
      BOOST_TEST_CONTEXT("variant " << v) {
        tuning::set_variant(v);
        for (const auto p : {tuning::path::decode, tuning::path::prefill, tuning::path::automatic})
          for (const auto m : modes) f.check(p, m);
      }
    }
  }
  tuning::set_variant(old_variant);
}

BOOST_AUTO_TEST_CASE(lora_f32_and_mixed_types) {
  BOOST_REQUIRE_MESSAGE(have_gpu(), "no CUDA device");
  // f32 activations with f32, bf16 and f16 weights (CUDA-core kernels; the prefill request falls back).
  for (const dtype w : {dtype::f32, dtype::bf16, dtype::f16})
    for (const int rows : {3, 133}) {
      lora_case c;
      c.act = dtype::f32;
      c.w = w;
      c.rows = rows;
      c.widths = {512, 128, 136};
      c.ranks = {1, 12, 64, 256};
      c.m = mix::uniform;
      c.sorted = rows > 3;
      c.unadapted = 0.2;
      run_case(c, {tuning::path::decode, tuning::path::prefill});
    }
}

BOOST_AUTO_TEST_CASE(lora_unaligned_shapes) {
  BOOST_REQUIRE_MESSAGE(have_gpu(), "no CUDA device");
  // in_features, widths, offsets and strides that are not multiples of 8: the scalar fallback kernels.
  for (const dtype dt : {dtype::bf16, dtype::f16})
    for (const int rows : {1, 7, 133}) {
      lora_case c;
      c.act = c.w = dt;
      c.rows = rows;
      c.in = 100;
      c.widths = {36, 20, 13};
      c.ranks = {1, 5, 16};
      c.m = mix::uniform;
      c.sorted = true;
      c.aligned = false;
      c.unadapted = 0.2;
      run_case(c, {tuning::path::decode, tuning::path::prefill});
    }
}

BOOST_AUTO_TEST_CASE(lora_no_work) {
  BOOST_REQUIRE_MESSAGE(have_gpu(), "no CUDA device");
  // Every row without adapter: nothing may change.
  lora_case c;
  c.rows = 7;
  c.unadapted = 1.0;
  c.widths = {512, 128, 136};
  run_case(c, {tuning::path::decode, tuning::path::prefill});
  // Zero tokens or zero segments: the ops return without launching.
  lk::lora_args a;
  a.num_tokens = 0;
  a.in_features = 64;
  a.ldx = 64;
  a.ldy = 64;
  a.act_type = a.weight_type = dtype::bf16;
  a.slice_width[0] = 64;
  a.max_rank = 16;
  BOOST_CHECK_NO_THROW(lk::cuda::lora_shrink(a, nullptr));
  BOOST_CHECK_NO_THROW(lk::cuda::lora_expand(a, nullptr));
}

BOOST_AUTO_TEST_CASE(lora_rejects_bad_args) {
  lk::lora_args a;
  a.num_tokens = 4;
  a.in_features = 64;
  a.ldx = 64;
  a.ldy = 64;
  a.act_type = a.weight_type = dtype::bf16;
  a.slice_width[0] = 64;
  a.max_rank = 300;  // above 256
  BOOST_CHECK_THROW(lk::cuda::lora_shrink(a, nullptr), std::invalid_argument);
  a.max_rank = 16;
  a.weight_type = dtype::f16;  // bf16 activations with f16 weights
  BOOST_CHECK_THROW(lk::cuda::lora_expand(a, nullptr), std::invalid_argument);
  a.weight_type = dtype::bf16;
  a.num_slices = 4;
  BOOST_CHECK_THROW(lk::cuda::lora_shrink(a, nullptr), std::invalid_argument);
  a.num_slices = 1;
  a.slice_offset[0] = 8;  // slice beyond ldy
  BOOST_CHECK_THROW(lk::cuda::lora_expand(a, nullptr), std::invalid_argument);
}

BOOST_AUTO_TEST_CASE(lora_merge_matches_reference) {
  BOOST_REQUIRE_MESSAGE(have_gpu(), "no CUDA device");
  long total = 0, exact = 0;
  int worst_ulps = 0;
  int n = 0;
  for (const dtype wt : {dtype::bf16, dtype::f16, dtype::f32})
    for (const dtype at : {dtype::bf16, dtype::f16, dtype::f32}) {
      if (at != wt && at != dtype::f32) continue;
      for (const int rank : {1, 16, 64, 256}) {
        rng g(next_seed());
        ++n;
        const int out = 200 + n, in = 300 + 3 * n, rows = out + 9, ldw = in + 5, off = 5;
        const int lda = in + 7, ldb = out + 3;
        host_array w(wt, static_cast<std::size_t>(rows) * ldw), A(at, static_cast<std::size_t>(rank) * lda),
            Bt(at, static_cast<std::size_t>(rank) * ldb);
        for (std::size_t i = 0; i < w.size(); ++i) w.set(i, g.uniform(-0.05f, 0.05f));
        for (int k = 0; k < rank; ++k) {
          for (int i = 0; i < in; ++i) A.set(static_cast<std::size_t>(k) * lda + i, g.uniform(-0.1f, 0.1f));
          for (int o = 0; o < out; ++o) Bt.set(static_cast<std::size_t>(k) * ldb + o, g.uniform(-0.1f, 0.1f));
        }
        host_array w_ref = w;
        lk::lora_merge_args m;
        m.w = w_ref.bytes.data();
        m.ldw = ldw;
        m.w_type = wt;
        m.row_offset = off;
        m.out_features = out;
        m.in_features = in;
        m.a = A.bytes.data();
        m.lda = lda;
        m.bt = Bt.bytes.data();
        m.ldb = ldb;
        m.adapter_type = at;
        m.rank = rank;
        lk::cpu::lora_merge(m);

        cuda_buffer dw(w.bytes.size()), da(A.bytes.size()), db(Bt.bytes.size());
        dw.upload(w.bytes.data(), w.bytes.size());
        da.upload(A.bytes.data(), A.bytes.size());
        db.upload(Bt.bytes.data(), Bt.bytes.size());
        m.w = dw.get();
        m.a = da.get();
        m.bt = db.get();
        lk::cuda::lora_merge(m, nullptr);
        LORAPLEX_CUDA_CALL(cudaDeviceSynchronize());
        host_array got(wt, w.size());
        dw.download(got.bytes.data(), got.bytes.size());
        long bad = 0;
        for (std::size_t i = 0; i < got.size(); ++i) {
          const auto a = static_cast<std::int64_t>(got.bits(i)), b = static_cast<std::int64_t>(w_ref.bits(i));
          const bool same_sign = ((a ^ b) >> (wt == dtype::f32 ? 31 : 15) & 1) == 0;
          const int ulps = same_sign ? static_cast<int>(std::llabs(a - b)) : (a == b ? 0 : 1 << 20);
          worst_ulps = std::max(worst_ulps, ulps);
          ++total;
          exact += ulps == 0;
          bad += ulps > 1;
        }
        BOOST_CHECK_MESSAGE(bad == 0, "merge w " << loraplex::dtype_name(wt) << " adapter " << loraplex::dtype_name(at)
                                                 << " rank " << rank << ": " << bad << " weights more than 1 ulp off");
      }
    }
  BOOST_TEST_MESSAGE("merge: " << exact << " of " << total << " weights bit-identical, worst " << worst_ulps << " ulp");
}

BOOST_AUTO_TEST_CASE(summary) {
  for (const auto& [key, err] : max_errors())
    BOOST_TEST_MESSAGE("max normalised error " << key << ": " << err);
  BOOST_TEST_MESSAGE(lora_fixture::checked() << " GPU runs checked against the CPU reference");
}
