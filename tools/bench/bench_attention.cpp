// Section: paged attention. Decode (one query token per sequence) at several context lengths, Llama-2-7B
// (32 query and 32 KV heads) and Llama-3-8B (32 / 8, GQA) shapes, head_dim 128, bf16, pages of 16 tokens in a
// shuffled order; bytes counted are the K and V rows read (the floor), compared with the measured copy
// ceiling. Prefill: one 2048-token causal chunk, FLOPs 2·2·T²/2·heads·head_dim, compared with the GEMM ceiling.

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cuda/ops.hpp"
#include "tools/bench/bench.hpp"
#include "tools/bench/device_util.hpp"

namespace loraplex::bench {

namespace {

struct attn_shape {
  const char* model;
  int heads;
  int kv_heads;
};

struct attn_case {
  int seqs;
  int context;
  int query;  // tokens per sequence this step (1: decode)
};

double run_attention(context& ctx, const attn_shape& s, const attn_case& c, double* bytes_out, double* flops_out) {
  constexpr int head_dim = 128, page = 16;
  const int kv_dim = s.kv_heads * head_dim;
  const int blocks = (c.context + page - 1) / page;
  const int num_pages = c.seqs * blocks;
  const int tokens = c.seqs * c.query;
  const std::size_t kv_elems = static_cast<std::size_t>(num_pages) * page * kv_dim;
  cuda_buffer k(kv_elems * 2), v(kv_elems * 2);
  fill_bf16(k.get(), kv_elems, 11, 1.0f, ctx.stream);
  fill_bf16(v.get(), kv_elems, 12, 1.0f, ctx.stream);
  const int ld_q = (s.heads + 2 * s.kv_heads) * head_dim;
  cuda_buffer q(static_cast<std::size_t>(tokens) * ld_q * 2), out(static_cast<std::size_t>(tokens) * s.heads * head_dim * 2);
  fill_bf16(q.get(), static_cast<std::size_t>(tokens) * ld_q, 13, 1.0f, ctx.stream);
  std::vector<std::int32_t> table(static_cast<std::size_t>(num_pages));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(5));
  std::vector<std::int32_t> qs(static_cast<std::size_t>(c.seqs) + 1), ctxl(static_cast<std::size_t>(c.seqs), c.context);
  for (int i = 0; i <= c.seqs; ++i) qs[static_cast<std::size_t>(i)] = i * c.query;
  cuda_buffer d_table = cuda_buffer::from(table), d_qs = cuda_buffer::from(qs), d_ctx = cuda_buffer::from(ctxl);

  kernels::paged_attention_args a;
  a.q = q.get();
  a.ld_q = ld_q;
  a.k_cache = k.get();
  a.v_cache = v.get();
  a.block_tables = d_table.as<std::int32_t>();
  a.query_start = d_qs.as<std::int32_t>();
  a.context_lens = d_ctx.as<std::int32_t>();
  a.out = out.get();
  a.act_type = dtype::bf16;
  a.kv_type = dtype::bf16;
  a.num_seqs = c.seqs;
  a.num_tokens = tokens;
  a.num_heads = s.heads;
  a.num_kv_heads = s.kv_heads;
  a.head_dim = head_dim;
  a.page_size = page;
  a.max_blocks_per_seq = blocks;
  a.max_query_len = c.query;
  a.max_context_len = c.context;
  a.scale = 0.088388f;
  cuda_buffer ws(std::max<std::size_t>(kernels::cuda::paged_attention_workspace_bytes(a), 16));
  a.workspace = ws.get();
  const double ms = median_ms(ctx, [&](int) { kernels::cuda::paged_attention(a, ctx.stream); });
  *bytes_out = 2.0 * c.seqs * static_cast<double>(c.context) * kv_dim * 2.0;  // K and V, bf16
  // QKᵀ and PV: 2 FLOPs per multiply-add; causal prefill sees about half of the keys.
  const double keys = c.query == 1 ? c.context : 0.5 * c.query + (c.context - c.query);
  *flops_out = 4.0 * c.seqs * static_cast<double>(c.query) * keys * s.heads * head_dim;
  return ms;
}

}  // namespace

void bench_attention(context& ctx) {
  ctx.out->heading("Paged attention (bf16, head_dim 128, pages of 16 tokens, shuffled)");
  const std::vector<attn_shape> shapes = {{"Llama-2-7B", 32, 32}, {"Llama-3-8B", 32, 8}};
  std::vector<attn_case> decode = {{32, 1024, 1}, {32, 2048, 1}, {64, 2048, 1}, {16, 8192, 1}, {8, 16384, 1}, {256, 1024, 1}};
  if (ctx.quick) decode = {{32, 1024, 1}, {16, 8192, 1}};
  table t;
  t.header = {"model", "phase", "seqs × context", "time", "K+V bytes", "GB/s", "of copy ceiling", "TFLOP/s"};
  for (const auto& s : shapes) {
    for (const auto& c : decode) {
      double bytes = 0, flops = 0;
      const double ms = run_attention(ctx, s, c, &bytes, &flops);
      const double gbs = bytes / (ms * 1e-3) / 1e9;
      t.add({s.model, "decode", fmt("%d × %d", c.seqs, c.context), fmt("%.1f µs", ms * 1e3), fmt("%.1f MB", bytes / 1e6),
             fmt("%.0f", gbs), fmt("%.0f%%", 100.0 * gbs / ctx.ceil.copy_gbs), fmt("%.1f", flops / (ms * 1e-3) / 1e12)});
    }
    double bytes = 0, flops = 0;
    const attn_case pre{1, 2048, 2048};
    const double ms = run_attention(ctx, s, pre, &bytes, &flops);
    const double tf = flops / (ms * 1e-3) / 1e12;
    t.add({s.model, "prefill (causal)", "1 × 2048", fmt("%.1f µs", ms * 1e3), fmt("%.1f MB", bytes / 1e6),
           fmt("%.0f", bytes / (ms * 1e-3) / 1e9), fmt("%.1f%% of GEMM ceiling", 100.0 * tf / ctx.ceil.gemm_tflops), fmt("%.1f", tf)});
  }
  ctx.out->add(t);
}

}  // namespace loraplex::bench
