// Prefill attention (chunks of query tokens, causal, over earlier context in pages): flash-attention style
// online softmax on CUDA cores in f32.
//
// Rows of a tile are (query token, query head of the KV group) pairs, so a CTA reads each K/V tile once for all
// heads of its group. Grid: (row tile, KV head, sequence); a CTA of 128 threads owns 64 rows and walks the keys
// in tiles of 32 up to the last position any of its rows may see. Shared memory holds the scaled Q tile, the
// K and V tiles (converted to f32) and the probabilities. Thread t owns rows 4·(t/8) .. +3; for scores, keys
// t%8 + 8·j (j < 4); for the output, columns 4·(t%8 + 8·c) .. +3 (c < head_dim/32). Rows are padded by one
// 16-byte vector so the K reads of a quarter warp fall in distinct banks.

#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/detail/attention.cuh"
#include "kernels/cuda/detail/vec.cuh"

namespace loraplex::kernels::cuda::detail {

namespace {

constexpr int prefill_threads = 128;
constexpr int BM = 64;  // rows (query token × head) per CTA
constexpr int BN = 32;  // keys per tile

template <int D>
struct prefill_smem {
  static constexpr int q_stride = D + 4;
  static constexpr int k_stride = D + 4;
  static constexpr int p_stride = BN + 1;
  static constexpr std::size_t floats = static_cast<std::size_t>(BM) * q_stride + BN * k_stride + BN * D + BM * p_stride;
  static constexpr std::size_t bytes = floats * sizeof(float);
};

template <typename TKV, int D>
__global__ void __launch_bounds__(prefill_threads) prefill_kernel(const attention_params p) {
  constexpr int VEC = vec16<TKV>;
  constexpr int CPR = D / VEC;  // 16-byte chunks per K/V row
  constexpr int QS = prefill_smem<D>::q_stride;
  constexpr int KS = prefill_smem<D>::k_stride;
  constexpr int PS = prefill_smem<D>::p_stride;
  constexpr int CC = D / 32;  // float4 output columns per thread
  extern __shared__ float4 smem4[];
  float* Qs = reinterpret_cast<float*>(smem4);  // [BM][QS]
  float* Ks = Qs + BM * QS;                      // [BN][KS]
  float* Vs = Ks + BN * KS;                      // [BN][D]
  float* Ps = Vs + BN * D;                       // [BM][PS]
  __shared__ int row_last[BM];

  const int tile = blockIdx.x;
  const int kvh = blockIdx.y;
  const int seq = blockIdx.z;
  const int q0 = p.query_start[seq];
  const int q_len = p.query_start[seq + 1] - q0;
  const int rows = q_len * p.group;
  const int row0 = tile * BM;
  if (row0 >= rows) return;
  const int ctx = p.context_lens[seq];
  const int tid = threadIdx.x;

  // Q tile, pre-scaled; rows past the sequence are zero and see no key.
  for (int idx = tid; idx < BM * D; idx += prefill_threads) {
    const int r = idx / D;
    const int d = idx - r * D;
    const int gr = row0 + r;
    float v = 0.0f;
    if (gr < rows) {
      const int i = gr / p.group;
      const int h = kvh * p.group + (gr - i * p.group);
      v = load_dyn(p.q, p.q_type, static_cast<std::size_t>(q0 + i) * p.ld_q + static_cast<std::size_t>(h) * D + d) * p.scale;
    }
    Qs[r * QS + d] = v;
  }
  for (int r = tid; r < BM; r += prefill_threads) {
    const int gr = row0 + r;
    row_last[r] = gr < rows ? ctx - q_len + gr / p.group : -1;
  }
  const int i_max = min(q_len - 1, (row0 + BM - 1) / p.group);
  const int kv_end = ctx - q_len + i_max + 1;  // keys [0, kv_end) may be seen by some row of the tile

  const int rg = tid / 8;  // row group: rows 4·rg .. 4·rg + 3
  const int kg = tid % 8;  // key / column group
  const std::int32_t* bt = p.block_tables + static_cast<std::size_t>(seq) * p.max_blocks_per_seq;
  const std::size_t kv_row = static_cast<std::size_t>(p.num_kv_heads) * D;
  const TKV* kc = static_cast<const TKV*>(p.k_cache) + static_cast<std::size_t>(kvh) * D;
  const TKV* vc = static_cast<const TKV*>(p.v_cache) + static_cast<std::size_t>(kvh) * D;

  float m[4], l[4];
  float4 o[4][CC];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    m[j] = -INFINITY;
    l[j] = 0.0f;
#pragma unroll
    for (int c = 0; c < CC; ++c) o[j][c] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
  __syncthreads();
  int last[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) last[j] = row_last[rg * 4 + j];

  for (int kt = 0; kt < kv_end; kt += BN) {
    // K and V tiles, converted to f32; keys past kv_end are zero (their V must not carry NaN into p · v).
    for (int c = tid; c < BN * CPR; c += prefill_threads) {
      const int key = c / CPR;
      const int part = c - key * CPR;
      const int pos = kt + key;
      float kf[VEC], vf[VEC];
      if (pos < kv_end) {
        const std::size_t slot = static_cast<std::size_t>(bt[pos / p.page_size]) * p.page_size + pos % p.page_size;
        load_vec<TKV, VEC>(kc + slot * kv_row + part * VEC, kf);
        load_vec<TKV, VEC>(vc + slot * kv_row + part * VEC, vf);
      } else {
#pragma unroll
        for (int v = 0; v < VEC; ++v) kf[v] = vf[v] = 0.0f;
      }
#pragma unroll
      for (int v = 0; v < VEC; v += 4) {
        *reinterpret_cast<float4*>(&Ks[key * KS + part * VEC + v]) = make_float4(kf[v], kf[v + 1], kf[v + 2], kf[v + 3]);
        *reinterpret_cast<float4*>(&Vs[key * D + part * VEC + v]) = make_float4(vf[v], vf[v + 1], vf[v + 2], vf[v + 3]);
      }
    }
    __syncthreads();

    // Scores of 4 rows × 4 keys.
    float s[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) s[j][jj] = 0.0f;
#pragma unroll 4
    for (int d = 0; d < D; d += 4) {
      float4 qv[4], kv[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) qv[j] = *reinterpret_cast<const float4*>(&Qs[(rg * 4 + j) * QS + d]);
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) kv[jj] = *reinterpret_cast<const float4*>(&Ks[(kg + 8 * jj) * KS + d]);
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int jj = 0; jj < 4; ++jj)
          s[j][jj] += qv[j].x * kv[jj].x + qv[j].y * kv[jj].y + qv[j].z * kv[jj].z + qv[j].w * kv[jj].w;
    }

    // Causal mask and online softmax; the 8 threads of a row group share their rows (lanes xor 1, 2, 4).
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float mx = -INFINITY;
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        if (kt + kg + 8 * jj > last[j]) s[j][jj] = -INFINITY;
        mx = fmaxf(mx, s[j][jj]);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
      const float m_new = fmaxf(m[j], mx);
      const bool none = m_new == -INFINITY;  // no visible key yet: keep everything at zero
      const float alpha = none ? 1.0f : expf(m[j] - m_new);
      float rs = 0.0f;
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        const float e = none ? 0.0f : expf(s[j][jj] - m_new);
        Ps[(rg * 4 + j) * PS + kg + 8 * jj] = e;
        rs += e;
      }
      rs += __shfl_xor_sync(0xffffffffu, rs, 1);
      rs += __shfl_xor_sync(0xffffffffu, rs, 2);
      rs += __shfl_xor_sync(0xffffffffu, rs, 4);
      l[j] = l[j] * alpha + rs;
      m[j] = m_new;
#pragma unroll
      for (int c = 0; c < CC; ++c) {
        o[j][c].x *= alpha;
        o[j][c].y *= alpha;
        o[j][c].z *= alpha;
        o[j][c].w *= alpha;
      }
    }
    __syncthreads();

    // o += P · V
#pragma unroll 4
    for (int k = 0; k < BN; ++k) {
      float pk[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) pk[j] = Ps[(rg * 4 + j) * PS + k];
#pragma unroll
      for (int c = 0; c < CC; ++c) {
        const float4 v = *reinterpret_cast<const float4*>(&Vs[k * D + (kg + 8 * c) * 4]);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          o[j][c].x += pk[j] * v.x;
          o[j][c].y += pk[j] * v.y;
          o[j][c].z += pk[j] * v.z;
          o[j][c].w += pk[j] * v.w;
        }
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int gr = row0 + rg * 4 + j;
    if (gr >= rows) continue;
    const int i = gr / p.group;
    const int h = kvh * p.group + (gr - i * p.group);
    const float inv = 1.0f / l[j];
    const std::size_t base = static_cast<std::size_t>(q0 + i) * p.num_heads * D + static_cast<std::size_t>(h) * D;
#pragma unroll
    for (int c = 0; c < CC; ++c) {
      const std::size_t col = base + (kg + 8 * c) * 4;
      store_dyn(p.out, p.out_type, col + 0, o[j][c].x * inv);
      store_dyn(p.out, p.out_type, col + 1, o[j][c].y * inv);
      store_dyn(p.out, p.out_type, col + 2, o[j][c].z * inv);
      store_dyn(p.out, p.out_type, col + 3, o[j][c].w * inv);
    }
  }
}

template <typename TKV, int D>
void launch_prefill_t(const attention_params& p, int num_seqs, int max_query_len, cudaStream_t stream) {
  constexpr std::size_t smem = prefill_smem<D>::bytes;
  if constexpr (smem > 48 * 1024) {
    LORAPLEX_CUDA_CHECK(cudaFuncSetAttribute(prefill_kernel<TKV, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(smem)));
  }
  const long long rows = static_cast<long long>(max_query_len) * p.group;
  const long long tiles = (rows + BM - 1) / BM;
  if (tiles > 0x7fffffffLL) throw std::invalid_argument("paged_attention: max_query_len is too large");
  const dim3 grid(static_cast<unsigned>(tiles), p.num_kv_heads, num_seqs);
  prefill_kernel<TKV, D><<<grid, prefill_threads, smem, stream>>>(p);
}

}  // namespace

void launch_prefill(const attention_params& p, dtype kv_type, int head_dim, int num_seqs, int max_query_len,
                    cudaStream_t stream) {
  constexpr const char* op = "paged_attention";
  LORAPLEX_DISPATCH_FLOAT(kv_type, op, [&] {
    LORAPLEX_DISPATCH_HEAD_DIM(head_dim, op, [&] { launch_prefill_t<T, D>(p, num_seqs, max_query_len, stream); });
  });
}

}  // namespace loraplex::kernels::cuda::detail
