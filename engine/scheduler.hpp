#pragma once
/// Iteration-level scheduling (continuous batching): each step takes every running decode, then prefill
/// chunks of waiting sequences in arrival order, under a token budget. When the KV pages run out for a
/// decode, the youngest running sequence is preempted (its pages freed, its tokens recomputed later); a
/// preempted request produces exactly the tokens it would have produced anyway (sampling draws depend only
/// on (seed, step)).

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "engine/batch_plan.hpp"
#include "engine/block_allocator.hpp"
#include "engine/sequence.hpp"

namespace loraplex::engine {

struct scheduler_config {
  int max_batch_tokens = 512;  // rows per step (prefill chunks + decodes)
  int max_running = 256;       // sequences holding KV pages at once
  int max_context = 0;         // the model's context limit (prompt + output), > 0
};

class scheduler {
 public:
  scheduler(scheduler_config cfg, block_allocator& pages);

  /// Queues a sequence; returns its index. Throws std::invalid_argument when it can never run (empty prompt,
  /// prompt + max_tokens beyond max_context, or more KV pages than the whole cache).
  int add(sequence s);

  [[nodiscard]] bool has_work() const noexcept;
  /// The next step, or nothing when every sequence has finished.
  [[nodiscard]] std::optional<batch_plan> schedule();
  /// Applies a finished step: `sampled[i]` is the token drawn for plan entry i (read only where sample).
  /// Appends tokens, finishes sequences (stop token, max_tokens, context limit) and frees their pages.
  void complete(const batch_plan& plan, std::span<const std::int32_t> sampled);

  [[nodiscard]] const sequence& at(int i) const { return seqs_.at(static_cast<std::size_t>(i)); }
  [[nodiscard]] int size() const noexcept { return static_cast<int>(seqs_.size()); }
  [[nodiscard]] int num_preemptions() const noexcept { return preemptions_; }

 private:
  void preempt(int i);
  [[nodiscard]] std::vector<std::int32_t> logit_offsets_for(const sequence& s, int n, bool sample) const;

  scheduler_config cfg_;
  block_allocator& pages_;
  std::vector<sequence> seqs_;
  std::vector<int> running_;  // indices, in arrival order
  std::vector<int> waiting_;  // indices, in arrival order
  std::vector<int> prompt_logits_done_;  // per sequence: prompt positions whose logits were already returned
  int preemptions_ = 0;
};

}  // namespace loraplex::engine
