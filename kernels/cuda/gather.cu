// Row gather on the device: one CTA per output row, 16-byte copies where the row allows.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gather.hpp"

namespace loraplex::kernels::cuda {

namespace {
template <typename V>
__global__ void gather_rows_kernel(const V* __restrict__ src, V* __restrict__ dst, const std::int32_t* __restrict__ rows,
                                   int vecs_per_row) {
  const std::size_t out = static_cast<std::size_t>(blockIdx.x) * vecs_per_row;
  const std::size_t in = static_cast<std::size_t>(rows[blockIdx.x]) * vecs_per_row;
  for (int i = threadIdx.x; i < vecs_per_row; i += blockDim.x) dst[out + i] = src[in + i];
}
}  // namespace

void gather_rows(const gather_rows_args& a, stream_t stream) {
  if (a.num_rows == 0) return;
  const std::size_t row_bytes = static_cast<std::size_t>(a.width) * dtype_size(a.type);
  const bool aligned = row_bytes % 16 == 0 && reinterpret_cast<std::uintptr_t>(a.src) % 16 == 0 &&
                       reinterpret_cast<std::uintptr_t>(a.dst) % 16 == 0;
  if (aligned) {
    gather_rows_kernel<<<a.num_rows, 128, 0, stream>>>(static_cast<const uint4*>(a.src), static_cast<uint4*>(a.dst), a.rows,
                                                        static_cast<int>(row_bytes / 16));
  } else {
    gather_rows_kernel<<<a.num_rows, 128, 0, stream>>>(static_cast<const unsigned char*>(a.src),
                                                        static_cast<unsigned char*>(a.dst), a.rows, static_cast<int>(row_bytes));
  }
  LORAPLEX_CHECK_LAUNCH("gather_rows");
}

}  // namespace loraplex::kernels::cuda
