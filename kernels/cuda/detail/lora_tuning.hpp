#pragma once
/// Process-wide knobs of the CUDA LoRA kernels (host-includable, no CUDA headers). The ops choose everything
/// per call on their own; these exist so tests can force each path on the same inputs and the benchmark can
/// compare launch modes. Relaxed atomics: set them before the calls they should affect.

#include <atomic>

namespace loraplex::kernels::cuda::lora_tuning {

/// Which kernels lora_shrink / lora_expand use.
enum class path : int {
  automatic = 0,  ///< by the average segment length: short segments → decode kernels, long → prefill kernels
  decode = 1,     ///< BGMV-style: CUDA cores, a few tokens of one segment at a time, weights streamed once
  prefill = 2,    ///< SGMV-style: tensor-core tiles of tokens × rank (shrink) or tokens × width (expand)
};

/// Programmatic dependent launch (Hopper): the next kernel on the stream may be scheduled before the current
/// one ends, and waits (griddepcontrol.wait) before touching anything an earlier kernel may have written.
enum class pdl : int {
  off = 0,  ///< plain stream order
  on = 1,   ///< launch early; wait before the first global-memory access (same semantics as plain order)
  /// launch early; before waiting, read the adapter table, ranks, strides and segment arrays and prefetch this
  /// block's adapter weights into L2. NOTE: only valid when none of those (nor the weights) is written by the
  /// kernel immediately before on the stream (they are uploaded once per step, not produced by the step).
  prefetch = 2,
};

inline std::atomic<int> path_override{static_cast<int>(path::automatic)};
/// NOTE: `on` by default: it orders memory exactly like plain stream order (every kernel waits before its first
/// global access) and saves the launch gap between dependent kernels. `prefetch` has a precondition: opt in.
inline std::atomic<int> pdl_mode{static_cast<int>(pdl::on)};

/// Design switches of the LoRA kernels, a bit mask; the default is the fastest measured. Tests run every
/// combination; the benchmark compares them (LORAPLEX_LORA_VARIANTS=0,26,...). Measured on an H100 (2026-11-21,
/// headline: Llama-2-7B decode step, 32 layers, batch 32, 32 distinct rank-16 adapters on q|k|v and o; prefill:
/// 2048 tokens, 8 adapters, q|k|v rank 16): see each bit.
enum variant_bits : int {
  /// The shrink also prefetches into L2 the Bt rows the expand will read (same table entries), so those bytes
  /// stream while the shrink streams A and the expand starts from L2. Only when they fit a third of L2.
  /// Measured: what the expand gains the shrink loses (step 0.900 → 0.893 ms alone, worse with lean): off.
  xbt = 1,
  /// Fewer loads in flight per thread (shrink 8, expand 8) and a register cap (five blocks per multiprocessor
  /// instead of three), so that blocks of the next launch fit beside the running ones (programmatic dependent
  /// launch can then start them early). Measured: step 0.900 → 0.859 ms (graph, PDL), 0.745 → 0.692 (prefetch).
  lean = 2,
  /// pdl::prefetch: before the wait, weights go to L2 only (bulk prefetch), not into registers. Measured slower
  /// (0.692 → 0.753 ms with lean): off.
  l2_only = 4,
  /// Prefill expand: the old y tile through shared memory (cp.async) instead of registers: twice the blocks
  /// per multiprocessor, so twice the y bytes in flight. Measured: expand 78.9 → 51.9 µs.
  prefill_y_smem = 8,
  /// Decode with pdl::prefetch: each block's weights (the shrink's rank rows of A, the expand's column chunk of
  /// Bt) go into shared memory by bulk copies (the copy engine, one instruction a row, completing on an
  /// mbarrier) before the wait: all bytes in flight at once without registers, so the blocks of the next launch
  /// fit beside the running ones and stream their whole weights while the kernel before runs. Where the chunk
  /// fits 40 KB. Measured: step with prefetch 0.692 → 0.670 ms.
  bulk = 16,
  /// The bulk kernels in every launch mode: slower than the lean register kernels without prefetch (graph, PDL
  /// 0.858 → 0.952 ms): off.
  bulk_always = 32,
  /// Prefill shrink: 8 warps instead of 4 on the same tile (BM 32 and 64): each warp's chain of dependent
  /// instructions, not bytes, bounds it at 3 blocks per multiprocessor. Measured: 26.5 → 24.4 µs.
  prefill_shrink_8warps = 64,
  /// Prefill expand: the shrink values a thread reads prefetched into L1 at the start, so that they do not wait
  /// on L2 after the y tile has landed. Measured: 52.6 → 51.7 µs.
  prefill_s_prefetch = 128,
};
inline constexpr int default_variant = lean | prefill_y_smem | bulk | prefill_shrink_8warps | prefill_s_prefetch;
inline std::atomic<int> variant{default_variant};
inline void set_variant(int v) noexcept { variant.store(v, std::memory_order_relaxed); }
[[nodiscard]] inline int get_variant() noexcept { return variant.load(std::memory_order_relaxed); }

inline void set_path(path p) noexcept { path_override.store(static_cast<int>(p), std::memory_order_relaxed); }
[[nodiscard]] inline path get_path() noexcept { return static_cast<path>(path_override.load(std::memory_order_relaxed)); }
inline void set_pdl(pdl m) noexcept { pdl_mode.store(static_cast<int>(m), std::memory_order_relaxed); }
[[nodiscard]] inline pdl get_pdl() noexcept { return static_cast<pdl>(pdl_mode.load(std::memory_order_relaxed)); }

/// Average segment length from which the automatic choice takes the prefill (tensor-core) kernels.
inline constexpr int prefill_min_avg_segment = 6;

}  // namespace loraplex::kernels::cuda::lora_tuning
