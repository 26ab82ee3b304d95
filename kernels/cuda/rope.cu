// RoPE (rotate_half pairs i, i + head_dim/2) of q and k in place, fused with the write of k and v into the
// paged cache at slots[t]. One CTA per token: the cos/sin table of the token goes to shared memory once, then
// each thread rotates one pair of one head; the rotated k is rounded to act_type first (it is stored there),
// then converted to kv_type, exactly as the reference does.

#include <cstddef>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/detail/check.hpp"
#include "kernels/cuda/ops.hpp"

namespace loraplex::kernels::cuda {

namespace {

constexpr int threads = 256;
constexpr int max_head_dim = 512;

template <typename TA, typename TKV>
__global__ void __launch_bounds__(threads)
    rope_kv_write_kernel(TA* __restrict__ qkv,                    // [num_tokens, ld_qkv]
                         int ld_qkv,
                         const std::int32_t* __restrict__ positions,  // [num_tokens]
                         const std::int32_t* __restrict__ slots,      // [num_tokens]
                         TKV* __restrict__ k_cache,  // [num_pages, page_size, num_kv_heads, head_dim]
                         TKV* __restrict__ v_cache,  // [num_pages, page_size, num_kv_heads, head_dim]
                         const float* __restrict__ inv_freq,  // [head_dim / 2]
                         float attention_scaling, int num_heads, int num_kv_heads, int head_dim) {
  __shared__ float cs[max_head_dim / 2];
  __shared__ float sn[max_head_dim / 2];
  const int t = blockIdx.x;
  const int half = head_dim / 2;
  const float pos = static_cast<float>(positions[t]);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float angle = pos * inv_freq[i];  // f32 product, as the reference (and transformers) compute it
    cs[i] = cosf(angle) * attention_scaling;
    sn[i] = sinf(angle) * attention_scaling;
  }
  __syncthreads();
  TA* row = qkv + static_cast<std::size_t>(t) * ld_qkv;
  const int q_dim = num_heads * head_dim;
  const int kv_dim = num_kv_heads * head_dim;
  const std::int32_t slot = slots[t];
  const std::size_t dst = static_cast<std::size_t>(slot) * kv_dim;
  const int pairs = (num_heads + num_kv_heads) * half;
  for (int j = threadIdx.x; j < pairs; j += blockDim.x) {
    const int h = j / half;
    const int i = j - h * half;
    TA* x = row + h * head_dim;  // q heads, then the k heads right after them
    const float x0 = detail::to_f32<TA>(x[i]);
    const float x1 = detail::to_f32<TA>(x[i + half]);
    const TA y0 = detail::from_f32<TA>(x0 * cs[i] - x1 * sn[i]);
    const TA y1 = detail::from_f32<TA>(x1 * cs[i] + x0 * sn[i]);
    x[i] = y0;
    x[i + half] = y1;
    if (h >= num_heads && slot >= 0) {
      const std::size_t k = dst + static_cast<std::size_t>(h - num_heads) * head_dim;
      k_cache[k + i] = detail::from_f32<TKV>(detail::to_f32<TA>(y0));
      k_cache[k + i + half] = detail::from_f32<TKV>(detail::to_f32<TA>(y1));
    }
  }
  if (slot >= 0) {
    const TA* v = row + q_dim + kv_dim;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) v_cache[dst + i] = detail::from_f32<TKV>(detail::to_f32<TA>(v[i]));
  }
}

}  // namespace

void rope_kv_write(const rope_kv_write_args& a, stream_t stream) {
  constexpr const char* op = "rope_kv_write";
  detail::require_nonneg(a.num_tokens, op, "num_tokens");
  detail::require(a.head_dim > 0 && a.head_dim % 2 == 0 && a.head_dim <= max_head_dim, op,
                  "head_dim = " + std::to_string(a.head_dim) + " must be even and at most " + std::to_string(max_head_dim));
  detail::require(a.num_heads > 0, op, "num_heads = " + std::to_string(a.num_heads) + " must be positive");
  detail::require(a.num_kv_heads > 0, op, "num_kv_heads = " + std::to_string(a.num_kv_heads) + " must be positive");
  const long long need = static_cast<long long>(a.num_heads + 2 * a.num_kv_heads) * a.head_dim;
  detail::require(a.ld_qkv >= need, op, "ld_qkv = " + std::to_string(a.ld_qkv) + " is below (num_heads + 2 * num_kv_heads) * head_dim = " + std::to_string(need));
  detail::require(a.page_size > 0, op, "page_size = " + std::to_string(a.page_size) + " must be positive");
  if (a.num_tokens == 0) return;
  detail::require_ptr(a.qkv, op, "qkv");
  detail::require_ptr(a.positions, op, "positions");
  detail::require_ptr(a.slots, op, "slots");
  detail::require_ptr(a.k_cache, op, "k_cache");
  detail::require_ptr(a.v_cache, op, "v_cache");
  detail::require_ptr(a.inv_freq, op, "inv_freq");
  LORAPLEX_DISPATCH_FLOAT(a.act_type, op, [&] {
    using TA = T;
    LORAPLEX_DISPATCH_FLOAT(a.kv_type, op, [&] {
      rope_kv_write_kernel<TA, T><<<a.num_tokens, threads, 0, stream>>>(
          static_cast<TA*>(a.qkv), a.ld_qkv, a.positions, a.slots, static_cast<T*>(a.k_cache),
          static_cast<T*>(a.v_cache), a.inv_freq, a.attention_scaling, a.num_heads, a.num_kv_heads, a.head_dim);
    });
  });
  LORAPLEX_CHECK_LAUNCH(op);
}

}  // namespace loraplex::kernels::cuda
