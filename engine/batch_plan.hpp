#pragma once
/// The batch plan: what one step of the model computes. Prefill chunks and single-token decodes of many
/// sequences, each with its own adapter or none, laid out so that the rows of one adapter are contiguous:
/// those runs are the LoRA segments (SGMV); row_adapter gives the same mapping per row (BGMV).

#include <cstdint>
#include <span>
#include <vector>

namespace loraplex::engine {

/// One sequence's part of a step, as the scheduler asks for it.
struct plan_request {
  int seq = 0;          // the caller's sequence index, carried through
  int adapter = -1;     // adapter slot, -1 = base model
  std::span<const std::int32_t> tokens;       // the tokens to compute this step (positions context_before …)
  int context_before = 0;                     // tokens already in the KV cache
  std::span<const std::int32_t> block_table;  // pages covering at least context_before + tokens.size()
  std::vector<std::int32_t> logit_offsets;    // offsets into `tokens` whose logits are wanted, increasing
  bool sample = false;                        // the last token's logits draw the next token (it must be the last offset)
};

struct plan_entry {
  int seq = 0;
  int adapter = -1;
  int first_row = 0;       // first row of this sequence in the batch
  int num_rows = 0;
  int context_before = 0;
  int logits_begin = 0;    // first row of this sequence in the logits output
  int num_logits = 0;
  bool sample = false;     // the entry's last logits row is its sampled row
};

struct lora_segment {
  std::int32_t begin = 0;
  std::int32_t end = 0;
  std::int32_t adapter = 0;
};

struct batch_plan {
  std::vector<plan_entry> entries;         // grouped by adapter, base-model rows last
  std::vector<std::int32_t> tokens;        // [num_rows]
  std::vector<std::int32_t> positions;     // [num_rows]
  std::vector<std::int32_t> slots;         // [num_rows] KV slot: page * page_size + offset
  int page_size = 0;
  int max_blocks_per_seq = 0;
  std::vector<std::int32_t> block_tables;  // [entries, max_blocks_per_seq], padded with page 0
  std::vector<std::int32_t> query_start;   // [entries + 1]
  std::vector<std::int32_t> context_lens;  // [entries] tokens in the cache after the step
  std::vector<std::int32_t> logit_rows;    // rows whose logits are computed, in entry order
  std::vector<std::int32_t> logit_positions;  // the position of each logits row
  std::vector<lora_segment> segments;      // runs of rows of one adapter (base-model rows in none)
  std::vector<std::int32_t> row_adapter;   // [num_rows], -1 = none
  int max_query_len = 0;
  int max_context_len = 0;

  [[nodiscard]] int num_rows() const noexcept { return static_cast<int>(tokens.size()); }
  [[nodiscard]] int num_entries() const noexcept { return static_cast<int>(entries.size()); }
};

/// Lays out a step. Throws std::invalid_argument when a block table is too short for its tokens.
[[nodiscard]] batch_plan build_batch_plan(std::span<const plan_request> requests, int page_size);

/// Runs of rows whose adapter is not `adapter` (for merged mode, where every other row must subtract the
/// merged adapter's LoRA). Because rows are grouped by adapter, there are at most two runs.
[[nodiscard]] std::vector<lora_segment> segments_other_than(const batch_plan& plan, int adapter, int as_table_entry);

}  // namespace loraplex::engine
