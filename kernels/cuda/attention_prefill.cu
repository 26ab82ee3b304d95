// Prefill attention (chunks of query tokens, causal, over earlier context in pages).
//
// Two kernels. Rows of a tile are (query token, query head of the KV group) pairs, row r = i·group + h, so a CTA
// reads each K/V tile once for all heads of its group.
//
// prefill_mma_kernel (16-bit K/V of the activation type, head_dim 64 or 128): flash attention on the tensor
// cores (mma.sync m16n8k16, f32 accumulators). Grid: (KV head, row tile, sequence), row tiles in reverse order
// so the longest (causal) tiles start first. A CTA of 4 warps owns 128 rows, 32 per warp (two m16 tiles, so
// each K/V fragment read from shared memory serves both); two CTAs fit an SM:
//   - the Q tile is copied to shared memory once and read through ldmatrix as the A operand;
//   - K and V tiles of 64 keys stream through a 2-stage cp.async ring in shared memory, CTA-wide: each thread
//     copies 16-byte chunks of rows it resolves through the block table; keys past the last position any row
//     of the CTA may see are zero-filled, never read;
//   - S = Q·Kᵀ (K through ldmatrix), causal mask where the tile crosses the warp's diagonal, online softmax in
//     f32 on the fragment (scores in log2 units; O is rescaled only when a row max of the warp moved), P
//     rounded to the K/V type as the A operand of O += P·V (V through ldmatrix.trans); a warp skips the tiles
//     none of its rows can see;
//   - O / l goes through the warp's own rows of the Q tile to 16-byte row stores.
// Shared-memory rows are padded by 16 bytes so the 8 rows of an ldmatrix fall in distinct banks.
//
// prefill_kernel (every other case: f32 or mixed-type caches, head_dim 32): online softmax on CUDA cores in
// f32. Grid: (row tile, KV head, sequence); a CTA of 128 threads owns 64 rows and walks the keys in tiles of 32
// up to the last position any of its rows may see. Shared memory holds the scaled Q tile, the K and V tiles
// (converted to f32) and the probabilities. Thread t owns rows 4·(t/8) .. +3; for scores, keys t%8 + 8·j
// (j < 4); for the output, columns 4·(t%8 + 8·c) .. +3 (c < head_dim/32). Rows are padded by one 16-byte
// vector so the K reads of a quarter warp fall in distinct banks.

#include <atomic>
#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/detail/attention.cuh"
#include "kernels/cuda/detail/ptx.cuh"
#include "kernels/cuda/detail/reduce.cuh"
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


// ---- tensor-core kernel ---------------------------------------------------------------------------------------

constexpr int pf_warps = 4;
constexpr int pf_threads = pf_warps * 32;
constexpr int PM = pf_warps * 32;  // rows per CTA: two m16 tiles per warp
constexpr int PN = 64;             // keys per tile
constexpr int pf_stages = 2;
constexpr int pf_min_blocks = pf_warps == 4 ? 2 : 1;

template <int D>
struct pf_layout {
  static constexpr int chunks = D * 2 / 16;            // 16-byte chunks per Q/K/V row
  static constexpr int row_bytes = (chunks + 1) * 16;  // padded
  static constexpr int q_bytes = PM * row_bytes;       // the Q tile, then the output staging
  static constexpr int tile_bytes = PN * row_bytes;
  static constexpr int stage_bytes = 2 * tile_bytes;  // K, then V
  static constexpr std::size_t smem = q_bytes + static_cast<std::size_t>(pf_stages) * stage_bytes;
  static_assert(pf_threads % chunks == 0 && PN % (pf_threads / chunks) == 0, "whole rows per copy pass");
};

template <typename T>
__device__ __forceinline__ std::uint32_t pf_pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const std::uint32_t*>(&v);
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const std::uint32_t*>(&v);
  }
}

/// 2^x (MUFU.EX2, flushes denormals; 2^−∞ = 0).
__device__ __forceinline__ float pf_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

template <typename T, int D>
__global__ void __launch_bounds__(pf_threads, pf_min_blocks) prefill_mma_kernel(const attention_params p) {
  using L = pf_layout<D>;
  constexpr int CH = L::chunks;
  constexpr int VEC = 8;                      // elements per 16-byte chunk
  constexpr int PASS_ROWS = pf_threads / CH;  // rows one copy pass covers
  constexpr int PASSES = PN / PASS_ROWS;
  static_assert(sizeof(T) == 2 && (D == 64 || D == 128), "16-bit K/V, head_dim 64 or 128");
  extern __shared__ __align__(128) unsigned char pf_smem[];

  const int kvh = blockIdx.x;
  const int tile = static_cast<int>(gridDim.y - 1 - blockIdx.y);  // longest tiles first
  const int seq = blockIdx.z;
  const int q0 = p.query_start[seq];
  const int q_len = p.query_start[seq + 1] - q0;
  const int group = p.group;
  const int rows = q_len * group;
  const int row0 = tile * PM;
  if (row0 >= rows) return;
  const int ctx = p.context_lens[seq];
  const int past = ctx - q_len;  // position of query 0
  const int i_max = min(q_len - 1, (row0 + PM - 1) / group);
  const int kv_end = past + i_max + 1;  // keys [0, kv_end) may be seen by some row of the tile
  const int ntiles = (kv_end + PN - 1) / PN;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int crow = tid / CH;  // first row this thread copies
  const int cch = tid % CH;   // its 16-byte chunk of the row
  const std::uint32_t sbase = static_cast<std::uint32_t>(__cvta_generic_to_shared(pf_smem));
  const std::uint32_t kvbase = sbase + L::q_bytes;

  // The Q tile → shared memory (rows past the sequence are zero); read after the loop's first barrier.
  for (int r = crow; r < PM; r += PASS_ROWS) {
    const int gr = row0 + r;
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
    if (gr < rows) {
      const int i = gr / group;
      const int h = kvh * group + (gr - i * group);
      const std::uint16_t* src = static_cast<const std::uint16_t*>(p.q) + static_cast<std::size_t>(q0 + i) * p.ld_q +
                                 static_cast<std::size_t>(h) * D + cch * VEC;
      if ((reinterpret_cast<std::uintptr_t>(src) & 15) == 0) {
        v = *reinterpret_cast<const uint4*>(src);
      } else {
        std::uint16_t* e = reinterpret_cast<std::uint16_t*>(&v);
#pragma unroll
        for (int x = 0; x < VEC; ++x) e[x] = src[x];
      }
    }
    *reinterpret_cast<uint4*>(pf_smem + r * L::row_bytes + cch * 16) = v;
  }

  // This lane's four rows: warp·32 + 16·mt + g + 8·hi; the last key each may see (−1: past the sequence).
  int last[2][2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      const int r = row0 + warp * 32 + 16 * mt + g + 8 * hi;
      last[mt][hi] = r < rows ? past + r / group : -1;
    }
  const int lane_max = max(max(last[0][0], last[0][1]), max(last[1][0], last[1][1]));
  const int lane_min = min(min(last[0][0], last[0][1]), min(last[1][0], last[1][1]));
  const int warp_max_last = __reduce_max_sync(full_mask, lane_max);  // −1: no row of the warp
  const int warp_min_last = __reduce_min_sync(full_mask, lane_min);  // −1 where a row is padding
  const float qk_scale = p.scale * 1.4426950408889634f;             // scores in log2 units

  const std::int32_t* bt = p.block_tables + static_cast<std::size_t>(seq) * p.max_blocks_per_seq;
  const int page_size = p.page_size;
  const std::size_t kv_row = static_cast<std::size_t>(p.num_kv_heads) * D;
  const T* kc = static_cast<const T*>(p.k_cache) + static_cast<std::size_t>(kvh) * D + cch * VEC;
  const T* vc = static_cast<const T*>(p.v_cache) + static_cast<std::size_t>(kvh) * D + cch * VEC;

  // Copies the K and V rows of key tile `it` into stage `stage` (nothing past the last tile).
  const auto issue = [&](int it, int stage) {
    if (it >= ntiles) return;
    const int kt = it * PN;
    const std::uint32_t dst0 = kvbase + stage * L::stage_bytes + crow * L::row_bytes + cch * 16;
#pragma unroll
    for (int c = 0; c < PASSES; ++c) {
      const int r = crow + c * PASS_ROWS;
      const int pos = kt + r;
      const bool ok = pos < kv_end;
      std::size_t off = 0;
      if (ok) {
        const int blk = pos / page_size;
        off = (static_cast<std::size_t>(bt[blk]) * page_size + (pos - blk * page_size)) * kv_row;
      }
      const std::uint32_t dst = dst0 + c * PASS_ROWS * L::row_bytes;
      ptx::cp_async16(dst, kc + off, ok ? 16 : 0);
      ptx::cp_async16(dst + L::tile_bytes, vc + off, ok ? 16 : 0);
    }
  };

  float o[2][D / 8][4];  // O of m-tile mt: rows g ([0], [1]) and g + 8 ([2], [3]), columns 8j + 2t, +1
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[mt][j][e] = 0.0f;
  float m[2][2], l[2][2];  // running max (log2 units, equal in the 4 lanes of a row) and this lane's sum
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      m[mt][hi] = -INFINITY;
      l[mt][hi] = 0.0f;
    }

#pragma unroll
  for (int s = 0; s < pf_stages - 1; ++s) {
    issue(s, s);
    ptx::cp_async_commit();
  }
  const int mi = lane / 8;
  const std::uint32_t q_lane = sbase + (warp * 32 + (mi % 2) * 8 + (lane % 8)) * L::row_bytes + (mi / 2) * 16;
  const std::uint32_t k_lane = ((mi / 2) * 8 + (lane % 8)) * L::row_bytes + (mi % 2) * 16;
  const std::uint32_t v_lane = ((mi % 2) * 8 + (lane % 8)) * L::row_bytes + (mi / 2) * 16;
  for (int it = 0; it < ntiles; ++it) {
    ptx::cp_async_wait<pf_stages - 2>();  // tile it has landed (this thread's copies)
    __syncthreads();                    // … and every thread's (and the Q tile); the stage refilled below was read in step it − 1
    issue(it + pf_stages - 1, (it + pf_stages - 1) % pf_stages);
    ptx::cp_async_commit();

    const int kt = it * PN;
    if (kt > warp_max_last) continue;  // no row of this warp sees any key of the tile
    const std::uint32_t ks = kvbase + (it % pf_stages) * L::stage_bytes;
    const std::uint32_t vs = ks + L::tile_bytes;

    // S = Q·Kᵀ: sc[mt][n] holds keys kt + 8n + 2t, +1 of rows g ([0], [1]) and g + 8 ([2], [3]) of m-tile mt.
    float sc[2][PN / 8][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int n = 0; n < PN / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) sc[mt][n][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      std::uint32_t qa[2][4];
      ptx::ldmatrix_x4(qa[0], q_lane + kk * 32);
      ptx::ldmatrix_x4(qa[1], q_lane + 16 * L::row_bytes + kk * 32);
#pragma unroll
      for (int np = 0; np < PN / 16; ++np) {
        std::uint32_t b[4];
        ptx::ldmatrix_x4(b, ks + k_lane + np * 16 * L::row_bytes + kk * 32);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          ptx::mma16816<T>(sc[mt][2 * np], qa[mt], b[0], b[1]);
          ptx::mma16816<T>(sc[mt][2 * np + 1], qa[mt], b[2], b[3]);
        }
      }
    }

    const bool need_mask = kt + PN - 1 > warp_min_last;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int n = 0; n < PN / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float s = sc[mt][n][e] * qk_scale;
          if (need_mask && kt + 8 * n + 2 * t + (e & 1) > last[mt][e / 2]) s = -INFINITY;
          sc[mt][n][e] = s;
        }

    // Online softmax of the four rows.
    float alpha[2][2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {
        float mx = m[mt][hi];
#pragma unroll
        for (int n = 0; n < PN / 8; ++n) mx = fmaxf(mx, fmaxf(sc[mt][n][2 * hi], sc[mt][n][2 * hi + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(full_mask, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(full_mask, mx, 2));
        const float base = mx == -INFINITY ? 0.0f : mx;  // a row that sees no key yet stays at zero
        alpha[mt][hi] = pf_exp2(m[mt][hi] - base);
        m[mt][hi] = mx;
        float rs = 0.0f;
#pragma unroll
        for (int n = 0; n < PN / 8; ++n) {
          sc[mt][n][2 * hi] = pf_exp2(sc[mt][n][2 * hi] - base);
          sc[mt][n][2 * hi + 1] = pf_exp2(sc[mt][n][2 * hi + 1] - base);
          rs += sc[mt][n][2 * hi] + sc[mt][n][2 * hi + 1];
        }
        l[mt][hi] = l[mt][hi] * alpha[mt][hi] + rs;
      }
    const bool moved = alpha[0][0] != 1.0f || alpha[0][1] != 1.0f || alpha[1][0] != 1.0f || alpha[1][1] != 1.0f;
    if (__any_sync(full_mask, moved)) {  // skipped while no row max of the warp moves
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
          o[mt][j][0] *= alpha[mt][0];
          o[mt][j][1] *= alpha[mt][0];
          o[mt][j][2] *= alpha[mt][1];
          o[mt][j][3] *= alpha[mt][1];
        }
    }

    // O += P·V, 16 keys at a time: P as the A operand (the S fragments of two n-tiles), V through ldmatrix.trans.
#pragma unroll
    for (int kk = 0; kk < PN / 16; ++kk) {
      std::uint32_t pa[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        pa[mt][0] = pf_pack2<T>(sc[mt][2 * kk][0], sc[mt][2 * kk][1]);
        pa[mt][1] = pf_pack2<T>(sc[mt][2 * kk][2], sc[mt][2 * kk][3]);
        pa[mt][2] = pf_pack2<T>(sc[mt][2 * kk + 1][0], sc[mt][2 * kk + 1][1]);
        pa[mt][3] = pf_pack2<T>(sc[mt][2 * kk + 1][2], sc[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int j = 0; j < D / 8; j += 2) {
        std::uint32_t b[4];
        ptx::ldmatrix_x4_trans(b, vs + v_lane + kk * 16 * L::row_bytes + j * 16);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          ptx::mma16816<T>(o[mt][j], pa[mt], b[0], b[1]);
          ptx::mma16816<T>(o[mt][j + 1], pa[mt], b[2], b[3]);
        }
      }
    }
  }
  ptx::cp_async_wait<0>();
  __syncthreads();  // the Q tile is complete everywhere (also where no key tile ran)

  // O / l → this warp's own rows of the Q tile (no other warp reads them), then 16-byte stores of whole rows.
  unsigned char* stage_out = pf_smem + static_cast<std::size_t>(warp) * 32 * L::row_bytes;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      float sum = l[mt][hi];
      sum += __shfl_xor_sync(full_mask, sum, 1);
      sum += __shfl_xor_sync(full_mask, sum, 2);
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
      std::uint32_t* dst = reinterpret_cast<std::uint32_t*>(stage_out + (16 * mt + g + 8 * hi) * L::row_bytes) + t;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) dst[4 * j] = pf_pack2<T>(o[mt][j][2 * hi] * inv, o[mt][j][2 * hi + 1] * inv);
    }
  __syncwarp();
  const bool out_al = (reinterpret_cast<std::uintptr_t>(p.out) & 15) == 0;
#pragma unroll
  for (int c = 0; c < 32 * CH / 32; ++c) {
    const int idx = lane + 32 * c;
    const int rr = idx / CH;
    const int ch = idx % CH;
    const int r = row0 + warp * 32 + rr;
    if (r >= rows) continue;
    const int i = r / group;
    const int h = kvh * group + (r - i * group);
    const uint4 v = *reinterpret_cast<const uint4*>(stage_out + rr * L::row_bytes + ch * 16);
    T* dst = static_cast<T*>(p.out) + static_cast<std::size_t>(q0 + i) * p.num_heads * D + static_cast<std::size_t>(h) * D + ch * VEC;
    if (out_al) {
      *reinterpret_cast<uint4*>(dst) = v;
    } else {
      const std::uint16_t* e = reinterpret_cast<const std::uint16_t*>(&v);
      std::uint16_t* d16 = reinterpret_cast<std::uint16_t*>(dst);
#pragma unroll
      for (int x = 0; x < VEC; ++x) d16[x] = e[x];
    }
  }
}

template <typename T, int D>
void launch_prefill_mma_t(const attention_params& p, int num_seqs, long long tiles, cudaStream_t stream) {
  constexpr std::size_t smem = pf_layout<D>::smem;
  if constexpr (smem > 48 * 1024) {
    // The dynamic shared-memory limit is per device and function: raise it once per device.
    static std::atomic<std::uint64_t> raised{0};
    int dev = 0;
    LORAPLEX_CUDA_CHECK(cudaGetDevice(&dev));
    const std::uint64_t bit = dev < 64 ? (std::uint64_t{1} << dev) : 0;
    if (bit == 0 || (raised.load(std::memory_order_acquire) & bit) == 0) {
      LORAPLEX_CUDA_CHECK(cudaFuncSetAttribute(prefill_mma_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem)));
      raised.fetch_or(bit, std::memory_order_acq_rel);
    }
  }
  const dim3 grid(p.num_kv_heads, static_cast<unsigned>(tiles), num_seqs);
  prefill_mma_kernel<T, D><<<grid, pf_threads, smem, stream>>>(p);
}

}  // namespace

void launch_prefill(const attention_params& p, dtype kv_type, int head_dim, int num_seqs, int max_query_len,
                    cudaStream_t stream) {
  constexpr const char* op = "paged_attention";
  // The tensor-core kernel: a 16-bit cache of the activation type, head_dim 64 or 128, row tiles in grid.y.
  const long long mma_tiles = (static_cast<long long>(max_query_len) * p.group + PM - 1) / PM;
  if (kv_type == p.q_type && p.out_type == p.q_type && (head_dim == 64 || head_dim == 128) && mma_tiles <= 65535) {
    if (kv_type == dtype::bf16) {
      if (head_dim == 64) return launch_prefill_mma_t<__nv_bfloat16, 64>(p, num_seqs, mma_tiles, stream);
      return launch_prefill_mma_t<__nv_bfloat16, 128>(p, num_seqs, mma_tiles, stream);
    }
    if (kv_type == dtype::f16) {
      if (head_dim == 64) return launch_prefill_mma_t<__half, 64>(p, num_seqs, mma_tiles, stream);
      return launch_prefill_mma_t<__half, 128>(p, num_seqs, mma_tiles, stream);
    }
  }
  LORAPLEX_DISPATCH_FLOAT(kv_type, op, [&] {
    LORAPLEX_DISPATCH_HEAD_DIM(head_dim, op, [&] { launch_prefill_t<T, D>(p, num_seqs, max_query_len, stream); });
  });
}

}  // namespace loraplex::kernels::cuda::detail
