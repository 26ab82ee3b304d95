// Decode attention (one query token per sequence) over the paged KV cache. Memory-bound: the kernel reads
// each K and V row once for all query heads of its KV group, with 16-byte loads, and keeps the next rows'
// loads in flight while it computes on the current ones.
//
// Grid: (partition of the context, KV head × head chunk, sequence). A CTA of 128 threads serves up to 8 query
// heads (a register tile of GT heads) against `partition` context tokens in a single pass:
//   - a group of LANES threads covers one K/V row (LANES × 16 bytes = head_dim); the CTA's groups take
//     tokens g, g + NG, …, U tokens per step; each step first issues the loads of the next step's K and V
//     rows, then dots the current K rows with the GT query heads held in registers (reduced across the
//     group's lanes with shuffles) and folds the current V rows into a per-group online softmax
//     (running max m, sum l and accumulator per head, for the group's head_dim slice);
//   - at the end the groups' (m, l, acc) are merged with log-sum-exp weights: within a warp by shuffles,
//     across warps through shared memory.
// With one partition the CTA writes the normalised output; with several it writes the partition's output,
// max and sum to the workspace and decode_reduce_kernel merges the partitions.
//
// GQA with a 16-bit cache of the activation type and 3–8 heads per CTA takes decode_mma_kernel below instead
// (mma.sync on the tensor cores, K/V through a cp.async ring in shared memory); see its notes.

#include <algorithm>
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

constexpr int decode_threads = 128;
constexpr int decode_warps = decode_threads / 32;
constexpr int reduce_threads = 128;

/// exp(a − b) that is 0 when a is −∞ (an empty group), never NaN.
__device__ __forceinline__ float exp_diff(float a, float b) { return a == -INFINITY ? 0.0f : expf(a - b); }

template <typename TKV, int D, int GT, int U>
__global__ void __launch_bounds__(decode_threads) decode_kernel(const attention_params p) {
  constexpr int VEC = vec16<TKV>;
  constexpr int LANES = D / VEC;              // threads per K/V row
  constexpr int NG = decode_threads / LANES;  // token groups of the CTA
  static_assert(LANES <= 32 && 32 % LANES == 0, "a K row must fit one warp");
  extern __shared__ float smem[];  // acc [warps][GT][D], then m [warps][GT], then l [warps][GT]

  const int part = blockIdx.x;
  const int kvh = blockIdx.y / p.head_chunks;
  const int chunk = blockIdx.y - kvh * p.head_chunks;
  const int seq = blockIdx.z;
  const int q0 = p.query_start[seq];
  const int q_len = p.query_start[seq + 1] - q0;
  if (q_len <= 0) return;
  const int token = q0 + q_len - 1;
  const int ctx = p.context_lens[seq];
  const int start = part * p.partition;
  if (start >= ctx) return;
  const int n = min(ctx - start, p.partition);
  const int h0 = kvh * p.group + chunk * p.heads_per_cta;  // first query head of this CTA
  const int active = min(p.heads_per_cta, p.group - chunk * p.heads_per_cta);

  const int tid = threadIdx.x;
  const int lane = tid % LANES;
  const int g = tid / LANES;
  const int warp = tid / 32;
  const int wl = tid % 32;
  const std::int32_t* bt = p.block_tables + static_cast<std::size_t>(seq) * p.max_blocks_per_seq;
  const int page_size = p.page_size;
  const std::size_t kv_row = static_cast<std::size_t>(p.num_kv_heads) * D;  // elements per slot
  const std::size_t col = static_cast<std::size_t>(kvh) * D + lane * VEC;
  const TKV* kc = static_cast<const TKV*>(p.k_cache) + col;
  const TKV* vc = static_cast<const TKV*>(p.v_cache) + col;

  float q[GT][VEC];
  {
    const std::size_t qrow = static_cast<std::size_t>(token) * p.ld_q;
#pragma unroll
    for (int h = 0; h < GT; ++h)
#pragma unroll
      for (int v = 0; v < VEC; ++v)
        q[h][v] = h < active ? load_dyn(p.q, p.q_type, qrow + static_cast<std::size_t>(h0 + h) * D + lane * VEC + v) * p.scale
                             : 0.0f;
  }
  float m[GT], l[GT], acc[GT][VEC];
#pragma unroll
  for (int h = 0; h < GT; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.0f;
#pragma unroll
    for (int v = 0; v < VEC; ++v) acc[h][v] = 0.0f;
  }

  uint4 kr[U], vr[U];  // raw K and V rows of the current step
  const auto load_step = [&](int base, uint4 (&kd)[U], uint4 (&vd)[U]) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = base + u * NG + g;
      if (j < n) {
        const int pos = start + j;
        const std::size_t slot = static_cast<std::size_t>(bt[pos / page_size]) * page_size + pos % page_size;
        kd[u] = __ldg(reinterpret_cast<const uint4*>(kc + slot * kv_row));
        vd[u] = __ldg(reinterpret_cast<const uint4*>(vc + slot * kv_row));
      }
    }
  };
  load_step(0, kr, vr);
  for (int base = 0; base < n; base += NG * U) {
    uint4 kn[U], vn[U];
    load_step(base + NG * U, kn, vn);  // in flight while this step computes

    float s[U][GT];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[VEC];
      unpack16<TKV>(kr[u], kf);
#pragma unroll
      for (int h = 0; h < GT; ++h) {
        float d = 0.0f;
#pragma unroll
        for (int v = 0; v < VEC; ++v) d += q[h][v] * kf[v];
#pragma unroll
        for (int o = LANES / 2; o > 0; o >>= 1) d += __shfl_xor_sync(full_mask, d, o);
        s[u][h] = d;
      }
    }
    bool valid[U];
#pragma unroll
    for (int u = 0; u < U; ++u) valid[u] = base + u * NG + g < n;
#pragma unroll
    for (int h = 0; h < GT; ++h) {
      float mx = m[h];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (valid[u]) mx = fmaxf(mx, s[u][h]);
      const float alpha = exp_diff(m[h], mx);
      m[h] = mx;
      l[h] *= alpha;
#pragma unroll
      for (int v = 0; v < VEC; ++v) acc[h][v] *= alpha;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        s[u][h] = valid[u] ? expf(s[u][h] - mx) : 0.0f;
        l[h] += s[u][h];
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (!valid[u]) continue;
      float vf[VEC];
      unpack16<TKV>(vr[u], vf);
#pragma unroll
      for (int h = 0; h < GT; ++h)
#pragma unroll
        for (int v = 0; v < VEC; ++v) acc[h][v] += s[u][h] * vf[v];
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      kr[u] = kn[u];
      vr[u] = vn[u];
    }
  }

  // Merge the groups of a warp (lanes with equal `lane`), then the warps.
#pragma unroll
  for (int o = LANES; o < 32; o <<= 1) {
#pragma unroll
    for (int h = 0; h < GT; ++h) {
      const float mo = __shfl_xor_sync(full_mask, m[h], o);
      const float lo = __shfl_xor_sync(full_mask, l[h], o);
      const float mx = fmaxf(m[h], mo);
      const float a = exp_diff(m[h], mx);
      const float b = exp_diff(mo, mx);
      l[h] = l[h] * a + lo * b;
#pragma unroll
      for (int v = 0; v < VEC; ++v) acc[h][v] = acc[h][v] * a + __shfl_xor_sync(full_mask, acc[h][v], o) * b;
      m[h] = mx;
    }
  }
  float* red_acc = smem;
  float* red_m = smem + decode_warps * GT * D;
  float* red_l = red_m + decode_warps * GT;
  if (wl < LANES) {
#pragma unroll
    for (int h = 0; h < GT; ++h) {
#pragma unroll
      for (int v = 0; v < VEC; ++v) red_acc[(warp * GT + h) * D + lane * VEC + v] = acc[h][v];
      if (lane == 0) {
        red_m[warp * GT + h] = m[h];
        red_l[warp * GT + h] = l[h];
      }
    }
  }
  __syncthreads();
  for (int idx = tid; idx < GT * D; idx += decode_threads) {
    const int h = idx / D;
    const int d = idx - h * D;
    if (h >= active) continue;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < decode_warps; ++w) mx = fmaxf(mx, red_m[w * GT + h]);
    float sum = 0.0f;
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < decode_warps; ++w) {
      const float f = exp_diff(red_m[w * GT + h], mx);
      sum += red_l[w * GT + h] * f;
      o += red_acc[(w * GT + h) * D + d] * f;
    }
    o /= sum;
    if (p.num_parts == 1) {
      store_dyn(p.out, p.out_type, static_cast<std::size_t>(token) * p.num_heads * D + static_cast<std::size_t>(h0 + h) * D + d, o);
    } else {
      const std::size_t r = (static_cast<std::size_t>(seq) * p.num_heads + h0 + h) * p.num_parts + part;
      p.ws_out[r * D + d] = o;
      if (d == 0) {
        p.ws_max[r] = mx;
        p.ws_sum[r] = sum;
      }
    }
  }
}

// ---- tensor-core kernel (16-bit K/V, group tile 4 or 8) -----------------------------------------------------
//
// GQA reads each K/V row once for up to 8 query heads, so the CUDA-core kernel above does 4–8× the arithmetic of
// MHA per byte and cannot keep enough loads in flight at once (its registers hold 8 heads' accumulators). This
// kernel moves the arithmetic to mma.sync and the bytes in flight to shared memory:
//   - each warp owns tiles of 16 context tokens (tile w, w + 4, … of the CTA's partition) and a ring of STAGES
//     shared-memory stages; it copies K and V rows of its next STAGES − 1 tiles with cp.async (16 bytes a lane,
//     rows outside the context zero-filled) while it computes on the current one, so 2 tiles (16 KB at
//     head_dim 128) of every warp are in flight; no CTA barrier inside the loop;
//   - S = Q·Kᵀ with m16n8k16: the CTA's query heads are the 16 rows of A (rows 8–15 are zero), the 16 tokens two
//     n-tiles, head_dim the k dimension; K comes from shared memory through ldmatrix;
//   - online softmax on the fragment (a head's 16 scores sit in 4 lanes), then O += P·V with P as the A operand
//     (rounded to the K/V type) and V through ldmatrix.trans;
//   - the warps' (m, l, O) merge through shared memory as in the kernel above.
// Scores are kept in log2 units (exp2f); the workspace max is written back in natural units for the reduce.

constexpr int mma_tile = 16;    // tokens per warp tile
constexpr int mma_stages = 3;   // shared-memory stages per warp
constexpr int mma_heads = 8;    // query heads per CTA at most (rows 0–7 of the mma A operand)

template <int D>
struct mma_layout {
  static constexpr int chunks = D * 2 / 16;             // 16-byte chunks per K/V row
  static constexpr int row_bytes = (chunks + 1) * 16;   // padded: the 8 rows of an ldmatrix hit distinct banks
  static constexpr int tile_bytes = mma_tile * row_bytes;
  static constexpr int warp_bytes = mma_stages * 2 * tile_bytes;  // K and V of every stage
  static constexpr std::size_t smem = static_cast<std::size_t>(decode_warps) * warp_bytes;
  static_assert(static_cast<std::size_t>(decode_warps) * mma_heads * (D + 2) * sizeof(float) <= smem,
                "the merge buffers reuse the stages");
};

template <typename T>
__device__ __forceinline__ std::uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ std::uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const std::uint32_t*>(&v);
}
template <>
__device__ __forceinline__ std::uint32_t pack2<__half>(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const std::uint32_t*>(&v);
}

/// c += A·B, m16n8k16, A rows 8–15 zero (a1 = a3 = 0).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], std::uint32_t a0, std::uint32_t a2, std::uint32_t b0,
                                          std::uint32_t b1) {
  const std::uint32_t a[4] = {a0, 0u, a2, 0u};
  ptx::mma16816<T>(c, a, b0, b1);
}

using ptx::cp_async16;
using ptx::cp_async_commit;
using ptx::cp_async_wait;
using ptx::ldmatrix_x4;
using ptx::ldmatrix_x4_trans;

/// exp2(a − b) that is 0 when a is −∞, never NaN.
__device__ __forceinline__ float exp2_diff(float a, float b) { return a == -INFINITY ? 0.0f : exp2f(a - b); }

template <typename TKV, int D>
__global__ void __launch_bounds__(decode_threads, 2) decode_mma_kernel(const attention_params p) {
  using L = mma_layout<D>;
  constexpr int CH = L::chunks;
  constexpr int VEC = vec16<TKV>;  // elements per 16-byte chunk
  static_assert(sizeof(TKV) == 2 && D % 16 == 0 && (mma_tile * CH) % 32 == 0, "16-bit K/V, head_dim 32/64/128");
  extern __shared__ __align__(128) unsigned char mma_smem[];

  const int part = blockIdx.x;
  const int kvh = blockIdx.y / p.head_chunks;
  const int chunk = blockIdx.y - kvh * p.head_chunks;
  const int seq = blockIdx.z;
  const int q0 = p.query_start[seq];
  const int q_len = p.query_start[seq + 1] - q0;
  if (q_len <= 0) return;
  const int token = q0 + q_len - 1;
  const int ctx = p.context_lens[seq];
  const int start = part * p.partition;
  if (start >= ctx) return;
  const int n = min(ctx - start, p.partition);
  const int h0 = kvh * p.group + chunk * p.heads_per_cta;
  const int active = min(p.heads_per_cta, p.group - chunk * p.heads_per_cta);

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int g = lane / 4;  // mma row (query head) of this lane
  const int t = lane % 4;
  const std::int32_t* bt = p.block_tables + static_cast<std::size_t>(seq) * p.max_blocks_per_seq;
  const int page_size = p.page_size;
  const std::size_t kv_row = static_cast<std::size_t>(p.num_kv_heads) * D;
  const TKV* kc = static_cast<const TKV*>(p.k_cache) + static_cast<std::size_t>(kvh) * D;
  const TKV* vc = static_cast<const TKV*>(p.v_cache) + static_cast<std::size_t>(kvh) * D;

  // Q as the A operand: a0 = Q[g][16kk + 2t, +1], a2 = Q[g][16kk + 8 + 2t, +1]; heads past `active` are zero.
  std::uint32_t qa[D / 16][2];
  {
    const std::size_t qrow = static_cast<std::size_t>(token) * p.ld_q + static_cast<std::size_t>(h0 + g) * D;
    const bool live = g < active;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int d = 16 * kk + 8 * half + 2 * t;
        const float x0 = live ? load_dyn(p.q, p.q_type, qrow + d) : 0.0f;
        const float x1 = live ? load_dyn(p.q, p.q_type, qrow + d + 1) : 0.0f;
        qa[kk][half] = pack2<TKV>(x0, x1);
      }
  }
  const float qk_scale = p.scale * 1.4426950408889634f;  // scores in log2 units

  float o[D / 8][4];  // O[g][8j + 2t, +1] in [0], [1]; [2], [3] are the zero rows 8–15
#pragma unroll
  for (int j = 0; j < D / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[j][e] = 0.0f;
  float m = -INFINITY;  // running max of head g (log2 units), equal in the 4 lanes of the head
  float l = 0.0f;       // this lane's part of the running sum

  const int ntiles = (n + mma_tile - 1) / mma_tile;
  const int my_tiles = warp < ntiles ? (ntiles - warp + decode_warps - 1) / decode_warps : 0;
  const std::uint32_t wsm = static_cast<std::uint32_t>(__cvta_generic_to_shared(mma_smem)) + warp * L::warp_bytes;

  // Copies the K and V rows of this warp's i-th tile into stage `stage` (nothing past the last tile).
  const auto issue = [&](int i, int stage) {
    if (i >= my_tiles) return;
    const int tbase = (warp + i * decode_warps) * mma_tile;
    const int jr = tbase + (lane & (mma_tile - 1));
    long long slot = 0;
    if (jr < n) {
      const int pos = start + jr;
      slot = static_cast<long long>(bt[pos / page_size]) * page_size + pos % page_size;
    }
    const std::uint32_t kdst = wsm + stage * 2 * L::tile_bytes;
#pragma unroll
    for (int c = 0; c < mma_tile * CH / 32; ++c) {
      const int idx = lane + 32 * c;
      const int r = idx / CH;
      const int ch = idx % CH;
      const long long sr = __shfl_sync(full_mask, slot, r);
      const bool ok = tbase + r < n;
      const std::size_t off = static_cast<std::size_t>(sr) * kv_row + ch * VEC;
      const std::uint32_t dst = kdst + r * L::row_bytes + ch * 16;
      cp_async16(dst, kc + off, ok ? 16 : 0);
      cp_async16(dst + L::tile_bytes, vc + off, ok ? 16 : 0);
    }
  };

#pragma unroll
  for (int s = 0; s < mma_stages - 1; ++s) {
    issue(s, s);
    cp_async_commit();
  }
  for (int i = 0; i < my_tiles; ++i) {
    cp_async_wait<mma_stages - 2>();  // tile i has landed (this lane's copies)
    __syncwarp();                     // … and every lane's; the stage refilled below was read in step i − 1
    issue(i + mma_stages - 1, (i + mma_stages - 1) % mma_stages);
    cp_async_commit();

    const std::uint32_t ks = wsm + (i % mma_stages) * 2 * L::tile_bytes;
    const std::uint32_t vs = ks + L::tile_bytes;
    const int tbase = (warp + i * decode_warps) * mma_tile;

    // S = Q·Kᵀ: sc[0] tokens 0–7, sc[1] tokens 8–15 of the tile.
    float sc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
    {
      const int mi = lane / 8;
      const std::uint32_t base = ks + ((mi / 2) * 8 + (lane % 8)) * L::row_bytes + (mi % 2) * 16;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        std::uint32_t b[4];
        ldmatrix_x4(b, base + kk * 32);
        mma_16816<TKV>(sc[0], qa[kk][0], qa[kk][1], b[0], b[1]);
        mma_16816<TKV>(sc[1], qa[kk][0], qa[kk][1], b[2], b[3]);
      }
    }
    float s[4];
    s[0] = sc[0][0] * qk_scale;
    s[1] = sc[0][1] * qk_scale;
    s[2] = sc[1][0] * qk_scale;
    s[3] = sc[1][1] * qk_scale;
    const int tok[4] = {tbase + 2 * t, tbase + 2 * t + 1, tbase + 8 + 2 * t, tbase + 9 + 2 * t};
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (tok[e] >= n) s[e] = -INFINITY;
    float mx = fmaxf(fmaxf(s[0], s[1]), fmaxf(s[2], s[3]));
    mx = fmaxf(mx, __shfl_xor_sync(full_mask, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(full_mask, mx, 2));
    const float m_new = fmaxf(m, mx);  // finite: token tbase of the tile is in the context
    const float alpha = exp2_diff(m, m_new);
    m = m_new;
    float pr[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) pr[e] = exp2f(s[e] - m_new);  // 0 for masked tokens
    l = l * alpha + ((pr[0] + pr[1]) + (pr[2] + pr[3]));
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      o[j][0] *= alpha;
      o[j][1] *= alpha;
    }
    const std::uint32_t pa0 = pack2<TKV>(pr[0], pr[1]);
    const std::uint32_t pa2 = pack2<TKV>(pr[2], pr[3]);

    // O += P·V: V[tokens][8j .. 8j + 7] through ldmatrix.trans, two n-tiles per load.
    {
      const int mi = lane / 8;
      const std::uint32_t base = vs + ((mi % 2) * 8 + (lane % 8)) * L::row_bytes + (mi / 2) * 16;
#pragma unroll
      for (int j = 0; j < D / 8; j += 2) {
        std::uint32_t b[4];
        ldmatrix_x4_trans(b, base + j * 16);
        mma_16816<TKV>(o[j], pa0, pa2, b[0], b[1]);
        mma_16816<TKV>(o[j + 1], pa0, pa2, b[2], b[3]);
      }
    }
  }
  cp_async_wait<0>();
  l += __shfl_xor_sync(full_mask, l, 1);
  l += __shfl_xor_sync(full_mask, l, 2);
  __syncthreads();  // every warp is done with its stages: the merge buffers reuse them

  float* red_acc = reinterpret_cast<float*>(mma_smem);  // [warps][mma_heads][D]
  float* red_m = red_acc + decode_warps * mma_heads * D;
  float* red_l = red_m + decode_warps * mma_heads;
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
    red_acc[(warp * mma_heads + g) * D + 8 * j + 2 * t] = o[j][0];
    red_acc[(warp * mma_heads + g) * D + 8 * j + 2 * t + 1] = o[j][1];
  }
  if (t == 0) {
    red_m[warp * mma_heads + g] = m;
    red_l[warp * mma_heads + g] = l;
  }
  __syncthreads();
  constexpr float ln2 = 0.6931471805599453f;
  for (int idx = tid; idx < mma_heads * D; idx += decode_threads) {
    const int h = idx / D;
    const int d = idx - h * D;
    if (h >= active) continue;
    float mxw = -INFINITY;
#pragma unroll
    for (int w = 0; w < decode_warps; ++w) mxw = fmaxf(mxw, red_m[w * mma_heads + h]);
    float sum = 0.0f;
    float acc = 0.0f;
#pragma unroll
    for (int w = 0; w < decode_warps; ++w) {
      const float f = exp2_diff(red_m[w * mma_heads + h], mxw);
      sum += red_l[w * mma_heads + h] * f;
      acc += red_acc[(w * mma_heads + h) * D + d] * f;
    }
    acc /= sum;
    if (p.num_parts == 1) {
      store_dyn(p.out, p.out_type, static_cast<std::size_t>(token) * p.num_heads * D + static_cast<std::size_t>(h0 + h) * D + d, acc);
    } else {
      const std::size_t r = (static_cast<std::size_t>(seq) * p.num_heads + h0 + h) * p.num_parts + part;
      p.ws_out[r * D + d] = acc;
      if (d == 0) {
        p.ws_max[r] = mxw * ln2;  // natural units, as decode_reduce_kernel expects
        p.ws_sum[r] = sum;
      }
    }
  }
}

/// Merges the partitions of one (sequence, head): out = Σ w_i o_i / Σ w_i, w_i = sum_i · exp(max_i − max).
template <int D>
__global__ void __launch_bounds__(reduce_threads) decode_reduce_kernel(const attention_params p) {
  extern __shared__ float weight[];  // [num_parts]
  __shared__ float s_total;
  const int h = blockIdx.x;
  const int seq = blockIdx.y;
  const int q0 = p.query_start[seq];
  const int q_len = p.query_start[seq + 1] - q0;
  if (q_len <= 0) return;
  const int token = q0 + q_len - 1;
  const int ctx = p.context_lens[seq];
  const int parts = min((ctx + p.partition - 1) / p.partition, p.num_parts);
  if (parts <= 0) return;
  const std::size_t r0 = (static_cast<std::size_t>(seq) * p.num_heads + h) * p.num_parts;
  if (threadIdx.x < 32) {
    float m = -INFINITY;
    for (int i = threadIdx.x; i < parts; i += 32) m = fmaxf(m, p.ws_max[r0 + i]);
    m = warp_max(m);
    float total = 0.0f;
    for (int i = threadIdx.x; i < parts; i += 32) {
      const float w = p.ws_sum[r0 + i] * expf(p.ws_max[r0 + i] - m);
      weight[i] = w;
      total += w;
    }
    total = warp_sum(total);
    if (threadIdx.x == 0) s_total = total;
  }
  __syncthreads();
  const float inv = 1.0f / s_total;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.0f;
    for (int i = 0; i < parts; ++i) acc += weight[i] * p.ws_out[(r0 + i) * D + d];
    store_dyn(p.out, p.out_type, static_cast<std::size_t>(token) * p.num_heads * D + static_cast<std::size_t>(h) * D + d, acc * inv);
  }
}

void launch_reduce(const attention_params& p, const decode_plan& plan, int head_dim, int num_seqs, cudaStream_t stream);

template <typename TKV, int D, int GT>
void launch_decode_t(const attention_params& p, const decode_plan& plan, int num_seqs, cudaStream_t stream) {
  constexpr int U = 4;  // K and V rows in flight per group and step
  constexpr std::size_t smem = static_cast<std::size_t>(decode_warps) * GT * (D + 2) * sizeof(float);
  const dim3 grid(plan.num_parts, p.num_kv_heads * plan.head_chunks, num_seqs);
  decode_kernel<TKV, D, GT, U><<<grid, decode_threads, smem, stream>>>(p);
  launch_reduce(p, plan, D, num_seqs, stream);
}

template <typename TKV, int D>
void launch_decode_mma_t(const attention_params& p, const decode_plan& plan, int num_seqs, cudaStream_t stream) {
  constexpr std::size_t smem = mma_layout<D>::smem;
  if constexpr (smem > 48 * 1024) {
    // The dynamic shared-memory limit is per device and function: raise it once per device.
    static std::atomic<std::uint64_t> raised{0};
    int dev = 0;
    LORAPLEX_CUDA_CHECK(cudaGetDevice(&dev));
    const std::uint64_t bit = dev < 64 ? (std::uint64_t{1} << dev) : 0;
    if (bit == 0 || (raised.load(std::memory_order_acquire) & bit) == 0) {
      LORAPLEX_CUDA_CHECK(cudaFuncSetAttribute(decode_mma_kernel<TKV, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem)));
      raised.fetch_or(bit, std::memory_order_acq_rel);
    }
  }
  const dim3 grid(plan.num_parts, p.num_kv_heads * plan.head_chunks, num_seqs);
  decode_mma_kernel<TKV, D><<<grid, decode_threads, smem, stream>>>(p);
  launch_reduce(p, plan, D, num_seqs, stream);
}

void launch_reduce(const attention_params& p, const decode_plan& plan, int head_dim, int num_seqs, cudaStream_t stream) {
  if (plan.num_parts > 1) {
    const std::size_t rsmem = static_cast<std::size_t>(plan.num_parts) * sizeof(float);
    if (rsmem > 48 * 1024)
      throw std::invalid_argument("paged_attention: " + std::to_string(plan.num_parts) + " context partitions is too many");
    const dim3 grid(p.num_heads, num_seqs);
    switch (head_dim) {
      case 32: decode_reduce_kernel<32><<<grid, reduce_threads, rsmem, stream>>>(p); break;
      case 64: decode_reduce_kernel<64><<<grid, reduce_threads, rsmem, stream>>>(p); break;
      default: decode_reduce_kernel<128><<<grid, reduce_threads, rsmem, stream>>>(p); break;
    }
  }
}

}  // namespace

void launch_decode(const attention_params& p, const decode_plan& plan, dtype kv_type, int head_dim, int num_seqs,
                   cudaStream_t stream) {
  constexpr const char* op = "paged_attention";
  LORAPLEX_DISPATCH_FLOAT(kv_type, op, [&] {
    LORAPLEX_DISPATCH_HEAD_DIM(head_dim, op, [&] {
      if constexpr (sizeof(T) == 2) {
        if (plan.mma) return launch_decode_mma_t<T, D>(p, plan, num_seqs, stream);
      }
      if (plan.mma) throw std::invalid_argument("paged_attention: the tensor-core decode kernel needs a 16-bit K/V cache");
      switch (plan.group_tile) {
        case 1: return launch_decode_t<T, D, 1>(p, plan, num_seqs, stream);
        case 2: return launch_decode_t<T, D, 2>(p, plan, num_seqs, stream);
        case 4: return launch_decode_t<T, D, 4>(p, plan, num_seqs, stream);
        case 8: return launch_decode_t<T, D, 8>(p, plan, num_seqs, stream);
      }
      throw std::invalid_argument("paged_attention: Unsupported group tile: " + std::to_string(plan.group_tile));
    });
  });
}

}  // namespace loraplex::kernels::cuda::detail
