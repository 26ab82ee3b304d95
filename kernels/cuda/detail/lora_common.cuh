#pragma once
// Internal to the CUDA LoRA kernels (lora_shrink.cu, lora_expand.cu): device helpers (vector loads, tensor-core
// fragments, cp.async, programmatic dependent launch, the segment → tile map) and the host-side plan (which
// path, which tile sizes) and launch helper shared by shrink and expand.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <utility>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/detail/lora_tuning.hpp"
#include "kernels/cuda/detail/ptx.cuh"
#include "kernels/lora.hpp"

namespace loraplex::kernels::cuda::detail::lora {

// ---------------------------------------------------------------------------------------------------------
// Device helpers
// ---------------------------------------------------------------------------------------------------------

/// Waits until the kernels this one depends on (programmatic dependent launch) have finished and their writes
/// are visible. A no-op when the kernel was launched without the PDL attribute.
__device__ __forceinline__ void grid_dep_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/// Lets the next kernel on the stream be scheduled. Called after grid_dep_wait, so a dependent launched early
/// never overlaps the kernel before this one.
__device__ __forceinline__ void grid_dep_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/// Bulk prefetch of [p, p + bytes) into L2; p 16-byte aligned, bytes a multiple of 16.
__device__ __forceinline__ void prefetch_l2(const void* p, std::uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

/// Prefetch of the line holding p into L1 (only for data no kernel in flight writes).
__device__ __forceinline__ void prefetch_l1(const void* p) {
  asm volatile("prefetch.global.L1 [%0];" ::"l"(p) : "memory");
}

/// prefetch_l2 where p and bytes meet its alignment (device data: rows of a table entry); otherwise nothing.
__device__ __forceinline__ void prefetch_l2_if_aligned(const void* p, std::uint32_t bytes) {
  if (((reinterpret_cast<std::uintptr_t>(p) | bytes) & 15u) == 0 && bytes > 0) prefetch_l2(p, bytes);
}

/// Flags of the decode kernels (a kernel argument; the host sets them from the launch mode and variant).
inline constexpr int flag_early = 1;    // pdl::prefetch: tables and weights before the wait
inline constexpr int flag_l2_only = 2;  // with flag_early: weights to L2 only before the wait
inline constexpr int flag_xbt = 4;      // shrink: prefetch the expand's Bt rows into L2

// --- bulk copies (the copy engine, sm_90) into shared memory, completing on an mbarrier ---

/// One-shot barrier for bulk copies: thread 0 inits it (arrival count 1), then every thread may wait on phase 0
/// after a __syncthreads.
__device__ __forceinline__ void mbar_init(std::uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(static_cast<std::uint32_t>(__cvta_generic_to_shared(bar)))
               : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

/// The one arrival on the barrier, announcing `bytes` that bulk copies will complete.
__device__ __forceinline__ void mbar_expect_tx(std::uint64_t* bar, std::uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(
                   static_cast<std::uint32_t>(__cvta_generic_to_shared(bar))),
               "r"(bytes)
               : "memory");
#endif
}

/// Bulk copy global → shared of `bytes` (multiple of 16; both addresses 16-byte aligned), completing on bar.
__device__ __forceinline__ void bulk_copy_g2s(void* dst, const void* src, std::uint32_t bytes, std::uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   static_cast<std::uint32_t>(__cvta_generic_to_shared(dst))),
               "l"(src), "r"(bytes), "r"(static_cast<std::uint32_t>(__cvta_generic_to_shared(bar)))
               : "memory");
#endif
}

/// Waits until phase `parity` of the barrier has completed (all announced bytes have landed).
__device__ __forceinline__ void mbar_wait(std::uint64_t* bar, std::uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "LAB_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@p bra DONE;\n"
      "bra LAB_WAIT;\n"
      "DONE:\n"
      "}\n" ::"r"(static_cast<std::uint32_t>(__cvta_generic_to_shared(bar))),
      "r"(parity)
      : "memory");
#endif
}

/// N elements of T loaded in one access where N·sizeof(T) is 16 bytes or less, in 16-byte pieces above.
template <typename T, int N>
struct alignas(N * sizeof(T) >= 16 ? 16 : N * sizeof(T)) vec_t {
  T v[N];
};

namespace vec_detail {
template <int Bytes>
struct word;
template <>
struct word<2> {
  using type = unsigned short;
};
template <>
struct word<4> {
  using type = unsigned int;
};
template <>
struct word<8> {
  using type = uint2;
};
template <>
struct word<16> {
  using type = uint4;
};
template <typename V>
using word_t = typename word<(sizeof(V) >= 16 ? 16 : sizeof(V))>::type;
}  // namespace vec_detail

/// Read-only global load (ld.global.nc): weights, activations and shrink values, which no thread of the kernel
/// writes.
template <typename T, int N>
__device__ __forceinline__ vec_t<T, N> load_vec(const T* p) {
  using V = vec_t<T, N>;
  using W = vec_detail::word_t<V>;
  V r;
#pragma unroll
  for (int c = 0; c < static_cast<int>(sizeof(V) / sizeof(W)); ++c)
    reinterpret_cast<W*>(&r)[c] = __ldg(reinterpret_cast<const W*>(p) + c);
  return r;
}

/// Global load and store that bypass L1 (ld/st.global.cg): the y rows a thread reads and then writes.
template <typename T, int N>
__device__ __forceinline__ vec_t<T, N> load_vec_cg(const T* p) {
  using V = vec_t<T, N>;
  using W = vec_detail::word_t<V>;
  V r;
#pragma unroll
  for (int c = 0; c < static_cast<int>(sizeof(V) / sizeof(W)); ++c)
    reinterpret_cast<W*>(&r)[c] = __ldcg(reinterpret_cast<const W*>(p) + c);
  return r;
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* p, const vec_t<T, N>& v) {
  using V = vec_t<T, N>;
  using W = vec_detail::word_t<V>;
#pragma unroll
  for (int c = 0; c < static_cast<int>(sizeof(V) / sizeof(W)); ++c)
    __stcg(reinterpret_cast<W*>(p) + c, reinterpret_cast<const W*>(&v)[c]);
}

template <typename T, int N>
__device__ __forceinline__ void to_f32_vec(const vec_t<T, N>& v, float (&out)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = to_f32<T>(v.v[i]);
}

template <typename T, int N>
__device__ __forceinline__ void zero_vec(vec_t<T, N>& v) {
#pragma unroll
  for (int i = 0; i < N; ++i) v.v[i] = from_f32<T>(0.0f);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// --- cp.async and tensor-core fragments (sm_80+) ---

using ptx::cp_async16;
using ptx::cp_async_commit;
using ptx::cp_async_wait;
using ptx::ldmatrix_x4;
using ptx::ldmatrix_x4_trans;
using ptx::mma16816;
using ptx::smem_addr;

/// Splits (x0, x1) into 16-bit pairs hi + lo with hi + lo = x to about 2^-16 relative: the expand kernel feeds
/// the f32 shrink result to 16-bit tensor cores in two passes instead of rounding it once to 2^-8.
template <typename T>
__device__ __forceinline__ void split_pair(float x0, float x1, std::uint32_t& hi, std::uint32_t& lo);
template <>
__device__ __forceinline__ void split_pair<__nv_bfloat16>(float x0, float x1, std::uint32_t& hi, std::uint32_t& lo) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
  const __nv_bfloat162 l = __floats2bfloat162_rn(x0 - __low2float(h), x1 - __high2float(h));
  hi = *reinterpret_cast<const std::uint32_t*>(&h);
  lo = *reinterpret_cast<const std::uint32_t*>(&l);
}
template <>
__device__ __forceinline__ void split_pair<__half>(float x0, float x1, std::uint32_t& hi, std::uint32_t& lo) {
  const __half2 h = __floats2half2_rn(x0, x1);
  const __half2 l = __floats2half2_rn(x0 - __low2float(h), x1 - __high2float(h));
  hi = *reinterpret_cast<const std::uint32_t*>(&h);
  lo = *reinterpret_cast<const std::uint32_t*>(&l);
}

/// Tiles of BM tokens over all segments, in segment order: tile index `tile` → its segment, first token and
/// row count. The host launches an upper bound of tiles (num_tokens / BM + num_segments); blocks past the end
/// return false. All threads of the block (blockDim.x a multiple of 32, at most 1024) must call it.
template <int BM>
__device__ bool find_tile(const std::int32_t* __restrict__ seg_begin, const std::int32_t* __restrict__ seg_end,
                          int num_segments, int tile, int& seg, int& t0, int& rows) {
  __shared__ int warp_sums[32];
  __shared__ int found[3];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = blockDim.x >> 5;
  if (tid == 0) found[0] = -1;
  __syncthreads();
  int base = 0;
  for (int c = 0; c < num_segments; c += blockDim.x) {
    const int s = c + tid;
    int b = 0, len = 0, n = 0;
    if (s < num_segments) {
      b = seg_begin[s];
      len = seg_end[s] - b;
      n = len > 0 ? (len + BM - 1) / BM : 0;
    }
    int incl = n;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    if (lane == 31) warp_sums[warp] = incl;
    __syncthreads();
    int woff = 0, total = 0;
    for (int w = 0; w < nwarps; ++w) {
      const int ws = warp_sums[w];
      woff += w < warp ? ws : 0;
      total += ws;
    }
    const int start = base + woff + incl - n;
    if (n > 0 && tile >= start && tile < start + n) {
      found[0] = s;
      found[1] = b + (tile - start) * BM;
      found[2] = min(BM, b + len - found[1]);
    }
    base += total;
    __syncthreads();
    if (found[0] >= 0 || tile < base) break;
  }
  seg = found[0];
  t0 = found[1];
  rows = found[2];
  return seg >= 0;
}

// ---------------------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------------------

inline constexpr int max_supported_rank = 256;

/// Multiprocessors of the current device (cached per device).
inline int sm_count() {
  static std::atomic<int> cache[64] = {};
  int dev = 0;
  LORAPLEX_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64) dev = 0;
  int n = cache[dev].load(std::memory_order_relaxed);
  if (n == 0) {
    LORAPLEX_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    cache[dev].store(n, std::memory_order_relaxed);
  }
  return n;
}

/// Bytes of L2 of the current device (cached per device).
inline long l2_bytes() {
  static std::atomic<int> cache[64] = {};
  int dev = 0;
  LORAPLEX_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64) dev = 0;
  int n = cache[dev].load(std::memory_order_relaxed);
  if (n == 0) {
    LORAPLEX_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrL2CacheSize, dev));
    cache[dev].store(n > 0 ? n : 1, std::memory_order_relaxed);
  }
  return n;
}

/// Decode kernel flags for a call: launch mode and variant. `bt_bytes`: an upper bound of the Bt bytes the
/// expand of this call reads (for the shrink's L2 prefetch of them; 0 in the expand).
inline int decode_flags(double bt_bytes) {
  const int v = lora_tuning::get_variant();
  int f = 0;
  if (lora_tuning::get_pdl() == lora_tuning::pdl::prefetch) {
    f |= flag_early;
    if (v & lora_tuning::l2_only) f |= flag_l2_only;
  }
  if ((v & lora_tuning::xbt) && bt_bytes > 0 && bt_bytes <= static_cast<double>(l2_bytes()) / 3.0) f |= flag_xbt;
  return f;
}

/// Raises a kernel's dynamic shared-memory limit once per device. NOTE: the kernel is a template argument so
/// that each instantiation has its own flag (kernels of one signature share a function-pointer type).
template <auto Kernel>
void allow_smem(int bytes) {
  static std::atomic<bool> done[64] = {};
  if (bytes <= 48 * 1024) return;
  int dev = 0;
  LORAPLEX_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64) dev = 0;
  if (done[dev].load(std::memory_order_acquire)) return;
  LORAPLEX_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  done[dev].store(true, std::memory_order_release);
}

/// Kernels whose blocks stage weights in shared memory: the largest shared-memory carveout, so that blocks of
/// two such launches (programmatic dependent launch) can share a multiprocessor. Once per device.
template <auto Kernel>
void prefer_shared() {
  static std::atomic<bool> done[64] = {};
  int dev = 0;
  LORAPLEX_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64) dev = 0;
  if (done[dev].load(std::memory_order_acquire)) return;
  LORAPLEX_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                           static_cast<int>(cudaSharedmemCarveoutMaxShared)));
  done[dev].store(true, std::memory_order_release);
}

/// Decode weights staged in shared memory by bulk copies (lora_tuning::bulk): at most this many bytes a block
/// (dynamic; with the static part under the 48 KB that needs no opt-in).
inline constexpr int bulk_smem_limit = 40 * 1024;

/// Whether the decode kernels stage weights by bulk copies for this call (variant and launch mode).
inline bool use_bulk() {
  const int v = lora_tuning::get_variant();
  return (v & lora_tuning::bulk_always) != 0 ||
         ((v & lora_tuning::bulk) != 0 && lora_tuning::get_pdl() == lora_tuning::pdl::prefetch);
}

/// Launches with the PDL attribute per the tuning knob and, for cluster_z > 1, a (1, 1, cluster_z) cluster.
template <typename... KArgs, typename... Args>
void launch(const char* op, void (*kernel)(KArgs...), dim3 grid, dim3 block, int smem, cudaStream_t stream,
            int cluster_z, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = static_cast<std::size_t>(smem);
  cfg.stream = stream;
  cudaLaunchAttribute attrs[2];
  unsigned n = 0;
  if (lora_tuning::get_pdl() != lora_tuning::pdl::off) {
    attrs[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  if (cluster_z > 1) {
    attrs[n].id = cudaLaunchAttributeClusterDimension;
    attrs[n].val.clusterDim.x = 1;
    attrs[n].val.clusterDim.y = 1;
    attrs[n].val.clusterDim.z = static_cast<unsigned>(cluster_z);
    ++n;
  }
  cfg.attrs = n > 0 ? attrs : nullptr;
  cfg.numAttrs = n;
  const cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // a failed launch also sets the last error: do not leave it to the next op
    throw_cuda(e, op, __FILE__, __LINE__);
  }
}

inline bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

/// Shape and type checks common to shrink and expand (host scalars only: the device arrays are trusted).
inline void validate(const lora_args& a, const char* op) {
  using std::to_string;
  if (a.num_tokens < 0) unsupported(op, "num_tokens " + to_string(a.num_tokens));
  if (a.num_slices < 1 || a.num_slices > max_lora_slices) unsupported(op, "num_slices " + to_string(a.num_slices));
  if (a.in_features <= 0) unsupported(op, "in_features " + to_string(a.in_features));
  if (a.max_rank < 0 || a.max_rank > max_supported_rank)
    unsupported(op, "max_rank " + to_string(a.max_rank) + " (1.." + to_string(max_supported_rank) + ")");
  if (a.num_segments < 0) unsupported(op, "num_segments " + to_string(a.num_segments));
  for (int j = 0; j < a.num_slices; ++j) {
    if (a.slice_width[j] <= 0) unsupported(op, "slice_width[" + to_string(j) + "] " + to_string(a.slice_width[j]));
    if (a.slice_offset[j] < 0 || a.slice_offset[j] + a.slice_width[j] > a.ldy)
      unsupported(op, "slice " + to_string(j) + " columns [" + to_string(a.slice_offset[j]) + ", " +
                          to_string(a.slice_offset[j] + a.slice_width[j]) + ") outside ldy " + to_string(a.ldy));
  }
  if (a.ldx < a.in_features) unsupported(op, "ldx " + to_string(a.ldx) + " < in_features");
  const bool same16 = (a.act_type == dtype::bf16 && a.weight_type == dtype::bf16) ||
                      (a.act_type == dtype::f16 && a.weight_type == dtype::f16);
  const bool f32act = a.act_type == dtype::f32;
  if (!same16 && !f32act)
    unsupported(op, std::string("act_type/weight_type ") + std::string(dtype_name(a.act_type)) + "/" +
                        std::string(dtype_name(a.weight_type)) + " (supported: bf16/bf16, f16/f16, f32/any)");
  if (a.num_tokens > 0 && a.num_segments > 0 && a.max_rank > 0) {
    if (a.x == nullptr || a.y == nullptr || a.shrink_out == nullptr || a.a_ptrs == nullptr ||
        a.bt_ptrs == nullptr || a.ranks == nullptr || a.lda == nullptr || a.ldb == nullptr ||
        a.seg_begin == nullptr || a.seg_end == nullptr || a.seg_adapter == nullptr)
      unsupported(op, "null pointer in args");
  }
}

/// Elements per 16-byte access of the weight type: the vector width of the fast kernels.
inline int weight_vec(dtype w) { return w == dtype::f32 ? 4 : 8; }

/// Which kernels a call runs, from host scalars only (segment lengths live on the device).
struct plan {
  bool prefill = false;  // tensor-core kernels
  int tokens_per_group = 1;  // decode: tokens of one segment per pass (1, 2 or 4)
  int bm = 64;               // prefill: tokens per tile (16, 32 or 64)
  double avg_segment = 0.0;
};

inline plan make_plan(const lora_args& a, bool tensor_core_ok) {
  plan p;
  p.avg_segment = a.num_segments > 0 ? static_cast<double>(a.num_tokens) / a.num_segments : 0.0;
  const lora_tuning::path forced = lora_tuning::get_path();
  if (forced == lora_tuning::path::prefill)
    p.prefill = tensor_core_ok;
  else if (forced == lora_tuning::path::decode)
    p.prefill = false;
  else
    p.prefill = tensor_core_ok && p.avg_segment >= lora_tuning::prefill_min_avg_segment;
  p.tokens_per_group = p.avg_segment <= 1.0 ? 1 : (p.avg_segment <= 2.0 ? 2 : 4);
  p.bm = p.avg_segment >= 48.0 ? 64 : (p.avg_segment >= 24.0 ? 32 : 16);
  return p;
}

/// Upper bound on the number of BM-token tiles over all segments (each segment's last tile may be partial).
inline int tile_bound(const lora_args& a, int bm) { return a.num_tokens / bm + a.num_segments; }

}  // namespace loraplex::kernels::cuda::detail::lora
