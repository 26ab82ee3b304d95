// RMSNorm fused with the residual add: one CTA per row; 4 elements per thread and step (16-byte f32 loads of
// the residual, 8- or 16-byte loads of the act_type delta).

#include <cstddef>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/detail/check.hpp"
#include "kernels/cuda/detail/reduce.cuh"
#include "kernels/cuda/detail/vec.cuh"
#include "kernels/cuda/ops.hpp"

namespace loraplex::kernels::cuda {

namespace {

template <typename T>
__global__ void add_rms_norm_kernel(float* __restrict__ residual,     // [num_tokens, dim] f32
                                    const T* __restrict__ delta,       // [num_tokens, dim] or nullptr
                                    const float* __restrict__ weight,  // [dim]
                                    T* __restrict__ out,               // [num_tokens, dim]
                                    int dim, float eps, bool vectorised) {
  __shared__ float scratch[32];
  const std::size_t base = static_cast<std::size_t>(blockIdx.x) * dim;
  float* r = residual + base;
  float sum = 0.0f;
  if (vectorised) {
    for (int i = threadIdx.x * 4; i < dim; i += blockDim.x * 4) {
      float4 x = *reinterpret_cast<const float4*>(r + i);
      if (delta != nullptr) {
        float d[4];
        detail::load_vec<T, 4>(delta + base + i, d);
        x.x += d[0];
        x.y += d[1];
        x.z += d[2];
        x.w += d[3];
        *reinterpret_cast<float4*>(r + i) = x;
      }
      sum += x.x * x.x + x.y * x.y + x.z * x.z + x.w * x.w;
    }
  } else {
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
      float x = r[i];
      if (delta != nullptr) {
        x += detail::to_f32<T>(delta[base + i]);
        r[i] = x;
      }
      sum += x * x;
    }
  }
  sum = detail::block_sum(sum, scratch);
  const float inv = 1.0f / sqrtf(sum / static_cast<float>(dim) + eps);  // as the reference: 1 / sqrt(mean + eps)
  // Each thread reads back only the residual elements it wrote itself: no barrier needed.
  if (vectorised) {
    for (int i = threadIdx.x * 4; i < dim; i += blockDim.x * 4) {
      const float4 x = *reinterpret_cast<const float4*>(r + i);
      const float4 w = *reinterpret_cast<const float4*>(weight + i);
      const float o[4] = {w.x * (x.x * inv), w.y * (x.y * inv), w.z * (x.z * inv), w.w * (x.w * inv)};
      detail::store_vec<T, 4>(out + base + i, o);
    }
  } else {
    for (int i = threadIdx.x; i < dim; i += blockDim.x) out[base + i] = detail::from_f32<T>(weight[i] * (r[i] * inv));
  }
}

}  // namespace

void add_rms_norm(const add_rms_norm_args& a, stream_t stream) {
  constexpr const char* op = "add_rms_norm";
  detail::require_nonneg(a.num_tokens, op, "num_tokens");
  detail::require(a.dim > 0, op, "dim = " + std::to_string(a.dim) + " must be positive");
  detail::require(a.eps >= 0.0f, op, "eps = " + std::to_string(a.eps) + " is negative");
  if (a.num_tokens == 0) return;
  detail::require_ptr(a.residual, op, "residual");
  detail::require_ptr(a.weight, op, "weight");
  detail::require_ptr(a.out, op, "out");
  const int threads = a.dim >= 4096 ? 512 : a.dim >= 1024 ? 256 : 128;
  LORAPLEX_DISPATCH_FLOAT(a.act_type, op, [&] {
    const std::size_t vec_bytes = 4 * sizeof(T);
    const bool vectorised = a.dim % 4 == 0 && detail::aligned_to(a.residual, 16) && detail::aligned_to(a.weight, 16) &&
                            detail::aligned_to(a.out, vec_bytes) &&
                            (a.delta == nullptr || detail::aligned_to(a.delta, vec_bytes));
    add_rms_norm_kernel<T><<<a.num_tokens, threads, 0, stream>>>(a.residual, static_cast<const T*>(a.delta), a.weight,
                                                                 static_cast<T*>(a.out), a.dim, a.eps, vectorised);
  });
  LORAPLEX_CHECK_LAUNCH(op);
}

}  // namespace loraplex::kernels::cuda
