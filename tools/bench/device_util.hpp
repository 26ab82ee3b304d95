#pragma once
/// Device helpers of the benchmark (tools/bench/device_util.cu): random fills and the row gather that the
/// "gather + batched GEMM" alternative needs.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace loraplex::bench {

/// n bf16 values uniform in [-scale, scale) from a counter hash (never zeros: zeros time faster).
void fill_bf16(void* p, std::size_t n, std::uint64_t seed, float scale, cudaStream_t s);
/// n f32 values likewise.
void fill_f32(float* p, std::size_t n, std::uint64_t seed, float scale, cudaStream_t s);

/// For each b < count: dst[b] (rows_max × cols, contiguous) gets the src_rows[b] rows of the bf16 matrix at
/// src[b] (row stride src_ld[b]); rows past src_rows[b] are left as they are (zero them once). cols % 8 == 0.
/// src, src_ld and src_rows are device arrays.
void gather_rows(const void* const* src, const std::int32_t* src_ld, const std::int32_t* src_rows, int count,
                 int rows_max, int cols, void* dst, cudaStream_t s);

}  // namespace loraplex::bench
