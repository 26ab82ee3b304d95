#include "kernels/lora.hpp"

#include <cstddef>
#include <stdexcept>
#include <vector>

#include "kernels/cpu/detail_blas.hpp"
#include "kernels/cpu/detail_f32.hpp"

namespace loraplex::kernels::cpu {

namespace {
void check(const lora_args& a) {
  if (a.act_type != dtype::f32) throw std::invalid_argument("cpu lora: activations must be f32");
  if (a.num_slices < 1 || a.num_slices > max_lora_slices) throw std::invalid_argument("cpu lora: num_slices out of range");
}
}  // namespace

void lora_shrink(const lora_args& a) {
  check(a);
  const float* x = static_cast<const float*>(a.x);
  std::vector<float> scratch;
  for (int s = 0; s < a.num_segments; ++s) {
    const int t0 = a.seg_begin[s];
    const int len = a.seg_end[s] - t0;
    if (len <= 0) continue;
    for (int j = 0; j < a.num_slices; ++j) {
      const int e = a.seg_adapter[s] * a.num_slices + j;
      const int r = a.ranks[e];
      if (r == 0) continue;
      int ld = 0;
      const float* A = detail::as_f32(a.a_ptrs[e], a.weight_type, r, a.in_features, a.lda[e], scratch, &ld);
      float* out = a.shrink_out + (static_cast<std::size_t>(j) * a.num_tokens + t0) * a.max_rank;
      detail::sgemm(false, true, len, r, a.in_features, 1.0f,
                  x + static_cast<std::size_t>(t0) * a.ldx, a.ldx, A, ld, 0.0f, out, a.max_rank);
    }
  }
}

void lora_expand(const lora_args& a) {
  check(a);
  float* y = static_cast<float*>(a.y);
  std::vector<float> scratch;
  for (int s = 0; s < a.num_segments; ++s) {
    const int t0 = a.seg_begin[s];
    const int len = a.seg_end[s] - t0;
    if (len <= 0) continue;
    for (int j = 0; j < a.num_slices; ++j) {
      const int e = a.seg_adapter[s] * a.num_slices + j;
      const int r = a.ranks[e];
      if (r == 0) continue;
      const int w = a.slice_width[j];
      int ld = 0;
      const float* Bt = detail::as_f32(a.bt_ptrs[e], a.weight_type, r, w, a.ldb[e], scratch, &ld);
      const float* in = a.shrink_out + (static_cast<std::size_t>(j) * a.num_tokens + t0) * a.max_rank;
      detail::sgemm(false, false, len, w, r, 1.0f, in, a.max_rank, Bt, ld, 1.0f,
                  y + static_cast<std::size_t>(t0) * a.ldy + a.slice_offset[j], a.ldy);
    }
  }
}

}  // namespace loraplex::kernels::cpu
