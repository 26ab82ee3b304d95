#pragma once
/// RMSNorm fused with the residual add: residual += delta (when given), out = rmsnorm(residual) * weight.
/// Matches transformers' LlamaRMSNorm: variance over the row in f32, x * rsqrt(var + eps), then * weight.

#include "kernels/dtype.hpp"

namespace loraplex::kernels {

struct add_rms_norm_args {
  float* residual = nullptr;     // [num_tokens, dim] f32, updated in place when delta != nullptr
  const void* delta = nullptr;   // [num_tokens, dim] act_type, or nullptr (no add)
  const float* weight = nullptr;  // [dim] f32
  void* out = nullptr;           // [num_tokens, dim] act_type
  dtype act_type = dtype::f32;
  int num_tokens = 0;
  int dim = 0;
  float eps = 1e-5f;
};

namespace cpu {
void add_rms_norm(const add_rms_norm_args& a);
}

}  // namespace loraplex::kernels
