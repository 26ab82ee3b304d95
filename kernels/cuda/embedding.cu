// Embedding gather into the f32 residual stream: one CTA per token, 16-byte loads of the table row.

#include <cmath>
#include <cstddef>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/detail/check.hpp"
#include "kernels/cuda/detail/vec.cuh"
#include "kernels/cuda/ops.hpp"

namespace loraplex::kernels::cuda {

namespace {

constexpr int threads = 256;

template <typename T>
__global__ void __launch_bounds__(threads) embedding_kernel(const T* __restrict__ table,   // [vocab, hidden]
                                                            const std::int32_t* __restrict__ ids,  // [num_tokens]
                                                            float* __restrict__ out,  // [num_tokens, hidden]
                                                            int hidden, int vocab, bool vectorised) {
  const int t = blockIdx.x;
  const int id = ids[t];
  float* o = out + static_cast<std::size_t>(t) * hidden;
  if (id < 0 || id >= vocab) {
    // NOTE: a device kernel cannot throw; a row of NaN makes an out-of-range id loud downstream.
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = __int_as_float(0x7fc00000);
    return;
  }
  const T* row = table + static_cast<std::size_t>(id) * hidden;
  if (vectorised) {
    constexpr int vec = detail::vec16<T>;
    for (int i = threadIdx.x * vec; i < hidden; i += blockDim.x * vec) {
      float f[vec];
      detail::load_vec<T, vec>(row + i, f);
#pragma unroll
      for (int j = 0; j < vec; j += 4)
        *reinterpret_cast<float4*>(o + i + j) = make_float4(f[j], f[j + 1], f[j + 2], f[j + 3]);
    }
  } else {
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = detail::to_f32<T>(row[i]);
  }
}

}  // namespace

void embedding(const embedding_args& a, stream_t stream) {
  constexpr const char* op = "embedding";
  detail::require_nonneg(a.num_tokens, op, "num_tokens");
  detail::require(a.hidden > 0, op, "hidden = " + std::to_string(a.hidden) + " must be positive");
  detail::require(a.vocab > 0, op, "vocab = " + std::to_string(a.vocab) + " must be positive");
  if (a.num_tokens == 0) return;
  detail::require_ptr(a.table, op, "table");
  detail::require_ptr(a.ids, op, "ids");
  detail::require_ptr(a.out, op, "out");
  LORAPLEX_DISPATCH_FLOAT(a.table_type, op, [&] {
    constexpr int vec = detail::vec16<T>;
    const bool vectorised =
        a.hidden % vec == 0 && detail::aligned_to(a.table, 16) && detail::aligned_to(a.out, 16);
    embedding_kernel<T><<<a.num_tokens, threads, 0, stream>>>(static_cast<const T*>(a.table), a.ids, a.out, a.hidden,
                                                             a.vocab, vectorised);
  });
  LORAPLEX_CHECK_LAUNCH(op);
}

}  // namespace loraplex::kernels::cuda
