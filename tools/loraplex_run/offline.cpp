#include "tools/loraplex_run/offline.hpp"

#include <algorithm>
#include <set>

namespace loraplex::tools {

namespace {

void run_group(gpu::model_runner& runner, const std::vector<offline_request>& requests, const std::vector<std::size_t>& group,
               const std::map<std::string, int>& slots, const offline_options& opts, std::vector<offline_result>& results,
               offline_stats& stats) {
  const auto& ro = runner.options();
  engine::block_allocator pages(ro.num_pages, ro.page_size);
  engine::scheduler_config sc = opts.scheduler;
  sc.max_batch_tokens = std::min(sc.max_batch_tokens, ro.max_batch_tokens);
  engine::scheduler sched(sc, pages);
  const int vocab = runner.config().vocab_size;
  std::vector<std::size_t> req_of;  // scheduler index → request index
  for (const std::size_t i : group) {
    const offline_request& r = requests[i];
    engine::sequence s;
    s.id = r.id;
    s.adapter = r.adapter ? slots.at(*r.adapter) : -1;
    s.prompt = r.prompt;
    s.max_tokens = r.max_tokens;
    s.stop_tokens = r.stop;
    s.sampling = r.sampling;
    s.want_prompt_logits = opts.want_logits;
    sched.add(std::move(s));
    req_of.push_back(i);
    if (opts.want_logits) results[i].prefill_logits.assign(r.prompt.size() * static_cast<std::size_t>(vocab), 0.0f);
  }
  while (auto plan = sched.schedule()) {
    std::vector<engine::sampling_options> sampling;
    std::vector<std::int32_t> draw;
    std::set<int> adapters;
    for (const auto& e : plan->entries) {
      const engine::sequence& s = sched.at(e.seq);
      sampling.push_back(s.sampling);
      draw.push_back(static_cast<std::int32_t>(s.output.size()));
      adapters.insert(e.adapter);
    }
    // Logits rows are limited per step: the scheduler's batch never exceeds max_batch_tokens rows and the
    // runner was sized with max_logit_rows >= max_batch_tokens when logits are wanted.
    const gpu::model_runner::step_result res = runner.step(*plan, sampling, draw, opts.want_logits);
    ++stats.steps;
    stats.rows += plan->num_rows();
    stats.max_rows_in_step = std::max(stats.max_rows_in_step, plan->num_rows());
    stats.max_adapters_in_step = std::max(stats.max_adapters_in_step, static_cast<int>(adapters.size()));
    if (opts.want_logits) {
      for (std::size_t k = 0; k < plan->entries.size(); ++k) {
        const auto& e = plan->entries[k];
        const engine::sequence& s = sched.at(e.seq);
        offline_result& out = results[req_of[static_cast<std::size_t>(e.seq)]];
        const int prompt = static_cast<int>(s.prompt.size());
        for (int j = 0; j < e.num_logits; ++j) {
          const std::size_t row = static_cast<std::size_t>(e.logits_begin + j);
          const int pos = plan->logit_positions[row];
          const float* src = res.logits.data() + row * static_cast<std::size_t>(vocab);
          if (pos < prompt) std::copy_n(src, vocab, out.prefill_logits.data() + static_cast<std::size_t>(pos) * vocab);
          if (e.sample && j == e.num_logits - 1) out.decode_logits.insert(out.decode_logits.end(), src, src + vocab);
        }
      }
    }
    sched.complete(*plan, res.sampled);
  }
  stats.preemptions += sched.num_preemptions();
  for (int k = 0; k < sched.size(); ++k) {
    const engine::sequence& s = sched.at(k);
    offline_result& out = results[req_of[static_cast<std::size_t>(k)]];
    out.tokens = s.output;
    out.finish = s.finished_by;
  }
}

}  // namespace

std::vector<offline_result> run_offline(gpu::model_runner& runner, const std::vector<offline_request>& requests,
                                        const std::map<std::string, int>& slots, const offline_options& opts,
                                        offline_stats* stats) {
  std::vector<offline_result> results(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) results[i].id = requests[i].id;
  offline_stats local;
  if (!opts.merged) {
    std::vector<std::size_t> all(requests.size());
    for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
    run_group(runner, requests, all, slots, opts, results, local);
  } else {
    // Base-model requests first with nothing merged, then one adapter at a time, merged.
    std::map<std::string, std::vector<std::size_t>> by_adapter;
    std::vector<std::size_t> base;
    for (std::size_t i = 0; i < requests.size(); ++i) {
      if (requests[i].adapter)
        by_adapter[*requests[i].adapter].push_back(i);
      else
        base.push_back(i);
    }
    if (!base.empty()) run_group(runner, requests, base, slots, opts, results, local);
    for (const auto& [name, group] : by_adapter) {
      runner.merge(slots.at(name));
      try {
        run_group(runner, requests, group, slots, opts, results, local);
      } catch (...) {
        runner.unmerge();
        throw;
      }
      runner.unmerge();
    }
  }
  if (stats != nullptr) *stats = local;
  return results;
}

int kv_pages_for(const std::vector<offline_request>& requests, int page_size, int budget_pages) {
  long long total = 0;
  int largest = 1;
  for (const auto& r : requests) {
    const int pages = (static_cast<int>(r.prompt.size()) + r.max_tokens + page_size - 1) / page_size;
    total += pages;
    largest = std::max(largest, pages);
  }
  return static_cast<int>(std::max<long long>(largest, std::min<long long>(total, budget_pages)));
}

}  // namespace loraplex::tools
