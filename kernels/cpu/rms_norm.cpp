#include "kernels/rms_norm.hpp"

#include <cmath>
#include <cstddef>

namespace loraplex::kernels::cpu {

void add_rms_norm(const add_rms_norm_args& a) {
  for (int t = 0; t < a.num_tokens; ++t) {
    const std::size_t base = static_cast<std::size_t>(t) * a.dim;
    float* r = a.residual + base;
    if (a.delta != nullptr) {
      for (int i = 0; i < a.dim; ++i) r[i] += load_as_f32(a.delta, a.act_type, base + i);
    }
    double sum = 0.0;  // NOTE: double keeps the reference independent of summation order
    for (int i = 0; i < a.dim; ++i) sum += static_cast<double>(r[i]) * r[i];
    const float inv = 1.0f / std::sqrt(static_cast<float>(sum / a.dim) + a.eps);
    for (int i = 0; i < a.dim; ++i) store_from_f32(a.out, a.act_type, base + i, a.weight[i] * (r[i] * inv));
  }
}

}  // namespace loraplex::kernels::cpu
