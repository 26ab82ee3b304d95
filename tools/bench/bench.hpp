#pragma once
/// Shared state of a `loraplex-bench kernels` run and the timing helper. Each section is one function
/// `void bench_<name>(context&)` (declared here, one file each) that appends its tables to the report;
/// main.cpp calls them in order. To add a section: write bench_<name>.cpp, declare it here, list it in
/// CMakeLists.txt and call it from main.cpp.

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <deque>
#include <string>
#include <vector>

#include "gpu/cuda_buffer.hpp"
#include "tools/bench/report.hpp"

#define BENCH_CUBLAS(expr)                                                                      \
  do {                                                                                          \
    const cublasStatus_t bench_s_ = (expr);                                                     \
    if (bench_s_ != CUBLAS_STATUS_SUCCESS)                                                      \
      throw ::loraplex::cuda_error(std::string(#expr) + ": cuBLAS status " + std::to_string(static_cast<int>(bench_s_))); \
  } while (0)

namespace loraplex::bench {

/// Measured device ceilings (filled by bench_ceilings).
struct ceilings {
  double copy_gbs = 0.0;     // device-to-device copy, bytes read + written per second / 1e9
  double gemm_tflops = 0.0;  // bf16 GEMM 8192³, f32 accumulation
};

struct context {
  bool quick = false;
  report* out = nullptr;
  cudaDeviceProp prop{};
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  ceilings ceil;
  int warmup = 5;
  int reps = 25;
};

/// Median milliseconds of `reps` runs of fn (each between two events on ctx.stream) after `warmup` runs.
template <typename F>
double median_ms(const context& ctx, F&& fn, int reps = -1, int warmup = -1) {
  if (reps < 0) reps = ctx.reps;
  if (warmup < 0) warmup = ctx.warmup;
  for (int i = 0; i < warmup; ++i) fn(i);
  std::deque<cuda_event> ev;  // cuda_event is not movable
  for (int i = 0; i < 2 * reps; ++i) ev.emplace_back();
  for (int i = 0; i < reps; ++i) {
    ev[2 * i].record(ctx.stream);
    fn(warmup + i);
    ev[2 * i + 1].record(ctx.stream);
  }
  ev.back().synchronize();
  std::vector<double> ms(reps);
  for (int i = 0; i < reps; ++i) ms[i] = ev[2 * i + 1].elapsed_ms_since(ev[2 * i]);
  std::sort(ms.begin(), ms.end());
  return reps % 2 ? ms[reps / 2] : 0.5 * (ms[reps / 2 - 1] + ms[reps / 2]);
}

void bench_ceilings(context& ctx);
void bench_lora(context& ctx);
void bench_attention(context& ctx);
void bench_gemm(context& ctx);

}  // namespace loraplex::bench
