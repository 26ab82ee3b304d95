// The paged attention op: checks the arguments, then runs the decode path (every sequence has one query token:
// split-K over the context, memory-bound) or the prefill path (flash-attention tiles over queries and keys,
// causal, which also takes sequences of one token mixed in).

#include <algorithm>
#include <cstddef>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/detail/attention.cuh"
#include "kernels/cuda/detail/check.hpp"
#include "kernels/cuda/detail/vec.cuh"
#include "kernels/cuda/ops.hpp"

namespace loraplex::kernels::cuda {

namespace detail {

int decode_target_ctas() {
  int dev = 0;
  int sms = 0;
  LORAPLEX_CUDA_CHECK(cudaGetDevice(&dev));
  LORAPLEX_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return 4 * sms;
}

decode_plan make_decode_plan(int num_seqs, int num_heads, int num_kv_heads, int max_context_len, bool mma_types) {
  decode_plan plan;
  const int group = num_heads / num_kv_heads;
  plan.head_chunks = (group + decode_max_group_tile - 1) / decode_max_group_tile;
  plan.heads_per_cta = (group + plan.head_chunks - 1) / plan.head_chunks;
  plan.group_tile = plan.heads_per_cta <= 1 ? 1 : plan.heads_per_cta <= 2 ? 2 : plan.heads_per_cta <= 4 ? 4 : 8;
  const long long base = static_cast<long long>(std::max(num_seqs, 1)) * num_kv_heads * plan.head_chunks;
  plan.mma = mma_types && plan.group_tile >= 4;
  if (plan.mma) {
    // One CTA per resident slot, rounded to the nearest whole number of splits (so a batch just under or over
    // one wave is not split into two); never more than decode_target_ctas() CTAs in all, which keeps the
    // workspace bound of paged_attention_workspace_bytes.
    const long long target = std::min<long long>(decode_target_ctas(), decode_target_ctas() / 4 * decode_mma_ctas_per_sm);
    const long long splits = std::max<long long>(1, (2 * target + base) / (2 * base));
    const int ctx = std::max(max_context_len, 1);
    long long part = (ctx + splits - 1) / splits;
    part = (part + 63) / 64 * 64;
    part = std::clamp<long long>(part, decode_min_partition, decode_mma_max_partition);
    plan.partition = static_cast<int>(part);
    plan.num_parts = (ctx + plan.partition - 1) / plan.partition;
    return plan;
  }
  const long long splits = std::max<long long>(1, (decode_target_ctas() + base - 1) / base);
  const int ctx = std::max(max_context_len, 1);
  long long part = (ctx + splits - 1) / splits;
  part = (part + 31) / 32 * 32;
  part = std::clamp<long long>(part, decode_min_partition, decode_max_partition);
  plan.partition = static_cast<int>(part);
  plan.num_parts = (ctx + plan.partition - 1) / plan.partition;
  return plan;
}

}  // namespace detail

namespace {

void check_args(const paged_attention_args& a) {
  constexpr const char* op = "paged_attention";
  detail::require_nonneg(a.num_seqs, op, "num_seqs");
  detail::require(a.num_seqs <= 65535, op, "num_seqs = " + std::to_string(a.num_seqs) + " exceeds 65535 (a grid dimension)");
  detail::require_nonneg(a.num_tokens, op, "num_tokens");
  detail::require_nonneg(a.max_query_len, op, "max_query_len");
  detail::require_nonneg(a.max_context_len, op, "max_context_len");
  detail::require(a.num_heads > 0, op, "num_heads = " + std::to_string(a.num_heads) + " must be positive");
  detail::require(a.num_kv_heads > 0 && a.num_heads % a.num_kv_heads == 0, op,
                  "num_kv_heads = " + std::to_string(a.num_kv_heads) + " must divide num_heads = " +
                      std::to_string(a.num_heads));
  detail::require(a.page_size > 0, op, "page_size = " + std::to_string(a.page_size) + " must be positive");
  detail::require(a.max_blocks_per_seq > 0, op,
                  "max_blocks_per_seq = " + std::to_string(a.max_blocks_per_seq) + " must be positive");
  detail::require(a.head_dim == 32 || a.head_dim == 64 || a.head_dim == 128, op,
                  "Unsupported head_dim: " + std::to_string(a.head_dim));
  detail::require(a.ld_q >= a.num_heads * a.head_dim, op,
                  "ld_q = " + std::to_string(a.ld_q) + " is below num_heads * head_dim = " +
                      std::to_string(a.num_heads * a.head_dim));
  detail::require(static_cast<long long>(a.max_context_len) <= static_cast<long long>(a.max_blocks_per_seq) * a.page_size,
                  op, "max_context_len = " + std::to_string(a.max_context_len) + " exceeds max_blocks_per_seq * page_size");
}

}  // namespace

std::size_t paged_attention_workspace_bytes(const paged_attention_args& a) {
  check_args(a);
  // NOTE: a bound that grows with num_seqs and max_context_len only (never with max_query_len), so a workspace
  // sized for the largest batch serves every smaller one, e.g. inside a captured graph. The plan splits each
  // context into at most max(ceil(target / base), ceil(ctx / max_partition)) parts, base = seqs * kv heads *
  // head chunks; summed over the sequences that is at most target / (kv heads * chunks) + seqs * (1 + ctx / 512).
  const int group = a.num_heads / a.num_kv_heads;
  const long long chunks = (group + detail::decode_max_group_tile - 1) / detail::decode_max_group_tile;
  const long long seqs = std::max(a.num_seqs, 1);
  const long long ctx = std::max(a.max_context_len, 1);
  const long long seq_parts = detail::decode_target_ctas() / (a.num_kv_heads * chunks) + 1 +
                              seqs * (1 + (ctx + detail::decode_max_partition - 1) / detail::decode_max_partition);
  const long long floats = seq_parts * a.num_heads * (a.head_dim + 2);
  return static_cast<std::size_t>(floats) * sizeof(float) + 256;  // + 256: room to align the three arrays
}

void paged_attention(const paged_attention_args& a, stream_t stream) {
  constexpr const char* op = "paged_attention";
  check_args(a);
  if (a.num_seqs == 0 || a.num_tokens == 0 || a.max_query_len == 0) return;
  detail::require_ptr(a.q, op, "q");
  detail::require_ptr(a.k_cache, op, "k_cache");
  detail::require_ptr(a.v_cache, op, "v_cache");
  detail::require_ptr(a.block_tables, op, "block_tables");
  detail::require_ptr(a.query_start, op, "query_start");
  detail::require_ptr(a.context_lens, op, "context_lens");
  detail::require_ptr(a.out, op, "out");
  detail::require(detail::aligned_to(a.k_cache, 16) && detail::aligned_to(a.v_cache, 16), op,
                  "k_cache and v_cache must be 16-byte aligned");
  detail::require(a.max_context_len >= a.max_query_len, op,
                  "max_context_len = " + std::to_string(a.max_context_len) + " is below max_query_len = " +
                      std::to_string(a.max_query_len));

  detail::attention_params p;
  p.q = a.q;
  p.q_type = a.act_type;
  p.ld_q = a.ld_q;
  p.k_cache = a.k_cache;
  p.v_cache = a.v_cache;
  p.block_tables = a.block_tables;
  p.query_start = a.query_start;
  p.context_lens = a.context_lens;
  p.out = a.out;
  p.out_type = a.act_type;
  p.num_heads = a.num_heads;
  p.num_kv_heads = a.num_kv_heads;
  p.group = a.num_heads / a.num_kv_heads;
  p.page_size = a.page_size;
  p.max_blocks_per_seq = a.max_blocks_per_seq;
  p.scale = a.scale;

  if (a.max_query_len == 1) {
    const bool mma_types = a.kv_type == a.act_type && (a.kv_type == dtype::bf16 || a.kv_type == dtype::f16);
    const detail::decode_plan plan =
        detail::make_decode_plan(a.num_seqs, a.num_heads, a.num_kv_heads, a.max_context_len, mma_types);
    p.heads_per_cta = plan.heads_per_cta;
    p.head_chunks = plan.head_chunks;
    p.partition = plan.partition;
    p.num_parts = plan.num_parts;
    if (plan.num_parts > 1) {
      detail::require_ptr(a.workspace, op, "workspace (the decode path splits the context)");
      const std::size_t rows = static_cast<std::size_t>(a.num_seqs) * a.num_heads * plan.num_parts;
      char* ws = static_cast<char*>(a.workspace);
      const auto align = [](std::size_t b) { return (b + 255) / 256 * 256; };
      p.ws_out = reinterpret_cast<float*>(ws);
      p.ws_max = reinterpret_cast<float*>(ws + align(rows * a.head_dim * sizeof(float)));
      p.ws_sum = p.ws_max + rows;
      detail::require(detail::aligned_to(a.workspace, 16), op, "workspace must be 16-byte aligned");
    }
    detail::launch_decode(p, plan, a.kv_type, a.head_dim, a.num_seqs, stream);
  } else {
    detail::launch_prefill(p, a.kv_type, a.head_dim, a.num_seqs, a.max_query_len, stream);
  }
  LORAPLEX_CHECK_LAUNCH(op);
}

}  // namespace loraplex::kernels::cuda
