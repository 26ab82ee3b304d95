#include "kernels/rope.hpp"

#include <cmath>
#include <cstddef>
#include <vector>

namespace loraplex::kernels::cpu {

namespace {
// Rotates one head in place: out[i] = x[i]*cos - x[i+h]*sin, out[i+h] = x[i+h]*cos + x[i]*sin (h = dim/2).
void rotate(void* base, dtype t, std::size_t off, int head_dim, const float* cs, const float* sn) {
  const int half = head_dim / 2;
  for (int i = 0; i < half; ++i) {
    const float x0 = load_as_f32(base, t, off + i);
    const float x1 = load_as_f32(base, t, off + i + half);
    store_from_f32(base, t, off + i, x0 * cs[i] - x1 * sn[i]);
    store_from_f32(base, t, off + i + half, x1 * cs[i] + x0 * sn[i]);
  }
}
}  // namespace

void rope_kv_write(const rope_kv_write_args& a) {
  const int half = a.head_dim / 2;
  std::vector<float> cs(half), sn(half);
  const int q_dim = a.num_heads * a.head_dim;
  const int kv_dim = a.num_kv_heads * a.head_dim;
  for (int t = 0; t < a.num_tokens; ++t) {
    const float pos = static_cast<float>(a.positions[t]);
    for (int i = 0; i < half; ++i) {
      const float angle = pos * a.inv_freq[i];  // f32 product, as transformers computes it
      cs[i] = std::cos(angle) * a.attention_scaling;
      sn[i] = std::sin(angle) * a.attention_scaling;
    }
    const std::size_t row = static_cast<std::size_t>(t) * a.ld_qkv;
    for (int h = 0; h < a.num_heads; ++h) rotate(a.qkv, a.act_type, row + h * a.head_dim, a.head_dim, cs.data(), sn.data());
    for (int h = 0; h < a.num_kv_heads; ++h)
      rotate(a.qkv, a.act_type, row + q_dim + h * a.head_dim, a.head_dim, cs.data(), sn.data());
    const std::size_t slot = static_cast<std::size_t>(a.slots[t]);
    const std::size_t dst = slot * kv_dim;  // [page, offset] flattened: slot * (num_kv_heads * head_dim)
    for (int i = 0; i < kv_dim; ++i) {
      store_from_f32(a.k_cache, a.kv_type, dst + i, load_as_f32(a.qkv, a.act_type, row + q_dim + i));
      store_from_f32(a.v_cache, a.kv_type, dst + i, load_as_f32(a.qkv, a.act_type, row + q_dim + kv_dim + i));
    }
  }
}

}  // namespace loraplex::kernels::cpu
