#include "engine/scheduler.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace loraplex::engine {

scheduler::scheduler(scheduler_config cfg, block_allocator& pages) : cfg_(cfg), pages_(pages) {
  if (cfg_.max_batch_tokens <= 0 || cfg_.max_running <= 0 || cfg_.max_context <= 0)
    throw std::invalid_argument("scheduler: max_batch_tokens, max_running and max_context must be positive");
}

int scheduler::add(sequence s) {
  if (s.prompt.empty()) throw std::invalid_argument("request '" + s.id + "': empty prompt");
  if (s.max_tokens < 1) throw std::invalid_argument("request '" + s.id + "': max_tokens must be at least 1");
  const int need = static_cast<int>(s.prompt.size()) + s.max_tokens;
  if (need > cfg_.max_context)
    throw std::invalid_argument("request '" + s.id + "': prompt (" + std::to_string(s.prompt.size()) + ") + max_tokens (" +
                                std::to_string(s.max_tokens) + ") exceeds the context limit " + std::to_string(cfg_.max_context));
  if (pages_.pages_for(need) > pages_.num_pages())
    throw std::invalid_argument("request '" + s.id + "': needs " + std::to_string(pages_.pages_for(need)) +
                                " KV pages, the cache has " + std::to_string(pages_.num_pages()));
  s.state = sequence_state::waiting;
  s.finished_by = finish_reason::none;
  s.num_cached = 0;
  s.times_preempted = 0;
  s.output.clear();
  s.block_table.clear();
  seqs_.push_back(std::move(s));
  prompt_logits_done_.push_back(0);
  const int i = static_cast<int>(seqs_.size()) - 1;
  waiting_.push_back(i);
  return i;
}

bool scheduler::has_work() const noexcept { return !running_.empty() || !waiting_.empty(); }

void scheduler::preempt(int i) {
  sequence& s = seqs_[static_cast<std::size_t>(i)];
  pages_.release(s.block_table);
  s.num_cached = 0;
  s.state = sequence_state::waiting;
  ++s.times_preempted;
  ++preemptions_;
  running_.erase(std::find(running_.begin(), running_.end(), i));
  waiting_.insert(std::lower_bound(waiting_.begin(), waiting_.end(), i), i);  // back in arrival order
}

std::vector<std::int32_t> scheduler::logit_offsets_for(const sequence& s, int n, bool sample) const {
  std::vector<std::int32_t> offs;
  if (s.want_prompt_logits) {
    const int prompt = static_cast<int>(s.prompt.size());
    const int done = prompt_logits_done_[static_cast<std::size_t>(&s - seqs_.data())];
    for (int t = 0; t < n; ++t) {
      const int pos = s.num_cached + t;
      if (pos >= done && pos < prompt) offs.push_back(t);
    }
  }
  if (sample && (offs.empty() || offs.back() != n - 1)) offs.push_back(n - 1);
  return offs;
}

std::optional<batch_plan> scheduler::schedule() {
  if (!has_work()) return std::nullopt;
  int budget = cfg_.max_batch_tokens;
  struct pick {
    int seq;
    int n;
  };
  std::vector<pick> picks;

  // 1. Running sequences: decodes (and the rest of chunked prefills), oldest first.
  for (std::size_t k = 0; k < running_.size() && budget > 0;) {
    const int i = running_[k];
    sequence& s = seqs_[static_cast<std::size_t>(i)];
    const int n = std::min(s.total_tokens() - s.num_cached, budget);
    if (!pages_.grow(s.block_table, s.num_cached + n)) {
      // Out of pages: preempt the youngest running sequence (perhaps this one) and retry.
      const int victim = running_.back();
      std::erase_if(picks, [&](const pick& p) { return p.seq == victim; });
      if (victim != i) {
        // Budget spent on the victim comes back.
        budget = cfg_.max_batch_tokens;
        for (const pick& p : picks) budget -= p.n;
      }
      preempt(victim);
      continue;  // victim == i: running_[k] is now the next sequence; otherwise retry this one
    }
    picks.push_back({i, n});
    budget -= n;
    ++k;
  }

  // 2. Waiting sequences in arrival order: start (or restart) their prefill while budget and pages allow.
  while (!waiting_.empty() && budget > 0 && static_cast<int>(running_.size()) < cfg_.max_running) {
    const int i = waiting_.front();
    sequence& s = seqs_[static_cast<std::size_t>(i)];
    const int n = std::min(s.total_tokens() - s.num_cached, budget);
    if (!pages_.grow(s.block_table, s.num_cached + n)) break;  // wait for pages; never preempt for a prefill
    waiting_.erase(waiting_.begin());
    s.state = sequence_state::running;
    running_.insert(std::lower_bound(running_.begin(), running_.end(), i), i);  // arrival order
    picks.push_back({i, n});
    budget -= n;
  }
  if (picks.empty()) throw std::logic_error("scheduler: no sequence could be scheduled although work remains");

  std::vector<plan_request> reqs;
  reqs.reserve(picks.size());
  for (const pick& p : picks) {
    const sequence& s = seqs_[static_cast<std::size_t>(p.seq)];
    plan_request r;
    r.seq = p.seq;
    r.adapter = s.adapter;
    r.context_before = s.num_cached;
    r.block_table = s.block_table;
    r.sample = s.num_cached + p.n == s.total_tokens();
    r.logit_offsets = logit_offsets_for(s, p.n, r.sample);
    reqs.push_back(std::move(r));
  }
  // Token spans point into each sequence's own storage (prompt, or prompt and output after a preemption).
  std::vector<std::vector<std::int32_t>> token_store(picks.size());
  for (std::size_t k = 0; k < picks.size(); ++k) {
    const sequence& s = seqs_[static_cast<std::size_t>(picks[k].seq)];
    for (int t = 0; t < picks[k].n; ++t) token_store[k].push_back(s.token_at(s.num_cached + t));
    reqs[k].tokens = token_store[k];
  }
  return build_batch_plan(reqs, pages_.page_size());
}

void scheduler::complete(const batch_plan& plan, std::span<const std::int32_t> sampled) {
  if (sampled.size() < plan.entries.size()) throw std::invalid_argument("scheduler::complete: too few sampled tokens");
  for (std::size_t k = 0; k < plan.entries.size(); ++k) {
    const plan_entry& e = plan.entries[k];
    sequence& s = seqs_[static_cast<std::size_t>(e.seq)];
    s.num_cached += e.num_rows;
    if (s.want_prompt_logits)
      prompt_logits_done_[static_cast<std::size_t>(e.seq)] =
          std::max(prompt_logits_done_[static_cast<std::size_t>(e.seq)], std::min(s.num_cached, static_cast<int>(s.prompt.size())));
    if (!e.sample) continue;
    const std::int32_t tok = sampled[k];
    s.output.push_back(tok);
    if (std::find(s.stop_tokens.begin(), s.stop_tokens.end(), tok) != s.stop_tokens.end())
      s.finished_by = finish_reason::stop;
    else if (static_cast<int>(s.output.size()) >= s.max_tokens || s.total_tokens() >= cfg_.max_context)
      s.finished_by = finish_reason::length;
    if (s.finished_by != finish_reason::none) {
      s.state = sequence_state::finished;
      pages_.release(s.block_table);
      running_.erase(std::find(running_.begin(), running_.end(), e.seq));
    }
  }
}

}  // namespace loraplex::engine
