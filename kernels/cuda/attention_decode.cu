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

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/detail/attention.cuh"
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

template <typename TKV, int D, int GT>
void launch_decode_t(const attention_params& p, const decode_plan& plan, int num_seqs, cudaStream_t stream) {
  constexpr int U = 4;  // K and V rows in flight per group and step
  constexpr std::size_t smem = static_cast<std::size_t>(decode_warps) * GT * (D + 2) * sizeof(float);
  const dim3 grid(plan.num_parts, p.num_kv_heads * plan.head_chunks, num_seqs);
  decode_kernel<TKV, D, GT, U><<<grid, decode_threads, smem, stream>>>(p);
  if (plan.num_parts > 1) {
    const std::size_t rsmem = static_cast<std::size_t>(plan.num_parts) * sizeof(float);
    if (rsmem > 48 * 1024)
      throw std::invalid_argument("paged_attention: " + std::to_string(plan.num_parts) + " context partitions is too many");
    decode_reduce_kernel<D><<<dim3(p.num_heads, num_seqs), reduce_threads, rsmem, stream>>>(p);
  }
}

}  // namespace

void launch_decode(const attention_params& p, const decode_plan& plan, dtype kv_type, int head_dim, int num_seqs,
                   cudaStream_t stream) {
  constexpr const char* op = "paged_attention";
  LORAPLEX_DISPATCH_FLOAT(kv_type, op, [&] {
    LORAPLEX_DISPATCH_HEAD_DIM(head_dim, op, [&] {
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
