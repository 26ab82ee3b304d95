#pragma once
/// Causal attention of a batch of sequences over the paged KV cache (GQA: query head h reads KV head
/// h / (num_heads / num_kv_heads)). Each sequence contributes a run of query tokens (a prefill chunk, or one
/// decode token); its context_len counts every token in the cache, the query tokens included, so query i of a
/// sequence with q_len tokens sits at position context_len - q_len + i and attends to keys 0 .. that position.

#include <cstdint>

#include "kernels/dtype.hpp"

namespace loraplex::kernels {

struct paged_attention_args {
  const void* q = nullptr;  // [num_tokens, ld_q] act_type, head h at columns [h*head_dim, (h+1)*head_dim)
  int ld_q = 0;
  const void* k_cache = nullptr;             // [num_pages, page_size, num_kv_heads, head_dim] kv_type
  const void* v_cache = nullptr;             // [num_pages, page_size, num_kv_heads, head_dim] kv_type
  const std::int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq] page of each block
  const std::int32_t* query_start = nullptr;   // [num_seqs + 1] token range of each sequence in q and out
  const std::int32_t* context_lens = nullptr;  // [num_seqs] tokens in the cache after this step's write
  void* out = nullptr;                        // [num_tokens, num_heads * head_dim] act_type
  dtype act_type = dtype::f32;
  dtype kv_type = dtype::f32;
  int num_seqs = 0;
  int num_tokens = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int page_size = 0;
  int max_blocks_per_seq = 0;
  int max_query_len = 0;    // launch hint: the longest query run in the batch
  int max_context_len = 0;  // launch hint: the longest context in the batch
  float scale = 1.0f;       // usually 1 / sqrt(head_dim)
  void* workspace = nullptr;  // backend scratch (the CUDA op says how much); unused on the CPU
};

namespace cpu {
void paged_attention(const paged_attention_args& a);
}

}  // namespace loraplex::kernels
