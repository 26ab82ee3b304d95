#pragma once
// Internal to the paged attention op: the kernel parameters, the decode launch plan (how the context is split
// into partitions), the head_dim switch and the launchers of the two paths (attention_decode.cu,
// attention_prefill.cu).

#include <cstdint>
#include <string>

#include "kernels/cuda/common.cuh"

namespace loraplex::kernels::cuda::detail {

/// Everything a kernel of either path reads; built once by the op from paged_attention_args.
struct attention_params {
  const void* q = nullptr;  // [num_tokens, ld_q] q_type
  dtype q_type = dtype::f32;
  int ld_q = 0;
  const void* k_cache = nullptr;  // [num_pages, page_size, num_kv_heads, head_dim]
  const void* v_cache = nullptr;  // [num_pages, page_size, num_kv_heads, head_dim]
  const std::int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  const std::int32_t* query_start = nullptr;   // [num_seqs + 1]
  const std::int32_t* context_lens = nullptr;  // [num_seqs]
  void* out = nullptr;  // [num_tokens, num_heads * head_dim] out_type
  dtype out_type = dtype::f32;
  int num_heads = 0;
  int num_kv_heads = 0;
  int group = 0;  // num_heads / num_kv_heads
  int page_size = 0;
  int max_blocks_per_seq = 0;
  float scale = 1.0f;
  // decode only
  int heads_per_cta = 0;  // query heads of one KV group that one CTA serves
  int head_chunks = 0;    // CTAs per KV group: ceil(group / heads_per_cta)
  int partition = 0;      // context tokens per CTA
  int num_parts = 0;      // partitions of the longest context
  float* ws_out = nullptr;  // [num_seqs, num_heads, num_parts, head_dim] partial outputs, normalised
  float* ws_max = nullptr;  // [num_seqs, num_heads, num_parts] score max of each partition
  float* ws_sum = nullptr;  // [num_seqs, num_heads, num_parts] sum of exp(score - max) of each partition
};

/// How the decode path splits its work; a pure function of the arguments and the device's SM count.
struct decode_plan {
  int heads_per_cta = 1;
  int head_chunks = 1;
  int group_tile = 1;  // heads_per_cta rounded up to 1, 2, 4 or 8 (a compile-time register tile)
  int partition = 0;
  int num_parts = 0;
  bool mma = false;  // the tensor-core kernel (16-bit K/V of the activation type, group tile 4 or 8)
};

constexpr int decode_max_group_tile = 8;
constexpr int decode_min_partition = 64;
constexpr int decode_max_partition = 512;
// The tensor-core kernel keeps 2 tiles of every warp in flight, so it needs fewer, longer partitions: it aims at
// one CTA per resident slot (2 per SM) and splits a context only where the (sequence, KV head) pairs are too few.
constexpr int decode_mma_max_partition = 2048;
constexpr int decode_mma_ctas_per_sm = 2;

/// CTAs the decode path aims for: enough for a few waves on the device, so short batches split the context.
int decode_target_ctas();

/// `mma_types`: the K/V cache is bf16 or f16 and the query has the same type (the tensor-core kernel rounds the
/// query and the softmax weights to that type, so it serves only those cases).
decode_plan make_decode_plan(int num_seqs, int num_heads, int num_kv_heads, int max_context_len, bool mma_types);

/// Launchers; head_dim is already known to be 32, 64 or 128.
void launch_decode(const attention_params& p, const decode_plan& plan, dtype kv_type, int head_dim, int num_seqs,
                   cudaStream_t stream);
void launch_prefill(const attention_params& p, dtype kv_type, int head_dim, int num_seqs, int max_query_len,
                    cudaStream_t stream);

}  // namespace loraplex::kernels::cuda::detail

/// Calls BODY with `constexpr int D` = head_dim for the supported sizes; others are an invalid_argument.
#define LORAPLEX_DISPATCH_HEAD_DIM(hd, op, ...)                                                            \
  [&] {                                                                                                    \
    switch (hd) {                                                                                          \
      case 32: { constexpr int D = 32; return __VA_ARGS__(); }                                             \
      case 64: { constexpr int D = 64; return __VA_ARGS__(); }                                             \
      case 128: { constexpr int D = 128; return __VA_ARGS__(); }                                           \
    }                                                                                                      \
    throw std::invalid_argument(std::string(op) + ": Unsupported head_dim: " + std::to_string(hd));       \
  }()
