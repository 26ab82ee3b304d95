#pragma once
/// Offline batch inference: every request of a file runs through the scheduler and the model runner as mixed
/// batches (many sequences, many adapters per step), never one request at a time.

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/scheduler.hpp"
#include "gpu/model_runner.hpp"
#include "tools/loraplex_run/request_file.hpp"

namespace loraplex::tools {

struct offline_result {
  std::string id;
  std::vector<std::int32_t> tokens;
  engine::finish_reason finish = engine::finish_reason::none;
  std::vector<float> prefill_logits;  // [prompt_len, vocab] when logits were asked for
  std::vector<float> decode_logits;   // [tokens.size(), vocab]: row k chose token k
};

struct offline_stats {
  int steps = 0;
  long long rows = 0;
  int max_rows_in_step = 0;
  int max_adapters_in_step = 0;
  int preemptions = 0;
};

struct offline_options {
  bool want_logits = false;
  bool merged = false;  // serve each adapter's requests with that adapter merged, one adapter at a time
  engine::scheduler_config scheduler;
};

/// `slots` maps adapter names to the runner's slots. Results come back in request order.
[[nodiscard]] std::vector<offline_result> run_offline(gpu::model_runner& runner, const std::vector<offline_request>& requests,
                                                      const std::map<std::string, int>& slots, const offline_options& opts,
                                                      offline_stats* stats = nullptr);

/// KV pages to give the runner: enough for every request at once, capped by `budget_pages` but never fewer
/// than the largest single request needs.
[[nodiscard]] int kv_pages_for(const std::vector<offline_request>& requests, int page_size, int budget_pages);

}  // namespace loraplex::tools
