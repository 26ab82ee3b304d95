// SiLU(gate) * up: a grid-stride loop over 16-byte chunks of the output (scalar when inter is not a multiple of
// the vector width).

#include <algorithm>
#include <cstddef>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/detail/check.hpp"
#include "kernels/cuda/detail/vec.cuh"
#include "kernels/cuda/ops.hpp"

namespace loraplex::kernels::cuda {

namespace {

constexpr int threads = 256;

__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.0f + expf(-g)) * u; }  // as the reference

template <typename T>
__global__ void __launch_bounds__(threads) silu_mul_kernel(const T* __restrict__ gate_up,  // [num_tokens, 2*inter]
                                                           T* __restrict__ out,  // [num_tokens, inter]
                                                           int num_tokens, int inter, bool vectorised) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  if (vectorised) {
    constexpr int vec = detail::vec16<T>;
    const int chunks_per_row = inter / vec;
    const std::size_t chunks = static_cast<std::size_t>(num_tokens) * chunks_per_row;
    for (std::size_t c = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < chunks; c += stride) {
      const std::size_t t = c / chunks_per_row;
      const int i = static_cast<int>(c - t * chunks_per_row) * vec;
      const T* in = gate_up + t * 2 * inter;
      float g[vec], u[vec], o[vec];
      detail::load_vec<T, vec>(in + i, g);
      detail::load_vec<T, vec>(in + inter + i, u);
#pragma unroll
      for (int j = 0; j < vec; ++j) o[j] = silu_times(g[j], u[j]);
      detail::store_vec<T, vec>(out + t * inter + i, o);
    }
  } else {
    const std::size_t n = static_cast<std::size_t>(num_tokens) * inter;
    for (std::size_t e = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride) {
      const std::size_t t = e / inter;
      const std::size_t i = e - t * inter;
      const T* in = gate_up + t * 2 * inter;
      out[e] = detail::from_f32<T>(silu_times(detail::to_f32<T>(in[i]), detail::to_f32<T>(in[inter + i])));
    }
  }
}

}  // namespace

void silu_mul(const silu_mul_args& a, stream_t stream) {
  constexpr const char* op = "silu_mul";
  detail::require_nonneg(a.num_tokens, op, "num_tokens");
  detail::require(a.inter > 0, op, "inter = " + std::to_string(a.inter) + " must be positive");
  if (a.num_tokens == 0) return;
  detail::require_ptr(a.gate_up, op, "gate_up");
  detail::require_ptr(a.out, op, "out");
  LORAPLEX_DISPATCH_FLOAT(a.act_type, op, [&] {
    constexpr int vec = detail::vec16<T>;
    const bool vectorised = a.inter % vec == 0 && detail::aligned_to(a.gate_up, 16) && detail::aligned_to(a.out, 16);
    const std::size_t work = static_cast<std::size_t>(a.num_tokens) * a.inter / (vectorised ? vec : 1);
    const int blocks = static_cast<int>(std::min<std::size_t>((work + threads - 1) / threads, 8192));
    silu_mul_kernel<T><<<blocks, threads, 0, stream>>>(static_cast<const T*>(a.gate_up), static_cast<T*>(a.out),
                                                       a.num_tokens, a.inter, vectorised);
  });
  LORAPLEX_CHECK_LAUNCH(op);
}

}  // namespace loraplex::kernels::cuda
