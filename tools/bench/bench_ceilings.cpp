// Section: the device ceilings every other row is compared with. A large device-to-device copy (bytes read plus
// bytes written per second) and a large bf16 cuBLAS GEMM (8192³, f32 accumulation, random data).

#include <cuda_bf16.h>

#include "tools/bench/bench.hpp"
#include "tools/bench/device_util.hpp"

namespace loraplex::bench {

void bench_ceilings(context& ctx) {
  const std::size_t copy_bytes = std::size_t{1} << 30;  // 1 GiB each way: far beyond L2
  cuda_buffer a(copy_bytes), b(copy_bytes);
  fill_f32(a.as<float>(), copy_bytes / 4, 1, 1.0f, ctx.stream);
  const double copy_ms = median_ms(ctx, [&](int) {
    LORAPLEX_CUDA_CALL(cudaMemcpyAsync(b.get(), a.get(), copy_bytes, cudaMemcpyDeviceToDevice, ctx.stream));
  }, 10, 2);
  ctx.ceil.copy_gbs = 2.0 * static_cast<double>(copy_bytes) / (copy_ms * 1e-3) / 1e9;

  const int n = 8192;
  const std::size_t elems = static_cast<std::size_t>(n) * n;
  cuda_buffer ga(elems * 2), gb(elems * 2), gc(elems * 2);
  fill_bf16(ga.get(), elems, 2, 1.0f, ctx.stream);
  fill_bf16(gb.get(), elems, 3, 1.0f, ctx.stream);
  const float one = 1.0f, zero = 0.0f;
  const double gemm_ms = median_ms(ctx, [&](int) {
    BENCH_CUBLAS(cublasGemmEx(ctx.cublas, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, ga.get(), CUDA_R_16BF, n, gb.get(),
                              CUDA_R_16BF, n, &zero, gc.get(), CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }, 10, 3);
  ctx.ceil.gemm_tflops = 2.0 * n * static_cast<double>(n) * n / (gemm_ms * 1e-3) / 1e12;

  ctx.out->heading("Device ceilings");
  table t;
  t.header = {"measure", "time", "rate"};
  t.add({"device-to-device copy, 1 GiB (read + write)", fmt("%.3f ms", copy_ms), fmt("%.0f GB/s", ctx.ceil.copy_gbs)});
  t.add({"cuBLAS bf16 GEMM 8192³ (f32 accumulation)", fmt("%.3f ms", gemm_ms), fmt("%.0f TFLOP/s", ctx.ceil.gemm_tflops)});
  ctx.out->add(t);
}

}  // namespace loraplex::bench
