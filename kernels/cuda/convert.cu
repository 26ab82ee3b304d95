// Element type conversion on the device (weight upload, tests): a grid-stride loop; equal types are a copy.

#include <algorithm>
#include <cstddef>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/detail/check.hpp"
#include "kernels/cuda/ops.hpp"

namespace loraplex::kernels::cuda {

namespace {

constexpr int threads = 256;

template <typename TS, typename TD>
__global__ void __launch_bounds__(threads) convert_kernel(const TS* __restrict__ src,  // [n]
                                                          TD* __restrict__ dst,        // [n]
                                                          std::size_t n) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = detail::from_f32<TD>(detail::to_f32<TS>(src[i]));
}

}  // namespace

void convert(const void* src, dtype src_type, void* dst, dtype dst_type, std::size_t n, stream_t stream) {
  constexpr const char* op = "convert";
  if (n == 0) return;
  detail::require_ptr(src, op, "src");
  detail::require_ptr(dst, op, "dst");
  if (src_type == dst_type) {
    LORAPLEX_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * dtype_size(src_type), cudaMemcpyDeviceToDevice, stream));
    return;
  }
  const int blocks = static_cast<int>(std::min<std::size_t>((n + threads - 1) / threads, 8192));
  LORAPLEX_DISPATCH_FLOAT(src_type, op, [&] {
    using TS = T;
    LORAPLEX_DISPATCH_FLOAT(dst_type, op, [&] {
      convert_kernel<TS, T><<<blocks, threads, 0, stream>>>(static_cast<const TS*>(src), static_cast<T*>(dst), n);
    });
  });
  LORAPLEX_CHECK_LAUNCH(op);
}

}  // namespace loraplex::kernels::cuda
