#pragma once
// Internal to kernels/cpu: row-major sgemm, C = alpha·op(A)·op(B) + beta·C. OpenBLAS when the build has it
// (LORAPLEX_HAVE_OPENBLAS); otherwise a plain loop, so a GPU-host bundle needs no 36 MiB BLAS library.

#include <cstddef>

#if defined(LORAPLEX_HAVE_OPENBLAS)
#include <cblas.h>
#endif

namespace loraplex::kernels::cpu::detail {

inline void sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda,
                  const float* b, int ldb, float beta, float* c, int ldc) {
#if defined(LORAPLEX_HAVE_OPENBLAS)
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, m, n, k,
              alpha, a, lda, b, ldb, beta, c, ldc);
#else
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      float acc = 0.0f;
      for (int p = 0; p < k; ++p) {
        const float av = trans_a ? a[static_cast<std::size_t>(p) * lda + i] : a[static_cast<std::size_t>(i) * lda + p];
        const float bv = trans_b ? b[static_cast<std::size_t>(j) * ldb + p] : b[static_cast<std::size_t>(p) * ldb + j];
        acc += av * bv;
      }
      float& out = c[static_cast<std::size_t>(i) * ldc + j];
      out = alpha * acc + (beta == 0.0f ? 0.0f : beta * out);
    }
  }
#endif
}

}  // namespace loraplex::kernels::cpu::detail
