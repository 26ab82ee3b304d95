#pragma once
// Shared by the CUDA kernels: error checks that name the op, device, file and line; dtype dispatch; loads and
// stores between bf16/f16/f32 and f32 registers.

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "kernels/cuda/cuda_error.hpp"
#include "kernels/dtype.hpp"

namespace loraplex::kernels::cuda::detail {

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* what, const char* file, int line) {
  int dev = -1;
  cudaGetDevice(&dev);
  throw loraplex::cuda_error(std::string(what) + ": " + cudaGetErrorString(e) + " (device " + std::to_string(dev) +
                             ", " + file + ":" + std::to_string(line) + ")");
}

[[noreturn]] inline void throw_cublas(cublasStatus_t s, const char* what, const char* file, int line) {
  int dev = -1;
  cudaGetDevice(&dev);
  throw loraplex::cuda_error(std::string(what) + ": cuBLAS status " + std::to_string(static_cast<int>(s)) + " (device " +
                             std::to_string(dev) + ", " + file + ":" + std::to_string(line) + ")");
}

/// Checks the launch of an op's kernels once, naming the op.
inline void check_launch(const char* op, const char* file, int line) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw_cuda(e, op, file, line);
#if defined(LORAPLEX_CUDA_SYNC_CHECK)
  // Debug builds: synchronise after every op so a fault is reported by the op that caused it.
  const cudaError_t s = cudaDeviceSynchronize();
  if (s != cudaSuccess) throw_cuda(s, op, file, line);
#endif
}

[[noreturn]] inline void unsupported(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": unsupported " + what);
}

template <typename T>
__device__ __forceinline__ float to_f32(T v);
template <>
__device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <>
__device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }

}  // namespace loraplex::kernels::cuda::detail

#define LORAPLEX_CUDA_CHECK(expr)                                                                       \
  do {                                                                                                  \
    const cudaError_t loraplex_e_ = (expr);                                                             \
    if (loraplex_e_ != cudaSuccess) ::loraplex::kernels::cuda::detail::throw_cuda(loraplex_e_, #expr, __FILE__, __LINE__); \
  } while (0)

#define LORAPLEX_CUBLAS_CHECK(expr)                                                                     \
  do {                                                                                                  \
    const cublasStatus_t loraplex_s_ = (expr);                                                          \
    if (loraplex_s_ != CUBLAS_STATUS_SUCCESS)                                                           \
      ::loraplex::kernels::cuda::detail::throw_cublas(loraplex_s_, #expr, __FILE__, __LINE__);          \
  } while (0)

#define LORAPLEX_CHECK_LAUNCH(op) ::loraplex::kernels::cuda::detail::check_launch(op, __FILE__, __LINE__)

/// Calls BODY with `using T = <c++ type>` for a 16-bit or f32 dtype; other values report the op by name.
#define LORAPLEX_DISPATCH_FLOAT(dt, op, ...)                                                            \
  [&] {                                                                                                 \
    switch (dt) {                                                                                       \
      case ::loraplex::dtype::f32: { using T = float; return __VA_ARGS__(); }                           \
      case ::loraplex::dtype::bf16: { using T = __nv_bfloat16; return __VA_ARGS__(); }                  \
      case ::loraplex::dtype::f16: { using T = __half; return __VA_ARGS__(); }                          \
    }                                                                                                   \
    ::loraplex::kernels::cuda::detail::unsupported(op, "dtype");                                        \
  }()
