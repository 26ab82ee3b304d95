#pragma once
/// Rotary position embedding of q and k (transformers' rotate_half convention: the two halves of each head
/// are the pair), fused with the write of k and v into the paged KV cache.
///
/// Paged KV layout (shared by every backend): per layer, K and V each [num_pages, page_size, num_kv_heads,
/// head_dim]; token t of the batch goes to slot slots[t] = page * page_size + offset.

#include <cstdint>

#include "kernels/dtype.hpp"

namespace loraplex::kernels {

struct rope_kv_write_args {
  void* qkv = nullptr;                    // [num_tokens, ld_qkv] act_type: q | k | v, q and k rotated in place
  int ld_qkv = 0;                         // >= (num_heads + 2 * num_kv_heads) * head_dim
  const std::int32_t* positions = nullptr;  // [num_tokens] absolute position of each token
  const std::int32_t* slots = nullptr;      // [num_tokens] KV slot (page * page_size + offset)
  void* k_cache = nullptr;                // [num_pages, page_size, num_kv_heads, head_dim] kv_type
  void* v_cache = nullptr;                // [num_pages, page_size, num_kv_heads, head_dim] kv_type
  dtype act_type = dtype::f32;
  dtype kv_type = dtype::f32;
  const float* inv_freq = nullptr;  // [head_dim / 2] f32, rope scaling (linear, llama3) already folded in
  float attention_scaling = 1.0f;   // multiplies cos and sin
  int num_tokens = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int page_size = 0;
};

namespace cpu {
void rope_kv_write(const rope_kv_write_args& a);
}

}  // namespace loraplex::kernels
