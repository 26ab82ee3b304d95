#pragma once
/// SiLU(gate) * up over the fused gate/up projection output.

#include "kernels/dtype.hpp"

namespace loraplex::kernels {

struct silu_mul_args {
  const void* gate_up = nullptr;  // [num_tokens, 2 * inter] act_type: gate in [0, inter), up in [inter, 2*inter)
  void* out = nullptr;            // [num_tokens, inter] act_type
  dtype act_type = dtype::f32;
  int num_tokens = 0;
  int inter = 0;
};

namespace cpu {
void silu_mul(const silu_mul_args& a);
}

}  // namespace loraplex::kernels
