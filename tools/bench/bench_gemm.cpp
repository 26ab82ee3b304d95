// Section: the base projections of one decode/prefill step through kernels::cuda::gemm (cuBLAS, bf16 in,
// f32 accumulation), at Llama-2-7B shapes: the fused q|k|v, o, fused gate|up, down and lm_head. Bytes are the
// weight plus the activations in and out; compared with both measured ceilings.

#include <vector>

#include "kernels/cuda/ops.hpp"
#include "tools/bench/bench.hpp"
#include "tools/bench/device_util.hpp"

namespace loraplex::bench {

void bench_gemm(context& ctx) {
  ctx.out->heading("Base GEMMs (Llama-2-7B, bf16, cuBLAS through kernels::cuda::gemm)");
  struct proj {
    const char* name;
    int n;
    int k;
  };
  const std::vector<proj> projs = {{"q|k|v", 3 * 4096, 4096}, {"o", 4096, 4096}, {"gate|up", 2 * 11008, 4096},
                                   {"down", 4096, 11008}, {"lm_head", 32000, 4096}};
  std::vector<int> rows = {1, 8, 32, 128, 256, 2048};
  if (ctx.quick) rows = {32, 2048};
  table t;
  t.header = {"projection", "rows", "time", "GB/s", "of copy ceiling", "TFLOP/s", "of GEMM ceiling"};
  for (const auto& p : projs) {
    cuda_buffer w(static_cast<std::size_t>(p.n) * p.k * 2);
    fill_bf16(w.get(), static_cast<std::size_t>(p.n) * p.k, 21, 0.02f, ctx.stream);
    for (const int m : rows) {
      cuda_buffer x(static_cast<std::size_t>(m) * p.k * 2), y(static_cast<std::size_t>(m) * p.n * 2);
      fill_bf16(x.get(), static_cast<std::size_t>(m) * p.k, 22, 1.0f, ctx.stream);
      kernels::gemm_args g;
      g.x = x.get();
      g.ldx = p.k;
      g.x_type = dtype::bf16;
      g.w = w.get();
      g.ldw = p.k;
      g.w_type = dtype::bf16;
      g.y = y.get();
      g.ldy = p.n;
      g.y_type = dtype::bf16;
      g.m = m;
      g.n = p.n;
      g.k = p.k;
      const double ms = median_ms(ctx, [&](int) { kernels::cuda::gemm(g, ctx.cublas, ctx.stream); });
      const double bytes = 2.0 * (static_cast<double>(p.n) * p.k + static_cast<double>(m) * (p.k + p.n));
      const double flops = 2.0 * m * static_cast<double>(p.n) * p.k;
      const double gbs = bytes / (ms * 1e-3) / 1e9, tf = flops / (ms * 1e-3) / 1e12;
      t.add({p.name, fmt("%d", m), fmt("%.1f µs", ms * 1e3), fmt("%.0f", gbs), fmt("%.0f%%", 100.0 * gbs / ctx.ceil.copy_gbs),
             fmt("%.1f", tf), fmt("%.0f%%", 100.0 * tf / ctx.ceil.gemm_tflops)});
    }
  }
  ctx.out->add(t);
}

}  // namespace loraplex::bench
