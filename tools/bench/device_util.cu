#include "tools/bench/device_util.hpp"

#include <cuda_bf16.h>

#include "gpu/cuda_buffer.hpp"

namespace loraplex::bench {

namespace {

__device__ __forceinline__ float hash_uniform(std::uint64_t i, std::uint64_t seed) {
  std::uint64_t z = i * 0x9E3779B97F4A7C15ull + seed;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

__global__ void fill_bf16_kernel(__nv_bfloat16* p, std::size_t n, std::uint64_t seed, float scale) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    float v = hash_uniform(i, seed) * scale;
    if (v == 0.0f) v = scale * 0.5f;
    p[i] = __float2bfloat16_rn(v);
  }
}

__global__ void fill_f32_kernel(float* p, std::size_t n, std::uint64_t seed, float scale) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    p[i] = hash_uniform(i, seed) * scale;
}

__global__ void gather_rows_kernel(const void* const* src, const std::int32_t* src_ld, const std::int32_t* src_rows,
                                   int rows_max, int cols, uint4* dst) {
  const int b = blockIdx.x, row = blockIdx.y;
  if (row >= src_rows[b]) return;
  const auto* s = reinterpret_cast<const uint4*>(static_cast<const __nv_bfloat16*>(src[b]) +
                                                 static_cast<std::size_t>(row) * src_ld[b]);
  uint4* d = dst + (static_cast<std::size_t>(b) * rows_max + row) * (cols / 8);
  for (int c = threadIdx.x; c < cols / 8; c += blockDim.x) d[c] = s[c];
}

}  // namespace

void fill_bf16(void* p, std::size_t n, std::uint64_t seed, float scale, cudaStream_t s) {
  fill_bf16_kernel<<<2048, 256, 0, s>>>(static_cast<__nv_bfloat16*>(p), n, seed, scale);
  LORAPLEX_CUDA_CALL(cudaGetLastError());
}

void fill_f32(float* p, std::size_t n, std::uint64_t seed, float scale, cudaStream_t s) {
  fill_f32_kernel<<<2048, 256, 0, s>>>(p, n, seed, scale);
  LORAPLEX_CUDA_CALL(cudaGetLastError());
}

void gather_rows(const void* const* src, const std::int32_t* src_ld, const std::int32_t* src_rows, int count,
                 int rows_max, int cols, void* dst, cudaStream_t s) {
  if (count == 0 || rows_max == 0) return;
  gather_rows_kernel<<<dim3(count, rows_max), 256, 0, s>>>(src, src_ld, src_rows, rows_max, cols,
                                                           static_cast<uint4*>(dst));
  LORAPLEX_CUDA_CALL(cudaGetLastError());
}

}  // namespace loraplex::bench
