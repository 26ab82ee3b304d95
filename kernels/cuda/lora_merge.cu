// LoRA merge: W[row_offset + o, i] += sum_k Bt[k, o] · A[k, i], the sum in f32 and rounded once to W's type.
// A block owns a 64 (o) × 64 (i) tile of W; rank rows of Bt and A pass through shared memory 16 at a time and
// each thread accumulates a 4 × 4 patch. The products and sums are plain (unfused) f32 multiplies and adds in
// ascending k, the order of the CPU reference loop, so the merged weights match it bit for bit (an FMA would
// round differently and flip the last bit of a few weights). Merging runs once per mode switch, not per step.

#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.hpp"

namespace loraplex::kernels::cuda {

namespace {

using namespace detail;

constexpr int merge_tile = 64;
constexpr int merge_kt = 16;
constexpr int merge_threads = 256;
constexpr const char* op_name = "lora_merge";

template <typename TW, typename TA>
__global__ void __launch_bounds__(merge_threads) merge_kernel(const lora_merge_args m) {
  __shared__ float bs[merge_kt][merge_tile];  // Bt rows: [k][o]
  __shared__ float as[merge_kt][merge_tile];  // A rows:  [k][i]
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int i0 = blockIdx.x * merge_tile, o0 = blockIdx.y * merge_tile;
  const TA* __restrict__ A = static_cast<const TA*>(m.a);
  const TA* __restrict__ Bt = static_cast<const TA*>(m.bt);

  float acc[4][4];
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[r][c] = 0.0f;

  for (int k0 = 0; k0 < m.rank; k0 += merge_kt) {
#pragma unroll
    for (int u = 0; u < merge_kt * merge_tile / merge_threads; ++u) {
      const int idx = tid + u * merge_threads, kk = idx / merge_tile, c = idx % merge_tile;
      const int k = k0 + kk;
      bs[kk][c] = (k < m.rank && o0 + c < m.out_features)
                      ? to_f32<TA>(Bt[static_cast<std::size_t>(k) * m.ldb + o0 + c])
                      : 0.0f;
      as[kk][c] = (k < m.rank && i0 + c < m.in_features)
                      ? to_f32<TA>(A[static_cast<std::size_t>(k) * m.lda + i0 + c])
                      : 0.0f;
    }
    __syncthreads();
    const int kn = min(merge_kt, m.rank - k0);
    for (int kk = 0; kk < kn; ++kk) {
      const float4 b = *reinterpret_cast<const float4*>(&bs[kk][ty * 4]);
      const float4 a = *reinterpret_cast<const float4*>(&as[kk][tx * 4]);
      const float bv[4] = {b.x, b.y, b.z, b.w};
      const float av[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[r][c] = __fadd_rn(acc[r][c], __fmul_rn(bv[r], av[c]));
    }
    __syncthreads();
  }

  TW* __restrict__ W = static_cast<TW*>(m.w);
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int o = o0 + ty * 4 + r;
    if (o >= m.out_features) continue;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int i = i0 + tx * 4 + c;
      if (i >= m.in_features) continue;
      TW* p = W + static_cast<std::size_t>(m.row_offset + o) * m.ldw + i;
      *p = from_f32<TW>(__fadd_rn(to_f32<TW>(*p), acc[r][c]));
    }
  }
}

}  // namespace

void lora_merge(const lora_merge_args& m, stream_t stream) {
  using std::to_string;
  if (m.out_features < 0 || m.in_features < 0 || m.rank < 0 || m.row_offset < 0)
    unsupported(op_name, "negative shape (out " + to_string(m.out_features) + ", in " + to_string(m.in_features) +
                             ", rank " + to_string(m.rank) + ", row_offset " + to_string(m.row_offset) + ")");
  if (m.out_features == 0 || m.in_features == 0 || m.rank == 0) return;
  if (m.w == nullptr || m.a == nullptr || m.bt == nullptr) unsupported(op_name, "null pointer in args");
  if (m.ldw < m.in_features) unsupported(op_name, "ldw " + to_string(m.ldw) + " < in_features");
  if (m.lda < m.in_features) unsupported(op_name, "lda " + to_string(m.lda) + " < in_features");
  if (m.ldb < m.out_features) unsupported(op_name, "ldb " + to_string(m.ldb) + " < out_features");
  const dim3 grid(static_cast<unsigned>((m.in_features + merge_tile - 1) / merge_tile),
                  static_cast<unsigned>((m.out_features + merge_tile - 1) / merge_tile));
  LORAPLEX_DISPATCH_FLOAT(m.w_type, op_name, [&] {
    using TW = T;
    LORAPLEX_DISPATCH_FLOAT(m.adapter_type, op_name, [&] {
      using TA = T;
      merge_kernel<TW, TA><<<grid, merge_threads, 0, stream>>>(m);
    });
  });
  LORAPLEX_CHECK_LAUNCH(op_name);
}

}  // namespace loraplex::kernels::cuda
