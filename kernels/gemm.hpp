#pragma once
/// The base projection: y[m, n] = x[m, k] · W[n, k]ᵀ (or +=), W in the PyTorch Linear layout [out, in].

#include "kernels/dtype.hpp"

namespace loraplex::kernels {

struct gemm_args {
  const void* x = nullptr;  // [m, ldx] x_type
  int ldx = 0;
  dtype x_type = dtype::f32;
  const void* w = nullptr;  // [n, ldw] w_type
  int ldw = 0;
  dtype w_type = dtype::f32;
  void* y = nullptr;  // [m, ldy] y_type
  int ldy = 0;
  dtype y_type = dtype::f32;
  int m = 0;
  int n = 0;
  int k = 0;
  bool accumulate = false;  // y += instead of y =
};

namespace cpu {
/// CPU: x and y must be f32; W may be f32, bf16 or f16 (converted in row blocks, computed in f32).
void gemm(const gemm_args& a);
}

}  // namespace loraplex::kernels
