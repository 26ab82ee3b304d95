#include "engine/batch_plan.hpp"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <string>

namespace loraplex::engine {

batch_plan build_batch_plan(std::span<const plan_request> requests, int page_size) {
  if (page_size <= 0) throw std::invalid_argument("build_batch_plan: page_size must be positive");
  batch_plan p;
  p.page_size = page_size;

  // Group by adapter (stable: keeps the caller's order inside a group), base-model rows last.
  std::vector<std::size_t> order(requests.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  auto key = [&](std::size_t i) { return requests[i].adapter < 0 ? INT32_MAX : requests[i].adapter; };
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return key(a) < key(b); });

  for (const auto& r : requests) {
    const int ctx = r.context_before + static_cast<int>(r.tokens.size());
    p.max_blocks_per_seq = std::max(p.max_blocks_per_seq, (ctx + page_size - 1) / page_size);
  }
  p.query_start.push_back(0);
  for (const std::size_t i : order) {
    const plan_request& r = requests[i];
    const int n = static_cast<int>(r.tokens.size());
    if (n == 0) throw std::invalid_argument("build_batch_plan: a sequence with no tokens to compute");
    const int ctx = r.context_before + n;
    if (static_cast<int>(r.block_table.size()) * page_size < ctx)
      throw std::invalid_argument("build_batch_plan: block table of sequence " + std::to_string(r.seq) + " holds " +
                                  std::to_string(r.block_table.size() * static_cast<std::size_t>(page_size)) +
                                  " tokens, needs " + std::to_string(ctx));
    plan_entry e;
    e.seq = r.seq;
    e.adapter = r.adapter;
    e.first_row = p.num_rows();
    e.num_rows = n;
    e.context_before = r.context_before;
    e.logits_begin = static_cast<int>(p.logit_rows.size());
    e.num_logits = static_cast<int>(r.logit_offsets.size());
    e.sample = r.sample;
    if (r.sample && (r.logit_offsets.empty() || r.logit_offsets.back() != n - 1))
      throw std::invalid_argument("build_batch_plan: a sampled sequence must want the logits of its last token");
    for (int t = 0; t < n; ++t) {
      const int pos = r.context_before + t;
      p.tokens.push_back(r.tokens[static_cast<std::size_t>(t)]);
      p.positions.push_back(pos);
      p.slots.push_back(r.block_table[static_cast<std::size_t>(pos / page_size)] * page_size + pos % page_size);
      p.row_adapter.push_back(r.adapter);
    }
    for (std::size_t k = 0; k < r.logit_offsets.size(); ++k) {
      const std::int32_t off = r.logit_offsets[k];
      if (off < 0 || off >= n) throw std::invalid_argument("build_batch_plan: logits offset outside the sequence's tokens");
      if (k > 0 && off <= r.logit_offsets[k - 1]) throw std::invalid_argument("build_batch_plan: logits offsets must increase");
      p.logit_rows.push_back(e.first_row + off);
      p.logit_positions.push_back(r.context_before + off);
    }
    const std::size_t bt0 = p.block_tables.size();
    p.block_tables.resize(bt0 + static_cast<std::size_t>(p.max_blocks_per_seq), 0);
    std::copy_n(r.block_table.begin(), std::min<std::size_t>(r.block_table.size(), p.max_blocks_per_seq),
                p.block_tables.begin() + static_cast<std::ptrdiff_t>(bt0));
    p.query_start.push_back(e.first_row + n);
    p.context_lens.push_back(ctx);
    p.max_query_len = std::max(p.max_query_len, n);
    p.max_context_len = std::max(p.max_context_len, ctx);
    if (r.adapter >= 0) {
      if (!p.segments.empty() && p.segments.back().adapter == r.adapter && p.segments.back().end == e.first_row)
        p.segments.back().end = e.first_row + n;
      else
        p.segments.push_back({e.first_row, e.first_row + n, r.adapter});
    }
    p.entries.push_back(e);
  }
  return p;
}

std::vector<lora_segment> segments_other_than(const batch_plan& plan, int adapter, int as_table_entry) {
  std::vector<lora_segment> out;
  int run_begin = -1;
  for (int r = 0; r <= plan.num_rows(); ++r) {
    const bool other = r < plan.num_rows() && plan.row_adapter[static_cast<std::size_t>(r)] != adapter;
    if (other && run_begin < 0) run_begin = r;
    if (!other && run_begin >= 0) {
      out.push_back({run_begin, r, as_table_entry});
      run_begin = -1;
    }
  }
  return out;
}

}  // namespace loraplex::engine
