// The base projection through cuBLAS: y[m, n] = x[m, k] · W[n, k]ᵀ (+ y). Row-major storage seen by cuBLAS as
// column-major transposes: yᵀ (n × m, ld ldy) = W (k × n column-major, ld ldw)ᵀ · xᵀ (k × m, ld ldx).

#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/detail/check.hpp"
#include "kernels/cuda/ops.hpp"

namespace loraplex::kernels::cuda {

namespace {

cudaDataType_t cuda_type(dtype t) {
  switch (t) {
    case dtype::f32: return CUDA_R_32F;
    case dtype::f16: return CUDA_R_16F;
    case dtype::bf16: return CUDA_R_16BF;
  }
  detail::unsupported("gemm", "dtype");
}

}  // namespace

void gemm(const gemm_args& a, cublas_handle_t handle, stream_t stream) {
  constexpr const char* op = "gemm";
  detail::require_nonneg(a.m, op, "m");
  detail::require_nonneg(a.n, op, "n");
  detail::require_nonneg(a.k, op, "k");
  detail::require(a.x_type == a.w_type, op,
                  "x_type " + std::string(dtype_name(a.x_type)) + " differs from w_type " + std::string(dtype_name(a.w_type)));
  detail::require(a.y_type == a.x_type || a.y_type == dtype::f32, op,
                  "y_type " + std::string(dtype_name(a.y_type)) + " must be f32 or x_type " + std::string(dtype_name(a.x_type)));
  detail::require(a.ldx >= a.k && a.ldx >= 1, op, "ldx = " + std::to_string(a.ldx) + " is below k = " + std::to_string(a.k));
  detail::require(a.ldw >= a.k && a.ldw >= 1, op, "ldw = " + std::to_string(a.ldw) + " is below k = " + std::to_string(a.k));
  detail::require(a.ldy >= a.n, op, "ldy = " + std::to_string(a.ldy) + " is below n = " + std::to_string(a.n));
  if (a.m == 0 || a.n == 0) return;
  detail::require_ptr(a.y, op, "y");
  detail::require_ptr(handle, op, "handle");
  if (a.k == 0) {  // an empty sum: y = 0, or y unchanged when accumulating
    if (!a.accumulate) {
      const std::size_t es = dtype_size(a.y_type);
      LORAPLEX_CUDA_CHECK(cudaMemset2DAsync(a.y, static_cast<std::size_t>(a.ldy) * es, 0,
                                            static_cast<std::size_t>(a.n) * es, a.m, stream));
    }
    LORAPLEX_CHECK_LAUNCH(op);
    return;
  }
  detail::require_ptr(a.x, op, "x");
  detail::require_ptr(a.w, op, "w");
  const float alpha = 1.0f;
  const float beta = a.accumulate ? 1.0f : 0.0f;
  LORAPLEX_CUBLAS_CHECK(cublasSetStream(handle, stream));
  // NOTE: alpha and beta live on the host; a handle left in device pointer mode would read them as addresses.
  LORAPLEX_CUBLAS_CHECK(cublasSetPointerMode(handle, CUBLAS_POINTER_MODE_HOST));
  LORAPLEX_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, a.n, a.m, a.k, &alpha, a.w, cuda_type(a.w_type),
                                     a.ldw, a.x, cuda_type(a.x_type), a.ldx, &beta, a.y, cuda_type(a.y_type), a.ldy,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  LORAPLEX_CHECK_LAUNCH(op);
}

}  // namespace loraplex::kernels::cuda
