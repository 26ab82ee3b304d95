#include "kernels/gemm.hpp"

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "kernels/cpu/detail_blas.hpp"
#include "kernels/cpu/detail_f32.hpp"

namespace loraplex::kernels::cpu {

void gemm(const gemm_args& a) {
  if (a.x_type != dtype::f32 || a.y_type != dtype::f32)
    throw std::invalid_argument("cpu gemm: activations must be f32");
  if (a.m == 0 || a.n == 0) return;
  const float beta = a.accumulate ? 1.0f : 0.0f;
  const float* x = static_cast<const float*>(a.x);
  float* y = static_cast<float*>(a.y);
  if (a.w_type == dtype::f32) {
    detail::sgemm(false, true, a.m, a.n, a.k, 1.0f, x, a.ldx,
                static_cast<const float*>(a.w), a.ldw, beta, y, a.ldy);
    return;
  }
  // 16-bit weights: widen a block of output rows at a time (bounded scratch), then one sgemm per block.
  constexpr int block = 256;
  std::vector<float> scratch;
  for (int n0 = 0; n0 < a.n; n0 += block) {
    const int nb = std::min(block, a.n - n0);
    const auto elem = dtype_size(a.w_type);
    const void* w0 = static_cast<const char*>(a.w) + static_cast<std::size_t>(n0) * a.ldw * elem;
    int ld = 0;
    const float* wf = detail::as_f32(w0, a.w_type, nb, a.k, a.ldw, scratch, &ld);
    detail::sgemm(false, true, a.m, nb, a.k, 1.0f, x, a.ldx, wf, ld, beta, y + n0, a.ldy);
  }
}

}  // namespace loraplex::kernels::cpu
