#include "kernels/merge.hpp"

#include <cstddef>
#include <vector>

#include "kernels/cpu/detail_blas.hpp"
#include "kernels/cpu/detail_f32.hpp"

namespace loraplex::kernels::cpu {

void lora_merge(const lora_merge_args& a) {
  std::vector<float> sa, sb;
  int lda = 0, ldb = 0;
  const float* A = detail::as_f32(a.a, a.adapter_type, a.rank, a.in_features, a.lda, sa, &lda);
  const float* Bt = detail::as_f32(a.bt, a.adapter_type, a.rank, a.out_features, a.ldb, sb, &ldb);
  std::vector<float> delta(static_cast<std::size_t>(a.out_features) * a.in_features);
  // delta[out, in] = Btᵀ[out, r] · A[r, in]
  detail::sgemm(true, false, a.out_features, a.in_features, a.rank, 1.0f, Bt, ldb, A, lda,
              0.0f, delta.data(), a.in_features);
  for (int o = 0; o < a.out_features; ++o) {
    const std::size_t row = static_cast<std::size_t>(a.row_offset + o) * a.ldw;
    for (int i = 0; i < a.in_features; ++i) {
      const float w = load_as_f32(a.w, a.w_type, row + i);
      store_from_f32(a.w, a.w_type, row + i, w + delta[static_cast<std::size_t>(o) * a.in_features + i]);
    }
  }
}

}  // namespace loraplex::kernels::cpu
