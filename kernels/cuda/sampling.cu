// Token sampling on the device, one CTA of 1024 threads per row, no scratch outside shared memory.
//
// Greedy rows (temperature <= 0) take the argmax, lowest index on ties. Other rows follow the rule of
// kernels/sampling.hpp without sorting the vocabulary: every step of the rule ("the k-th token in sorted
// order", "the first token whose cumulative p reaches top_p", "the first token whose cumulative p exceeds u")
// is a selection in the order (logit descending, index ascending), found by a radix select over the logit's
// order-preserving 32-bit key: three passes of 11, 11 and 10 bits, each building a histogram of counts and of
// probability mass over the row's candidates, then picking the bucket where the running total crosses the
// target. Ties of equal logits are ordered by index with one extra pass when needed.
//
// Probability mass is fixed point: w = exp(l/T − max/T) · 2^40, summed in 64-bit integers, so sums are exact
// and independent of the order the threads add them (the draw of a row does not depend on scheduling).
// A weight below 2^-41 of the top token's rounds to zero: such a token can be picked only when u falls in an
// interval narrower than u's own resolution (2^-24).

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/detail/check.hpp"
#include "kernels/cuda/ops.hpp"

namespace loraplex::kernels::cuda {

namespace {

constexpr int threads = 1024;
constexpr int warps = threads / 32;
constexpr int buckets = 2048;  // 11 bits
constexpr float mass_one = 1099511627776.0f;  // 2^40: fixed-point unit of probability mass

struct select_smem {
  unsigned int count[buckets];
  unsigned long long mass[buckets];
  int min_index[buckets];
  int warp_count[warps];
  int chosen_bucket;
  unsigned long long chosen_before;
  double target;
  int tie_index;
  float red_value[warps];
  int red_index[warps];
};

/// Order-preserving key: a > b (as floats) ⇔ key(a) > key(b); −0 and +0 share a key, as they compare equal.
__device__ __forceinline__ std::uint32_t order_key(float f) {
  std::uint32_t u = __float_as_uint(f);
  if (u == 0x80000000u) u = 0;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/// The candidates of a selection: tokens before (kkey, kidx) in the sorted order, that boundary included.
struct kept_set {
  std::uint32_t key = 0;
  int index = 0x7fffffff;
  __device__ __forceinline__ bool contains(std::uint32_t k, int i) const { return k > key || (k == key && i <= index); }
};

struct selection {
  std::uint32_t key;
  int index;
  unsigned long long cum;  // count or mass of the candidates up to and including the selected token
};

struct weight_fn {
  float temperature;
  float top;  // max logit / T
  // NOTE: l / T (a division, as in the reference), not l * (1 / T): the two round differently.
  __device__ __forceinline__ unsigned long long operator()(float l) const {
    return __float2ull_rn(expf(l / temperature - top) * mass_one);
  }
};

__device__ __forceinline__ bool crosses(unsigned long long cum, double target, bool inclusive) {
  const double c = static_cast<double>(cum);
  return inclusive ? c >= target : c > target;
}

/// The first candidate (in the order logit desc, index asc) at which the running count (MASS = false) or
/// probability mass (MASS = true) reaches the target: `inclusive` means cum >= target, otherwise cum > target.
/// With `fraction`, the target is `target_param` times the candidates' total. When no candidate crosses (only
/// possible through rounding), the last candidate is chosen, as the reference does.
template <bool MASS>
__device__ selection radix_select(select_smem& sm, const float* __restrict__ row, int vocab, const weight_fn& wf,
                                  const kept_set& kept, double target_param, bool fraction, bool inclusive) {
  const int tid = threadIdx.x;
  std::uint32_t prefix = 0;
  std::uint32_t prefix_mask = 0;
  unsigned long long before = 0;
  unsigned int tie_count = 0;
  unsigned long long tie_weight = 1;
  int tie_min = 0;
  __syncthreads();  // a previous selection may still be reading sm.target
  if (tid == 0) sm.target = target_param;
#pragma unroll 1
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = pass == 0 ? 21 : pass == 1 ? 10 : 0;
    const int nb = pass == 2 ? 1024 : 2048;
    for (int b = tid; b < nb; b += threads) {
      sm.count[b] = 0;
      sm.mass[b] = 0;
      sm.min_index[b] = 0x7fffffff;
    }
    __syncthreads();
    for (int i = tid; i < vocab; i += threads) {
      const float l = row[i];
      const std::uint32_t k = order_key(l);
      if ((k & prefix_mask) != prefix || !kept.contains(k, i)) continue;
      const int b = static_cast<int>((k >> shift) & static_cast<std::uint32_t>(nb - 1));
      atomicAdd(&sm.count[b], 1u);
      if constexpr (MASS) atomicAdd(&sm.mass[b], wf(l));
      if (pass == 2) atomicMin(&sm.min_index[b], i);
    }
    __syncthreads();
    if (tid < 32) {
      // Lane 0 scans the highest buckets first: lane L owns buckets hi, hi−1, …, hi−per+1.
      const int lane = tid;
      const int per = nb / 32;
      const int hi = nb - 1 - lane * per;
      unsigned long long own = 0;
      for (int q = 0; q < per; ++q) own += MASS ? sm.mass[hi - q] : sm.count[hi - q];
      unsigned long long incl = own;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long t = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += t;
      }
      const unsigned long long total = __shfl_sync(0xffffffffu, incl, 31);
      double target = sm.target;
      if (pass == 0 && fraction) target = target_param * static_cast<double>(before + total);
      unsigned long long run = before + (incl - own);
      int found = -1;
      unsigned long long found_before = 0;
      int last = -1;
      unsigned long long last_before = 0;
      for (int q = 0; q < per; ++q) {
        const int b = hi - q;
        const unsigned long long v = MASS ? sm.mass[b] : sm.count[b];
        if (sm.count[b] != 0) {
          if (found < 0 && crosses(run + v, target, inclusive)) {
            found = b;
            found_before = run;
          }
          last = b;
          last_before = run;
        }
        run += v;
      }
      const unsigned hit = __ballot_sync(0xffffffffu, found >= 0);
      int src;
      int b;
      unsigned long long bb;
      if (hit != 0) {
        src = __ffs(hit) - 1;
        b = __shfl_sync(0xffffffffu, found, src);
        bb = __shfl_sync(0xffffffffu, found_before, src);
      } else {
        const unsigned any = __ballot_sync(0xffffffffu, last >= 0);
        src = 31 - __clz(any);
        b = __shfl_sync(0xffffffffu, last, src);
        bb = __shfl_sync(0xffffffffu, last_before, src);
      }
      if (lane == 0) {
        sm.chosen_bucket = b;
        sm.chosen_before = bb;
        sm.target = target;
      }
    }
    __syncthreads();
    const int b = sm.chosen_bucket;
    before = sm.chosen_before;
    prefix |= static_cast<std::uint32_t>(b) << shift;
    prefix_mask |= static_cast<std::uint32_t>(nb - 1) << shift;
    if (pass == 2) {
      tie_count = sm.count[b];
      tie_weight = MASS ? sm.mass[b] / tie_count : 1;
      tie_min = sm.min_index[b];
    }
    __syncthreads();  // the histograms are cleared by the next pass
  }
  const double target = sm.target;
  // Ties (equal logits, equal weights): the c-th of them by index, c the least that crosses.
  unsigned long long c = tie_count;
  if (crosses(before + tie_count * tie_weight, target, inclusive)) {
    const double need = (target - static_cast<double>(before)) / static_cast<double>(tie_weight);
    double cd = inclusive ? ceil(need) : floor(need) + 1.0;
    cd = fmin(fmax(cd, 1.0), static_cast<double>(tie_count));
    c = static_cast<unsigned long long>(cd);
    while (c > 1 && crosses(before + (c - 1) * tie_weight, target, inclusive)) --c;
    while (c < tie_count && !crosses(before + c * tie_weight, target, inclusive)) ++c;
  }
  selection s{prefix, tie_min, before + c * tie_weight};
  if (c > 1) {
    const int lane = tid & 31;
    const int warp = tid >> 5;
    unsigned long long seen = 0;
    for (int base = 0; base < vocab; base += threads) {
      const int i = base + tid;
      bool flag = false;
      if (i < vocab) {
        const std::uint32_t k = order_key(row[i]);
        flag = k == prefix && kept.contains(k, i);
      }
      const unsigned ballot = __ballot_sync(0xffffffffu, flag);
      if (lane == 0) sm.warp_count[warp] = __popc(ballot);
      __syncthreads();
      unsigned long long offset = 0;
      unsigned long long total = 0;
      for (int w = 0; w < warps; ++w) {
        if (w < warp) offset += sm.warp_count[w];
        total += sm.warp_count[w];
      }
      if (flag && seen + offset + __popc(ballot & ((1u << lane) - 1u)) + 1 == c) sm.tie_index = i;
      seen += total;
      __syncthreads();
      if (seen >= c) break;
    }
    s.index = sm.tie_index;
    __syncthreads();
  }
  return s;
}

/// Argmax of the row, lowest index on ties.
__device__ int argmax_row(select_smem& sm, const float* __restrict__ row, int vocab, float* max_value) {
  const int tid = threadIdx.x;
  float best = -INFINITY;
  int best_i = 0x7fffffff;
  for (int i = tid; i < vocab; i += threads) {
    const float l = row[i];
    if (l > best || best_i == 0x7fffffff) {
      best = l;
      best_i = i;
    }
  }
  // Thread-local candidates come in ascending index order, so strict > kept the lowest index; across threads:
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (ov > best || (ov == best && oi < best_i) || best_i == 0x7fffffff) {
      if (oi != 0x7fffffff) {
        best = ov;
        best_i = oi;
      }
    }
  }
  if ((tid & 31) == 0) {
    sm.red_value[tid >> 5] = best;
    sm.red_index[tid >> 5] = best_i;
  }
  __syncthreads();
  if (tid < 32) {
    best = sm.red_value[tid];
    best_i = sm.red_index[tid];
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, best, o);
      const int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
      if (ov > best || (ov == best && oi < best_i) || best_i == 0x7fffffff) {
        if (oi != 0x7fffffff) {
          best = ov;
          best_i = oi;
        }
      }
    }
    if (tid == 0) {
      sm.red_value[0] = best;
      sm.red_index[0] = best_i;
    }
  }
  __syncthreads();
  *max_value = sm.red_value[0];
  const int r = sm.red_index[0];
  __syncthreads();
  return r;
}

__global__ void __launch_bounds__(threads) sample_kernel(const float* __restrict__ logits,  // [num_rows, vocab]
                                                         int vocab,
                                                         const float* __restrict__ temperature,  // [num_rows]
                                                         const std::int32_t* __restrict__ top_k,  // [num_rows]
                                                         const float* __restrict__ top_p,         // [num_rows]
                                                         const std::uint64_t* __restrict__ seed,  // [num_rows]
                                                         const std::int32_t* __restrict__ step,   // [num_rows]
                                                         std::int32_t* __restrict__ out) {        // [num_rows]
  __shared__ select_smem sm;
  const int r = blockIdx.x;
  const float* row = logits + static_cast<std::size_t>(r) * vocab;
  const float temp = temperature[r];
  float max_logit = 0.0f;
  const int top = argmax_row(sm, row, vocab, &max_logit);
  if (!(temp > 0.0f)) {
    if (threadIdx.x == 0) out[r] = top;
    return;
  }
  const weight_fn wf{temp, max_logit / temp};
  kept_set kept;
  const int k = top_k[r];
  if (k > 0 && k < vocab) {
    const selection s = radix_select<false>(sm, row, vocab, wf, kept, static_cast<double>(k), false, true);
    kept.key = s.key;
    kept.index = s.index;
  }
  const float p = top_p[r];
  const double u = static_cast<double>(sample_uniform(seed[r], step[r]));
  selection chosen;
  if (p < 1.0f) {
    const selection cut = radix_select<true>(sm, row, vocab, wf, kept, static_cast<double>(p), true, true);
    chosen = radix_select<true>(sm, row, vocab, wf, kept, u * static_cast<double>(cut.cum), false, false);
  } else {
    chosen = radix_select<true>(sm, row, vocab, wf, kept, u, true, false);
  }
  if (threadIdx.x == 0) out[r] = chosen.index;
}

}  // namespace

std::size_t sample_workspace_bytes(int num_rows, int vocab) {
  detail::require_nonneg(num_rows, "sample", "num_rows");
  detail::require_nonneg(vocab, "sample", "vocab");
  return 0;  // all scratch is in shared memory
}

void sample(const sample_args& a, stream_t stream) {
  constexpr const char* op = "sample";
  detail::require_nonneg(a.num_rows, op, "num_rows");
  detail::require(a.vocab > 0, op, "vocab = " + std::to_string(a.vocab) + " must be positive");
  if (a.num_rows == 0) return;
  detail::require(a.num_rows <= 0x7fffffff, op, "num_rows too large");
  detail::require_ptr(a.logits, op, "logits");
  detail::require_ptr(a.temperature, op, "temperature");
  detail::require_ptr(a.top_k, op, "top_k");
  detail::require_ptr(a.top_p, op, "top_p");
  detail::require_ptr(a.seed, op, "seed");
  detail::require_ptr(a.step, op, "step");
  detail::require_ptr(a.out, op, "out");
  sample_kernel<<<a.num_rows, threads, 0, stream>>>(a.logits, a.vocab, a.temperature, a.top_k, a.top_p, a.seed, a.step,
                                                    a.out);
  LORAPLEX_CHECK_LAUNCH(op);
}

}  // namespace loraplex::kernels::cuda
