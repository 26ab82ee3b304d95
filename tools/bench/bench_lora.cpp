// Section: the batched LoRA kernels (kernels/cuda/lora_*.cu) at Llama-2-7B and Llama-3-8B shapes, decode and
// prefill, against what a user would write instead (a loop of per-adapter cuBLAS GEMMs; gather + batched GEMM
// padded to the largest rank), and the headline: the LoRA work of a whole 32-layer Llama-2-7B decode step.
//
// Bytes are the fewest the op must move: each adapter matrix used read once, x read once, the f32 shrink values
// written once (shrink) and read once (expand), y read and written once. FLOPs are 2·tokens·rank·features.
// "% roofline" is the ideal time max(bytes / copy rate, FLOPs / GEMM rate) over the measured time. Adapter
// weights rotate over enough copies (≥ 192 MB) that repetitions read DRAM, not L2.

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cuda/detail/lora_tuning.hpp"
#include "kernels/cuda/ops.hpp"
#include "kernels/lora.hpp"
#include "tools/bench/bench.hpp"
#include "tools/bench/device_util.hpp"

namespace loraplex::bench {

namespace {

namespace lk = loraplex::kernels;
namespace tuning = loraplex::kernels::cuda::lora_tuning;

struct module_shape {
  const char* name;
  int in;
  std::vector<int> widths;
};

struct model_shape {
  const char* name;
  std::vector<module_shape> modules;
};

const model_shape llama2 = {"Llama-2-7B",
                            {{"qkv", 4096, {4096, 4096, 4096}},
                             {"o", 4096, {4096}},
                             {"gate_up", 4096, {11008, 11008}},
                             {"down", 11008, {4096}}}};
// o is the same shape as Llama-2's and not repeated.
const model_shape llama3 = {
    "Llama-3-8B", {{"qkv", 4096, {4096, 1024, 1024}}, {"gate_up", 4096, {14336, 14336}}, {"down", 14336, {4096}}}};

constexpr std::size_t rotation_bytes = std::size_t{192} << 20;

/// Random bf16 weights that adapters point into; allocations wrap around at the end.
class weight_pool {
 public:
  weight_pool(std::size_t bytes, cudaStream_t s) : buf_(bytes), elems_(bytes / 2) {
    fill_bf16(buf_.get(), elems_, 7, 0.03f, s);
  }
  const void* take(std::size_t n) {
    n = (n + 63) / 64 * 64;
    if (next_ + n > elems_) next_ = 0;
    const void* p = static_cast<const std::uint8_t*>(buf_.get()) + next_ * 2;
    next_ += n;
    return p;
  }

 private:
  cuda_buffer buf_;
  std::size_t elems_;
  std::size_t next_ = 0;
};

struct lora_spec {
  const model_shape* model = nullptr;
  const module_shape* mod = nullptr;
  int tokens = 1;
  std::vector<int> adapter_rank;  // one per adapter
  std::vector<int> seg_begin, seg_end, seg_adapter;
  std::string mix;
  bool prefill = false;
  int sets = 0;  // rotation sets; 0: enough for rotation_bytes
};

lora_spec decode_spec(const model_shape& m, const module_shape& mod, int batch, int rank, bool distinct) {
  lora_spec s;
  s.model = &m;
  s.mod = &mod;
  s.tokens = batch;
  s.mix = distinct ? "distinct" : "identical";
  if (distinct) {
    for (int t = 0; t < batch; ++t) {
      s.adapter_rank.push_back(rank);
      s.seg_begin.push_back(t);
      s.seg_end.push_back(t + 1);
      s.seg_adapter.push_back(t);
    }
  } else {
    s.adapter_rank = {rank};
    s.seg_begin = {0};
    s.seg_end = {batch};
    s.seg_adapter = {0};
  }
  return s;
}

lora_spec mixed_rank_spec(const model_shape& m, const module_shape& mod, int batch) {
  lora_spec s = decode_spec(m, mod, batch, 16, true);
  const int cycle[] = {8, 16, 32, 64, 128};
  for (int t = 0; t < batch; ++t) s.adapter_rank[t] = cycle[t % 5];
  s.mix = "distinct, ranks 8-128";
  return s;
}

lora_spec prefill_spec(const model_shape& m, const module_shape& mod, int tokens, int adapters, int rank) {
  lora_spec s;
  s.model = &m;
  s.mod = &mod;
  s.tokens = tokens;
  s.prefill = true;
  s.mix = adapters == 1 ? "identical" : fmt("%d adapters", adapters);
  for (int a = 0; a < adapters; ++a) {
    s.adapter_rank.push_back(rank);
    s.seg_begin.push_back(a * tokens / adapters);
    s.seg_end.push_back((a + 1) * tokens / adapters);
    s.seg_adapter.push_back(a);
  }
  return s;
}

/// Device data of one spec: rotation sets of adapter weights, the tables, x, y and the shrink buffer.
struct lora_instance {
  lora_spec spec;
  int ns = 1, na = 0, max_rank = 0, ldy = 0, sets = 1;
  std::vector<int> offsets;
  std::vector<std::int32_t> ranks, lda, ldb;
  std::vector<std::vector<const void*>> a_host, b_host;  // [set][adapter·ns + slice]
  std::vector<lk::lora_args> args;                        // [set]
  cuda_buffer d_ptrs, d_meta, x, y, s;
  double shrink_bytes = 0, expand_bytes = 0, shrink_flops = 0, expand_flops = 0, weight_bytes = 0;

  [[nodiscard]] int rank_of(int a, int j) const { return ranks[static_cast<std::size_t>(a) * ns + j]; }
};

lora_instance build(const lora_spec& sp, weight_pool& pool, cudaStream_t stream) {
  lora_instance in;
  in.spec = sp;
  const auto& mod = *sp.mod;
  in.ns = static_cast<int>(mod.widths.size());
  in.na = static_cast<int>(sp.adapter_rank.size());
  int col = 0;
  for (int w : mod.widths) {
    in.offsets.push_back(col);
    col += w;
  }
  in.ldy = col;
  for (int a = 0; a < in.na; ++a)
    for (int j = 0; j < in.ns; ++j) {
      in.ranks.push_back(sp.adapter_rank[a]);
      in.lda.push_back(mod.in);
      in.ldb.push_back(mod.widths[j]);
      in.max_rank = std::max(in.max_rank, sp.adapter_rank[a]);
    }
  double wbytes = 0;
  for (int a = 0; a < in.na; ++a)
    for (int j = 0; j < in.ns; ++j) wbytes += 2.0 * in.rank_of(a, j) * (mod.in + mod.widths[j]);
  in.weight_bytes = wbytes;
  in.sets = sp.sets > 0 ? sp.sets
                        : std::clamp(static_cast<int>(std::ceil(static_cast<double>(rotation_bytes) / wbytes)), 1, 16);
  in.a_host.resize(in.sets);
  in.b_host.resize(in.sets);
  for (int s = 0; s < in.sets; ++s)
    for (int a = 0; a < in.na; ++a)
      for (int j = 0; j < in.ns; ++j) {
        const int r = in.rank_of(a, j);
        in.a_host[s].push_back(pool.take(static_cast<std::size_t>(r) * mod.in));
        in.b_host[s].push_back(pool.take(static_cast<std::size_t>(r) * mod.widths[j]));
      }
  // Device tables: per set a_ptrs then bt_ptrs; then ranks, lda, ldb, segments, row adapters.
  const std::size_t entries = static_cast<std::size_t>(in.na) * in.ns;
  std::vector<const void*> ptrs;
  for (int s = 0; s < in.sets; ++s) {
    ptrs.insert(ptrs.end(), in.a_host[s].begin(), in.a_host[s].end());
    ptrs.insert(ptrs.end(), in.b_host[s].begin(), in.b_host[s].end());
  }
  in.d_ptrs = cuda_buffer::from(ptrs);
  std::vector<std::int32_t> row_adapter(sp.tokens, -1);
  for (std::size_t g = 0; g < sp.seg_begin.size(); ++g)
    for (int t = sp.seg_begin[g]; t < sp.seg_end[g]; ++t) row_adapter[t] = sp.seg_adapter[g];
  std::vector<std::int32_t> meta;
  const std::size_t o_rank = 0, o_lda = entries, o_ldb = 2 * entries, o_sb = 3 * entries,
                    o_se = o_sb + sp.seg_begin.size(), o_sa = o_se + sp.seg_begin.size(),
                    o_ra = o_sa + sp.seg_begin.size();
  meta.insert(meta.end(), in.ranks.begin(), in.ranks.end());
  meta.insert(meta.end(), in.lda.begin(), in.lda.end());
  meta.insert(meta.end(), in.ldb.begin(), in.ldb.end());
  meta.insert(meta.end(), sp.seg_begin.begin(), sp.seg_begin.end());
  meta.insert(meta.end(), sp.seg_end.begin(), sp.seg_end.end());
  meta.insert(meta.end(), sp.seg_adapter.begin(), sp.seg_adapter.end());
  meta.insert(meta.end(), row_adapter.begin(), row_adapter.end());
  in.d_meta = cuda_buffer::from(meta);
  const auto* m = in.d_meta.as<const std::int32_t>();

  in.x = cuda_buffer(static_cast<std::size_t>(sp.tokens) * mod.in * 2);
  in.y = cuda_buffer(static_cast<std::size_t>(sp.tokens) * in.ldy * 2);
  in.s = cuda_buffer(lk::lora_shrink_buffer_bytes(in.ns, sp.tokens, in.max_rank));
  fill_bf16(in.x.get(), static_cast<std::size_t>(sp.tokens) * mod.in, 11, 1.0f, stream);
  fill_bf16(in.y.get(), static_cast<std::size_t>(sp.tokens) * in.ldy, 13, 1.0f, stream);
  fill_f32(in.s.as<float>(), in.s.bytes() / 4, 17, 1.0f, stream);

  for (int s = 0; s < in.sets; ++s) {
    lk::lora_args a;
    a.num_tokens = sp.tokens;
    a.in_features = mod.in;
    a.x = in.x.get();
    a.ldx = mod.in;
    a.y = in.y.get();
    a.ldy = in.ldy;
    a.act_type = dtype::bf16;
    a.weight_type = dtype::bf16;
    a.num_slices = in.ns;
    for (int j = 0; j < in.ns; ++j) {
      a.slice_offset[j] = in.offsets[j];
      a.slice_width[j] = mod.widths[j];
    }
    a.num_adapters = in.na;
    const auto* base = in.d_ptrs.as<const void*>() + static_cast<std::size_t>(s) * 2 * entries;
    a.a_ptrs = base;
    a.bt_ptrs = base + entries;
    a.ranks = m + o_rank;
    a.lda = m + o_lda;
    a.ldb = m + o_ldb;
    a.max_rank = in.max_rank;
    a.num_segments = static_cast<int>(sp.seg_begin.size());
    a.seg_begin = m + o_sb;
    a.seg_end = m + o_se;
    a.seg_adapter = m + o_sa;
    a.row_adapter = m + o_ra;
    a.shrink_out = in.s.as<float>();
    in.args.push_back(a);
  }

  // Fewest bytes and the FLOPs.
  std::vector<bool> used(in.na, false);
  for (int a : sp.seg_adapter) used[a] = true;
  double a_bytes = 0, b_bytes = 0;
  for (int a = 0; a < in.na; ++a)
    if (used[a])
      for (int j = 0; j < in.ns; ++j) {
        a_bytes += 2.0 * in.rank_of(a, j) * mod.in;
        b_bytes += 2.0 * in.rank_of(a, j) * mod.widths[j];
      }
  double tok = 0, s_elems = 0, sf = 0, ef = 0;
  for (std::size_t g = 0; g < sp.seg_begin.size(); ++g) {
    const double len = sp.seg_end[g] - sp.seg_begin[g];
    tok += len;
    for (int j = 0; j < in.ns; ++j) {
      const double r = in.rank_of(sp.seg_adapter[g], j);
      s_elems += len * r;
      sf += 2.0 * len * r * mod.in;
      ef += 2.0 * len * r * mod.widths[j];
    }
  }
  in.shrink_bytes = a_bytes + tok * mod.in * 2.0 + s_elems * 4.0;
  in.expand_bytes = b_bytes + s_elems * 4.0 + tok * in.ldy * 4.0;
  in.shrink_flops = sf;
  in.expand_flops = ef;
  LORAPLEX_CUDA_CALL(cudaStreamSynchronize(stream));
  return in;
}

// --- what a user would write instead ----------------------------------------------------------------------

/// A loop of cuBLAS GEMMs per (segment, slice): shrink into a bf16 buffer, then expand with beta = 1.
class cublas_loop {
 public:
  cublas_loop(const lora_instance& in, cublasHandle_t h)
      : in_(in), h_(h), s16_(static_cast<std::size_t>(in.spec.tokens) * in.ns * in.max_rank * 2) {}
  void operator()(int set) {
    const auto& sp = in_.spec;
    const int in_f = sp.mod->in, lds = in_.ns * in_.max_rank;
    const float one = 1.0f, zero = 0.0f;
    const auto* x = in_.x.as<const __nv_bfloat16>();
    auto* y = in_.y.as<__nv_bfloat16>();
    auto* s = s16_.as<__nv_bfloat16>();
    const int st = set % in_.sets;
    for (std::size_t g = 0; g < sp.seg_begin.size(); ++g) {
      const int b = sp.seg_begin[g], len = sp.seg_end[g] - b, a = sp.seg_adapter[g];
      for (int j = 0; j < in_.ns; ++j) {
        const int r = in_.rank_of(a, j);
        const std::size_t e = static_cast<std::size_t>(a) * in_.ns + j;
        BENCH_CUBLAS(cublasGemmEx(h_, CUBLAS_OP_T, CUBLAS_OP_N, r, len, in_f, &one, in_.a_host[st][e], CUDA_R_16BF,
                                  in_f, x + static_cast<std::size_t>(b) * in_f, CUDA_R_16BF, in_f, &zero,
                                  s + (static_cast<std::size_t>(b) * in_.ns + j) * in_.max_rank, CUDA_R_16BF, lds,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      }
    }
    for (std::size_t g = 0; g < sp.seg_begin.size(); ++g) {
      const int b = sp.seg_begin[g], len = sp.seg_end[g] - b, a = sp.seg_adapter[g];
      for (int j = 0; j < in_.ns; ++j) {
        const int r = in_.rank_of(a, j), w = sp.mod->widths[j];
        const std::size_t e = static_cast<std::size_t>(a) * in_.ns + j;
        BENCH_CUBLAS(cublasGemmEx(h_, CUBLAS_OP_N, CUBLAS_OP_N, w, len, r, &one, in_.b_host[st][e], CUDA_R_16BF, w,
                                  s + (static_cast<std::size_t>(b) * in_.ns + j) * in_.max_rank, CUDA_R_16BF, lds,
                                  &one, y + static_cast<std::size_t>(b) * in_.ldy + in_.offsets[j], CUDA_R_16BF,
                                  in_.ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      }
    }
  }

 private:
  const lora_instance& in_;
  cublasHandle_t h_;
  cuda_buffer s16_;
};

/// Per row (one token each, decode): gather its adapter's A and Bt into buffers padded to the largest rank,
/// then one strided batched GEMM per slice for shrink and one for expand.
class gather_batched {
 public:
  gather_batched(const lora_instance& in, cublasHandle_t h, cudaStream_t s) : in_(in), h_(h), s_(s) {
    const auto& sp = in.spec;
    const int T = sp.tokens, R = in.max_rank;
    std::vector<int> row_adapter(T, -1);
    for (std::size_t g = 0; g < sp.seg_begin.size(); ++g)
      for (int t = sp.seg_begin[g]; t < sp.seg_end[g]; ++t) row_adapter[t] = sp.seg_adapter[g];
    for (int j = 0; j < in.ns; ++j) {
      const int w = sp.mod->widths[j];
      ag_.emplace_back(static_cast<std::size_t>(T) * R * sp.mod->in * 2);
      bg_.emplace_back(static_cast<std::size_t>(T) * R * w * 2);
      LORAPLEX_CUDA_CALL(cudaMemsetAsync(ag_.back().get(), 0, ag_.back().bytes(), s));
      LORAPLEX_CUDA_CALL(cudaMemsetAsync(bg_.back().get(), 0, bg_.back().bytes(), s));
      std::vector<std::int32_t> meta;  // lda[T], ldb[T], rows[T]
      for (int t = 0; t < T; ++t) meta.push_back(sp.mod->in);
      for (int t = 0; t < T; ++t) meta.push_back(w);
      for (int t = 0; t < T; ++t) meta.push_back(in.rank_of(row_adapter[t], j));
      meta_.push_back(cuda_buffer::from(meta));
      std::vector<const void*> ptrs;  // per set: A[T], Bt[T]
      for (int st = 0; st < in.sets; ++st) {
        for (int t = 0; t < T; ++t) ptrs.push_back(in.a_host[st][static_cast<std::size_t>(row_adapter[t]) * in.ns + j]);
        for (int t = 0; t < T; ++t) ptrs.push_back(in.b_host[st][static_cast<std::size_t>(row_adapter[t]) * in.ns + j]);
      }
      ptrs_.push_back(cuda_buffer::from(ptrs));
    }
    sg_ = cuda_buffer(static_cast<std::size_t>(T) * in.ns * R * 2);
    LORAPLEX_CUDA_CALL(cudaStreamSynchronize(s));
  }
  void operator()(int set) {
    const auto& sp = in_.spec;
    const int T = sp.tokens, R = in_.max_rank, in_f = sp.mod->in, st = set % in_.sets;
    const float one = 1.0f, zero = 0.0f;
    auto* sg = sg_.as<__nv_bfloat16>();
    for (int j = 0; j < in_.ns; ++j) {
      const int w = sp.mod->widths[j];
      const auto* p = ptrs_[j].as<const void*>() + static_cast<std::size_t>(st) * 2 * T;
      const auto* m = meta_[j].as<const std::int32_t>();
      gather_rows(p, m, m + 2 * T, T, R, in_f, ag_[j].get(), s_);
      gather_rows(p + T, m + T, m + 2 * T, T, R, w, bg_[j].get(), s_);
      BENCH_CUBLAS(cublasGemmStridedBatchedEx(h_, CUBLAS_OP_T, CUBLAS_OP_N, R, 1, in_f, &one, ag_[j].get(), CUDA_R_16BF,
                                              in_f, static_cast<long long>(R) * in_f, in_.x.get(), CUDA_R_16BF, in_f,
                                              in_f, &zero, sg + static_cast<std::size_t>(j) * R, CUDA_R_16BF, R,
                                              static_cast<long long>(in_.ns) * R, T, CUBLAS_COMPUTE_32F,
                                              CUBLAS_GEMM_DEFAULT));
      BENCH_CUBLAS(cublasGemmStridedBatchedEx(
          h_, CUBLAS_OP_N, CUBLAS_OP_N, w, 1, R, &one, bg_[j].get(), CUDA_R_16BF, w, static_cast<long long>(R) * w,
          sg + static_cast<std::size_t>(j) * R, CUDA_R_16BF, R, static_cast<long long>(in_.ns) * R, &one,
          in_.y.as<__nv_bfloat16>() + in_.offsets[j], CUDA_R_16BF, in_.ldy, in_.ldy, T, CUBLAS_COMPUTE_32F,
          CUBLAS_GEMM_DEFAULT));
    }
  }

 private:
  const lora_instance& in_;
  cublasHandle_t h_;
  cudaStream_t s_;
  std::vector<cuda_buffer> ag_, bg_, meta_, ptrs_;
  cuda_buffer sg_;
};

// --- rows --------------------------------------------------------------------------------------------------

struct timing {
  double shrink_ms = -1, expand_ms = -1, total_ms = 0;
};

std::vector<std::string> row_cells(const context& ctx, const lora_instance& in, const char* impl, const timing& t) {
  const double bytes = in.shrink_bytes + in.expand_bytes, flops = in.shrink_flops + in.expand_flops;
  const double sec = t.total_ms * 1e-3;
  const double ideal = std::max(bytes / (ctx.ceil.copy_gbs * 1e9), flops / (ctx.ceil.gemm_tflops * 1e12));
  auto us = [](double ms) { return ms < 0 ? std::string("-") : fmt("%.1f", ms * 1e3); };
  const auto& sp = in.spec;
  return {sp.model->name,
          sp.mod->name,
          fmt("%d", sp.tokens),
          in.max_rank == in.spec.adapter_rank.front() ? fmt("%d", in.max_rank) : std::string("8-128"),
          sp.mix,
          impl,
          us(t.shrink_ms),
          us(t.expand_ms),
          us(t.total_ms),
          fmt("%.2f", bytes / 1e6),
          fmt("%.0f", bytes / sec / 1e9),
          fmt("%.0f%%", 100.0 * bytes / sec / 1e9 / ctx.ceil.copy_gbs),
          fmt("%.1f", flops / sec / 1e12),
          fmt("%.0f%%", 100.0 * ideal / sec)};
}

table lora_table() {
  table t;
  t.header = {"model", "module", "tokens", "rank", "adapters", "impl", "shrink µs", "expand µs", "total µs",
              "MB", "GB/s", "% copy", "TFLOP/s", "% roofline"};
  return t;
}

timing time_ours(const context& ctx, const lora_instance& in) {
  timing t;
  const cudaStream_t s = ctx.stream;
  lk::cuda::lora_shrink(in.args[0], s);
  t.shrink_ms = median_ms(ctx, [&](int i) { lk::cuda::lora_shrink(in.args[i % in.sets], s); });
  t.expand_ms = median_ms(ctx, [&](int i) { lk::cuda::lora_expand(in.args[i % in.sets], s); });
  t.total_ms = median_ms(ctx, [&](int i) {
    lk::cuda::lora_shrink(in.args[i % in.sets], s);
    lk::cuda::lora_expand(in.args[i % in.sets], s);
  });
  return t;
}

void add_rows(context& ctx, table& tab, const lora_instance& in, bool alternatives) {
  tab.add(row_cells(ctx, in, "loraplex", time_ours(ctx, in)));
  if (!alternatives) return;
  timing t;
  {
    cublas_loop loop(in, ctx.cublas);
    t.total_ms = median_ms(ctx, [&](int i) { loop(i); });
    tab.add(row_cells(ctx, in, "cuBLAS loop", t));
  }
  if (!in.spec.prefill) {
    gather_batched gb(in, ctx.cublas, ctx.stream);
    t.total_ms = median_ms(ctx, [&](int i) { gb(i); });
    tab.add(row_cells(ctx, in, "gather+batched", t));
  }
}

/// Runs one configuration; a failure becomes a row of the table instead of ending the run.
template <typename F>
void guarded(context& ctx, table& tab, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    LORAPLEX_CUDA_CALL(cudaStreamSynchronize(ctx.stream));
    (void)cudaGetLastError();
    std::vector<std::string> row(tab.header.size(), "-");
    row[0] = std::string("failed: ") + e.what();
    tab.add(row);
  }
}

// --- the headline ------------------------------------------------------------------------------------------

void headline(context& ctx, weight_pool& pool) {
  constexpr int layers = 32, batch = 32, rank = 16;
  const module_shape& qkv = llama2.modules[0];
  const module_shape& o = llama2.modules[1];
  lora_spec sq = decode_spec(llama2, qkv, batch, rank, true);
  lora_spec so = decode_spec(llama2, o, batch, rank, true);
  sq.sets = so.sets = layers;  // each layer its own adapter weights
  const lora_instance iq = build(sq, pool, ctx.stream);
  const lora_instance io = build(so, pool, ctx.stream);
  const cudaStream_t s = ctx.stream;
  auto step = [&] {
    for (int l = 0; l < layers; ++l) {
      lk::cuda::lora_shrink(iq.args[l], s);
      lk::cuda::lora_expand(iq.args[l], s);
      lk::cuda::lora_shrink(io.args[l], s);
      lk::cuda::lora_expand(io.args[l], s);
    }
  };
  const double layer_bytes = iq.shrink_bytes + iq.expand_bytes + io.shrink_bytes + io.expand_bytes;
  const double weight_bytes = iq.weight_bytes + io.weight_bytes;
  const double floor_ms = layers * layer_bytes / (ctx.ceil.copy_gbs * 1e9) * 1e3;
  const double weight_floor_ms = layers * weight_bytes / (ctx.ceil.copy_gbs * 1e9) * 1e3;

  table t;
  t.header = {"implementation", "launch", "ms / step", "× floor", "GB/s"};
  auto add = [&](const std::string& impl, const std::string& launch, double ms) {
    t.add({impl, launch, fmt("%.3f", ms), fmt("%.2f", ms / floor_ms),
           fmt("%.0f", layers * layer_bytes / (ms * 1e-3) / 1e9)});
  };
  struct mode {
    const char* name;
    tuning::pdl pdl;
    bool graph;
  };
  const mode modes[] = {{"stream", tuning::pdl::off, false},
                        {"stream, PDL", tuning::pdl::on, false},
                        {"stream, PDL + L2 prefetch", tuning::pdl::prefetch, false},
                        {"CUDA graph", tuning::pdl::off, true},
                        {"CUDA graph, PDL", tuning::pdl::on, true},
                        {"CUDA graph, PDL + L2 prefetch", tuning::pdl::prefetch, true}};
  double best = 1e30;
  std::string best_mode;
  const tuning::pdl default_pdl = tuning::get_pdl();
  for (const mode& m : modes) {
    try {
      tuning::set_pdl(m.pdl);
      double ms = 0;
      if (m.graph) {
        cudaGraph_t graph = nullptr;
        cudaGraphExec_t exec = nullptr;
        LORAPLEX_CUDA_CALL(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
        step();
        LORAPLEX_CUDA_CALL(cudaStreamEndCapture(s, &graph));
        LORAPLEX_CUDA_CALL(cudaGraphInstantiate(&exec, graph, 0));
        ms = median_ms(ctx, [&](int) { LORAPLEX_CUDA_CALL(cudaGraphLaunch(exec, s)); });
        LORAPLEX_CUDA_CALL(cudaStreamSynchronize(s));
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(graph);
      } else {
        ms = median_ms(ctx, [&](int) { step(); });
      }
      tuning::set_pdl(default_pdl);
      add("loraplex", m.name, ms);
      if (ms < best) {
        best = ms;
        best_mode = m.name;
      }
    } catch (const std::exception& e) {
      tuning::set_pdl(default_pdl);
      cudaGraph_t g = nullptr;
      cudaStreamEndCapture(s, &g);  // leave capture mode if an error interrupted it
      if (g != nullptr) cudaGraphDestroy(g);
      cudaGetLastError();
      t.add({"loraplex", m.name, std::string("failed: ") + e.what(), "-", "-"});
    }
  }
  {
    cublas_loop lq(iq, ctx.cublas), lo(io, ctx.cublas);
    const double ms = median_ms(ctx, [&](int) {
      for (int l = 0; l < layers; ++l) {
        lq(l);
        lo(l);
      }
    }, 20, 2);
    add("cuBLAS loop (per adapter GEMMs)", "stream", ms);
  }
  {
    gather_batched gq(iq, ctx.cublas, s), go(io, ctx.cublas, s);
    const double ms = median_ms(ctx, [&](int) {
      for (int l = 0; l < layers; ++l) {
        gq(l);
        go(l);
      }
    }, 20, 2);
    add("gather + strided batched GEMM", "stream", ms);
  }

  // Each kernel alone: a graph of its 32 launches (one per layer's weights), time / 32.
  table k;
  k.header = {"kernel (one layer, in a graph of 32)", "µs", "MB", "GB/s", "% copy"};
  auto graph_us = [&](const std::function<void(int)>& launch_layer) {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    LORAPLEX_CUDA_CALL(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    for (int l = 0; l < layers; ++l) launch_layer(l);
    LORAPLEX_CUDA_CALL(cudaStreamEndCapture(s, &graph));
    LORAPLEX_CUDA_CALL(cudaGraphInstantiate(&exec, graph, 0));
    const double ms = median_ms(ctx, [&](int) { LORAPLEX_CUDA_CALL(cudaGraphLaunch(exec, s)); });
    LORAPLEX_CUDA_CALL(cudaStreamSynchronize(s));
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    return ms * 1e3 / layers;
  };
  auto krow = [&](const char* name, double us, double bytes) {
    k.add({name, fmt("%.2f", us), fmt("%.2f", bytes / 1e6), fmt("%.0f", bytes / (us * 1e-6) / 1e9),
           fmt("%.0f%%", 100.0 * bytes / (us * 1e-6) / 1e9 / ctx.ceil.copy_gbs)});
  };
  try {
    krow("shrink q,k,v (3 × 4096)", graph_us([&](int l) { lk::cuda::lora_shrink(iq.args[l], s); }), iq.shrink_bytes);
    krow("expand q,k,v", graph_us([&](int l) { lk::cuda::lora_expand(iq.args[l], s); }), iq.expand_bytes);
    krow("shrink o", graph_us([&](int l) { lk::cuda::lora_shrink(io.args[l], s); }), io.shrink_bytes);
    krow("expand o", graph_us([&](int l) { lk::cuda::lora_expand(io.args[l], s); }), io.expand_bytes);
  } catch (const std::exception& e) {
    k.add({std::string("failed: ") + e.what(), "-", "-", "-", "-"});
  }

  ctx.out->heading("Headline: Llama-2-7B decode step, LoRA work of 32 layers");
  ctx.out->paragraph(fmt(
      "Batch 32, 32 distinct rank-16 adapters on q, k, v (one launch pair, three slices of 4096) and o; every layer "
      "its own weights. Bytes a step: %.1f MB (adapter weights %.1f MB); floor at the measured copy rate %.0f GB/s: "
      "**%.3f ms** (weights alone %.3f ms). Best: **%.3f ms = %.2f× the floor** (%s).",
      layers * layer_bytes / 1e6, layers * weight_bytes / 1e6, ctx.ceil.copy_gbs, floor_ms, weight_floor_ms, best,
      best / floor_ms, best_mode.c_str()));
  ctx.out->add(t);
  ctx.out->add(k);
}

/// Design variants of the kernels side by side (lora_tuning::variant bit masks from LORAPLEX_LORA_VARIANTS, e.g.
/// "0,1,3"): the headline step in three launch modes, its kernels one by one, and a prefill.
void variants(context& ctx, weight_pool& pool, const std::vector<int>& list) {
  constexpr int layers = 32, batch = 32, rank = 16;
  lora_spec sq = decode_spec(llama2, llama2.modules[0], batch, rank, true);
  lora_spec so = decode_spec(llama2, llama2.modules[1], batch, rank, true);
  sq.sets = so.sets = layers;
  const lora_instance iq = build(sq, pool, ctx.stream);
  const lora_instance io = build(so, pool, ctx.stream);
  const lora_instance ip = build(prefill_spec(llama2, llama2.modules[0], 2048, 8, 16), pool, ctx.stream);
  const cudaStream_t s = ctx.stream;
  auto graph_ms = [&](const std::function<void()>& body) {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    LORAPLEX_CUDA_CALL(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    body();
    LORAPLEX_CUDA_CALL(cudaStreamEndCapture(s, &graph));
    LORAPLEX_CUDA_CALL(cudaGraphInstantiate(&exec, graph, 0));
    const double ms = median_ms(ctx, [&](int) { LORAPLEX_CUDA_CALL(cudaGraphLaunch(exec, s)); });
    LORAPLEX_CUDA_CALL(cudaStreamSynchronize(s));
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    return ms;
  };
  auto step = [&] {
    for (int l = 0; l < layers; ++l) {
      lk::cuda::lora_shrink(iq.args[l], s);
      lk::cuda::lora_expand(iq.args[l], s);
      lk::cuda::lora_shrink(io.args[l], s);
      lk::cuda::lora_expand(io.args[l], s);
    }
  };
  const double layer_bytes = iq.shrink_bytes + iq.expand_bytes + io.shrink_bytes + io.expand_bytes;
  const double floor_ms = layers * layer_bytes / (ctx.ceil.copy_gbs * 1e9) * 1e3;
  const double pre_bytes = ip.shrink_bytes + ip.expand_bytes;
  table t;
  t.header = {"variant", "stream, PDL ms", "graph, PDL ms", "graph, PDL+prefetch ms", "× floor (best)",
              "shrink qkv µs", "expand qkv µs", "shrink o µs", "expand o µs", "graph PDL+pf: sq", "eq", "so", "eo",
              "prefill shrink µs", "prefill expand µs", "prefill % copy"};
  const int old_variant = tuning::get_variant();
  const tuning::pdl old_pdl = tuning::get_pdl();
  for (const int v : list) {
    tuning::set_variant(v);
    std::vector<std::string> row = {fmt("%d", v)};
    try {
      tuning::set_pdl(tuning::pdl::on);
      const double st = median_ms(ctx, [&](int) { step(); });
      const double gr = graph_ms(step);
      tuning::set_pdl(tuning::pdl::prefetch);
      const double gp = graph_ms(step);
      row.push_back(fmt("%.3f", st));
      row.push_back(fmt("%.3f", gr));
      row.push_back(fmt("%.3f", gp));
      row.push_back(fmt("%.2f", std::min({st, gr, gp}) / floor_ms));
      for (const tuning::pdl m : {tuning::pdl::on, tuning::pdl::prefetch}) {
        tuning::set_pdl(m);
        auto per = [&](const std::function<void(int)>& f) {
          return graph_ms([&] {
                   for (int l = 0; l < layers; ++l) f(l);
                 }) * 1e3 / layers;
        };
        row.push_back(fmt("%.2f", per([&](int l) { lk::cuda::lora_shrink(iq.args[l], s); })));
        row.push_back(fmt("%.2f", per([&](int l) { lk::cuda::lora_expand(iq.args[l], s); })));
        row.push_back(fmt("%.2f", per([&](int l) { lk::cuda::lora_shrink(io.args[l], s); })));
        row.push_back(fmt("%.2f", per([&](int l) { lk::cuda::lora_expand(io.args[l], s); })));
      }
      tuning::set_pdl(tuning::pdl::on);
      const double ps = median_ms(ctx, [&](int i) { lk::cuda::lora_shrink(ip.args[i % ip.sets], s); });
      const double pe = median_ms(ctx, [&](int i) { lk::cuda::lora_expand(ip.args[i % ip.sets], s); });
      const double pt = median_ms(ctx, [&](int i) {
        lk::cuda::lora_shrink(ip.args[i % ip.sets], s);
        lk::cuda::lora_expand(ip.args[i % ip.sets], s);
      });
      row.push_back(fmt("%.1f", ps * 1e3));
      row.push_back(fmt("%.1f", pe * 1e3));
      row.push_back(fmt("%.0f%%", 100.0 * pre_bytes / (pt * 1e-3) / 1e9 / ctx.ceil.copy_gbs));
    } catch (const std::exception& e) {
      cudaGraph_t g = nullptr;
      cudaStreamEndCapture(s, &g);
      if (g != nullptr) cudaGraphDestroy(g);
      cudaGetLastError();
      row.push_back(std::string("failed: ") + e.what());
    }
    row.resize(t.header.size(), "-");
    t.add(row);
  }
  tuning::set_variant(old_variant);
  tuning::set_pdl(old_pdl);
  ctx.out->heading("Kernel design variants (lora_tuning::variant)");
  ctx.out->paragraph(
      fmt("Headline step (floor %.3f ms) in three launch modes; its four kernels each in a graph of 32, PDL on, "
          "then PDL + prefetch; prefill 2048 tokens, 8 adapters, q|k|v rank 16 (stream, PDL on). Bits: 1 shrink "
          "prefetches Bt, 2 lean, 4 L2-only early loads, 8 prefill y via shared memory, 16 bulk copies with "
          "prefetch, 32 bulk copies always, 64 8-warp prefill shrink, 128 L1 prefetch of the prefill expand's "
          "shrink values.",
          floor_ms));
  ctx.out->add(t);
}

}  // namespace

void bench_lora(context& ctx) {
  weight_pool pool(std::size_t{4} << 30, ctx.stream);
  if (const char* e = std::getenv("LORAPLEX_LORA_VARIANTS")) {
    std::vector<int> list;
    for (const char* p = e; *p != 0;) {
      char* end = nullptr;
      const long v = std::strtol(p, &end, 10);
      if (end == p) break;
      list.push_back(static_cast<int>(v));
      p = *end == ',' ? end + 1 : end;
    }
    if (!list.empty()) variants(ctx, pool, list);
    if (std::getenv("LORAPLEX_LORA_VARIANTS_ONLY") != nullptr) return;
  }
  // The rest with one variant (LORAPLEX_LORA_VARIANT=<bits>; default: the library's).
  if (const char* e = std::getenv("LORAPLEX_LORA_VARIANT")) tuning::set_variant(std::atoi(e));
  headline(ctx, pool);

  const std::vector<int> batches = ctx.quick ? std::vector<int>{1, 32, 256} : std::vector<int>{1, 8, 32, 128, 256};
  const std::vector<int> ranks = ctx.quick ? std::vector<int>{16, 64} : std::vector<int>{8, 16, 64, 128};
  std::vector<const model_shape*> models = {&llama2};
  if (!ctx.quick) models.push_back(&llama3);

  ctx.out->heading("LoRA decode (one token per row)");
  ctx.out->paragraph(
      "loraplex: lora_shrink + lora_expand (automatic path choice, default launch mode: PDL on, plain stream, "
      "each repetition between two events). cuBLAS loop: per (adapter group, slice) "
      "cublasGemmEx shrink into bf16, then expand with beta = 1. gather+batched: per-row copies of A and Bt padded "
      "to the largest rank, cublasGemmStridedBatchedEx per slice. Alternatives at rank 16 and on the mixed-rank rows.");
  table dec = lora_table();
  for (const model_shape* m : models)
    for (const module_shape& mod : m->modules)
      for (const int b : batches)
        for (const int r : ranks)
          for (const bool distinct : {true, false}) {
            if (!distinct && r != 16 && r != 64) continue;
            guarded(ctx, dec, [&] {
              const lora_instance in = build(decode_spec(*m, mod, b, r, distinct), pool, ctx.stream);
              add_rows(ctx, dec, in, r == 16);
            });
          }
  for (const int b : {32, 128}) {
    guarded(ctx, dec, [&] {
      const lora_instance in = build(mixed_rank_spec(llama2, llama2.modules[0], b), pool, ctx.stream);
      add_rows(ctx, dec, in, true);
    });
  }
  ctx.out->add(dec);

  ctx.out->heading("LoRA prefill (2048 tokens)");
  ctx.out->paragraph("8 adapters: 8 segments of 256 tokens; identical: one segment of 2048. cuBLAS loop as above.");
  table pre = lora_table();
  for (const model_shape* m : models)
    for (const module_shape& mod : m->modules)
      for (const int r : ranks)
        for (const int adapters : {8, 1}) {
          if (adapters == 1 && r != 16 && r != 64) continue;
          guarded(ctx, pre, [&] {
            const lora_instance in = build(prefill_spec(*m, mod, 2048, adapters, r), pool, ctx.stream);
            add_rows(ctx, pre, in, r == 16 || r == 64);
          });
        }
  ctx.out->add(pre);
}

}  // namespace loraplex::bench
