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

inline void set_path(path p) noexcept { path_override.store(static_cast<int>(p), std::memory_order_relaxed); }
[[nodiscard]] inline path get_path() noexcept { return static_cast<path>(path_override.load(std::memory_order_relaxed)); }
inline void set_pdl(pdl m) noexcept { pdl_mode.store(static_cast<int>(m), std::memory_order_relaxed); }
[[nodiscard]] inline pdl get_pdl() noexcept { return static_cast<pdl>(pdl_mode.load(std::memory_order_relaxed)); }

/// Average segment length from which the automatic choice takes the prefill (tensor-core) kernels.
inline constexpr int prefill_min_avg_segment = 6;

}  // namespace loraplex::kernels::cuda::lora_tuning
