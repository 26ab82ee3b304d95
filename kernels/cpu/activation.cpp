#include "kernels/activation.hpp"

#include <cmath>
#include <cstddef>

namespace loraplex::kernels::cpu {

void silu_mul(const silu_mul_args& a) {
  for (int t = 0; t < a.num_tokens; ++t) {
    const std::size_t in = static_cast<std::size_t>(t) * 2 * a.inter;
    const std::size_t out = static_cast<std::size_t>(t) * a.inter;
    for (int i = 0; i < a.inter; ++i) {
      const float g = load_as_f32(a.gate_up, a.act_type, in + i);
      const float u = load_as_f32(a.gate_up, a.act_type, in + a.inter + i);
      store_from_f32(a.out, a.act_type, out + i, g / (1.0f + std::exp(-g)) * u);
    }
  }
}

}  // namespace loraplex::kernels::cpu
