#pragma once
/// Batched LoRA over many adapters of different ranks in one call (Punica's shrink/expand split, S-LoRA's
/// heterogeneous ranks without padding).
///
///   shrink:  s[j][t][0:r] = x[t] · A_{a,j}ᵀ            for each token t of a segment with adapter a, slice j
///   expand:  y[t][off_j : off_j + w_j] += s[j][t][0:r] · Bt_{a,j}
///
/// A module group (q|k|v, gate|up, o, down) has up to three output slices of different widths. The adapter
/// table holds one entry per (adapter, slice): pointers to that adapter's matrices for this layer and module,
/// and its rank; rank 0 (null pointers) means the adapter does not target that slice. Scaling (alpha/r or
/// alpha/sqrt(r), per module) is folded into Bt at load. Bt is Bᵀ: [rank, width], so each rank row is one
/// contiguous vector (the unit a page of the unified pool holds). Each matrix is contiguous in its rows with a
/// leading dimension; no gather copy, no padding to a maximum rank. Tokens with no adapter are in no segment
/// and cost nothing.

#include <cstddef>
#include <cstdint>

#include "kernels/dtype.hpp"

namespace loraplex::kernels {

inline constexpr int max_lora_slices = 3;

struct lora_args {
  int num_tokens = 0;
  int in_features = 0;
  const void* x = nullptr;  // [num_tokens, ldx] act_type
  int ldx = 0;
  void* y = nullptr;  // [num_tokens, ldy] act_type; expand adds into slice columns
  int ldy = 0;
  dtype act_type = dtype::f32;
  dtype weight_type = dtype::f32;

  int num_slices = 1;
  int slice_offset[max_lora_slices] = {0, 0, 0};  // first column of slice j in y
  int slice_width[max_lora_slices] = {0, 0, 0};   // output features of slice j

  int num_adapters = 0;
  const void* const* a_ptrs = nullptr;   // [num_adapters * num_slices] A: [rank, lda] weight_type
  const void* const* bt_ptrs = nullptr;  // [num_adapters * num_slices] Bt: [rank, ldb] weight_type
  const std::int32_t* ranks = nullptr;   // [num_adapters * num_slices], 0 = slice not targeted
  const std::int32_t* lda = nullptr;     // [num_adapters * num_slices] row stride of A (>= in_features)
  const std::int32_t* ldb = nullptr;     // [num_adapters * num_slices] row stride of Bt (>= slice width)
  int max_rank = 0;                      // the largest rank in the table (sizes the shrink buffer)

  int num_segments = 0;
  const std::int32_t* seg_begin = nullptr;    // [num_segments] first token
  const std::int32_t* seg_end = nullptr;      // [num_segments] one past the last token
  const std::int32_t* seg_adapter = nullptr;  // [num_segments] entry in the adapter table
  const std::int32_t* row_adapter = nullptr;  // [num_tokens] the same mapping per token, -1 = no adapter

  float* shrink_out = nullptr;  // [num_slices, num_tokens, max_rank] f32, written by shrink, read by expand
};

/// Bytes of the f32 shrink buffer a call needs.
[[nodiscard]] constexpr std::size_t lora_shrink_buffer_bytes(int num_slices, int num_tokens, int max_rank) {
  return static_cast<std::size_t>(num_slices) * static_cast<std::size_t>(num_tokens) *
         static_cast<std::size_t>(max_rank) * sizeof(float);
}

namespace cpu {
/// Reference: x and y f32; weights f32, bf16 or f16; f32 compute.
void lora_shrink(const lora_args& a);
void lora_expand(const lora_args& a);
}  // namespace cpu

}  // namespace loraplex::kernels
