#define BOOST_TEST_MODULE test_engine
#include <boost/test/unit_test.hpp>

// The engine without a model: page allocation, batch plans checked against an independent layout, and the
// scheduler driven by a fake sampler (the token drawn at position p is 100 + p % 7), so every sequence's
// expected output is known in advance, preempted or not.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/batch_plan.hpp"
#include "engine/block_allocator.hpp"
#include "engine/scheduler.hpp"
#include "engine/sequence.hpp"

using namespace loraplex::engine;

namespace {

[[nodiscard]] std::mt19937 make_rng(const std::string& name) {
  static const unsigned seed = [] {
    if (const char* e = std::getenv("LORAPLEX_TEST_SEED")) return static_cast<unsigned>(std::strtoul(e, nullptr, 10));
    return static_cast<unsigned>(std::random_device{}());
  }();
  std::uint32_t h = 2166136261u;
  for (const char c : name) h = (h ^ static_cast<unsigned char>(c)) * 16777619u;
  BOOST_TEST_MESSAGE(name << ": LORAPLEX_TEST_SEED=" << seed);
  return std::mt19937(seed ^ h);
}
[[nodiscard]] int uniform_int(std::mt19937& rng, int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }

template <class F>
void check_invalid(const std::string& label, F&& f, const std::string& part) {
  try {
    f();
    BOOST_ERROR(label << ": no exception");
  } catch (const std::invalid_argument& e) {
    BOOST_CHECK_MESSAGE(std::string(e.what()).find(part) != std::string::npos, label << ": \"" << e.what() << "\" lacks \"" << part << "\"");
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(block_allocator_grows_all_or_nothing_and_catches_double_release) {
  BOOST_CHECK_THROW(block_allocator(0, 4), std::invalid_argument);
  BOOST_CHECK_THROW(block_allocator(4, 0), std::invalid_argument);
  block_allocator alloc(5, 4);
  BOOST_CHECK_EQUAL(alloc.pages_for(0), 0);
  BOOST_CHECK_EQUAL(alloc.pages_for(1), 1);
  BOOST_CHECK_EQUAL(alloc.pages_for(4), 1);
  BOOST_CHECK_EQUAL(alloc.pages_for(5), 2);
  BOOST_CHECK_EQUAL(alloc.num_free(), 5);

  std::vector<std::int32_t> a, b;
  BOOST_CHECK(alloc.grow(a, 9));
  BOOST_CHECK_EQUAL(a.size(), 3u);
  BOOST_CHECK_EQUAL(alloc.num_free(), 2);
  BOOST_CHECK(!alloc.grow(b, 13));  // needs 4, 2 free: nothing taken
  BOOST_CHECK(b.empty());
  BOOST_CHECK_EQUAL(alloc.num_free(), 2);
  b.push_back(-7);  // a failed grow leaves an existing table as it was
  const std::vector<std::int32_t> before = b;
  BOOST_CHECK(!alloc.grow(b, 16));
  BOOST_CHECK(b == before);
  b.clear();
  BOOST_CHECK(alloc.grow(a, 12));  // already covered
  BOOST_CHECK_EQUAL(a.size(), 3u);
  BOOST_CHECK(alloc.grow(a, 13));
  BOOST_CHECK(alloc.grow(b, 4));
  BOOST_CHECK_EQUAL(alloc.num_free(), 0);
  std::set<std::int32_t> all(a.begin(), a.end());
  all.insert(b.begin(), b.end());
  BOOST_CHECK_EQUAL(all.size(), 5u);  // distinct pages, all in range
  BOOST_CHECK(*all.begin() == 0 && *all.rbegin() == 4);

  const std::vector<std::int32_t> a_copy = a;
  alloc.release(a);
  BOOST_CHECK(a.empty());
  BOOST_CHECK_EQUAL(alloc.num_free(), 4);
  std::vector<std::int32_t> again = a_copy;
  BOOST_CHECK_THROW(alloc.release(again), std::logic_error);
  std::vector<std::int32_t> bogus = {5};
  BOOST_CHECK_THROW(alloc.release(bogus), std::logic_error);
  std::vector<std::int32_t> c;
  BOOST_CHECK(alloc.grow(c, 16));  // the released pages are usable again
  BOOST_CHECK_EQUAL(alloc.num_free(), 0);
  alloc.release(c);
  alloc.release(b);
  BOOST_CHECK_EQUAL(alloc.num_free(), 5);
}

// ---------------------------------------------------------------------------------------------------------
// Batch plans.

namespace {

/// Owns the storage a plan_request's spans point into.
struct request_store {
  std::vector<std::vector<std::int32_t>> tokens, tables;
  std::vector<plan_request> reqs;
  void add(int seq, int adapter, std::vector<std::int32_t> toks, int context_before, std::vector<std::int32_t> table,
           std::vector<std::int32_t> logit_offsets, bool sample) {
    tokens.reserve(64);
    tables.reserve(64);
    BOOST_REQUIRE(tokens.size() < 64);
    tokens.push_back(std::move(toks));
    tables.push_back(std::move(table));
    plan_request r;
    r.seq = seq, r.adapter = adapter, r.tokens = tokens.back(), r.context_before = context_before;
    r.block_table = tables.back(), r.logit_offsets = std::move(logit_offsets), r.sample = sample;
    reqs.push_back(std::move(r));
  }
};

/// Checks a plan against a layout computed here: adapters ascending, each in the caller's order, base last.
void check_plan(const std::vector<plan_request>& reqs, int page_size, const batch_plan& p) {
  std::set<int> adapters;
  for (const auto& r : reqs)
    if (r.adapter >= 0) adapters.insert(r.adapter);
  std::vector<int> order;
  for (const int ad : adapters)
    for (std::size_t i = 0; i < reqs.size(); ++i)
      if (reqs[i].adapter == ad) order.push_back(static_cast<int>(i));
  for (std::size_t i = 0; i < reqs.size(); ++i)
    if (reqs[i].adapter < 0) order.push_back(static_cast<int>(i));

  int max_blocks = 0;
  for (const auto& r : reqs) max_blocks = std::max(max_blocks, (r.context_before + static_cast<int>(r.tokens.size()) + page_size - 1) / page_size);
  BOOST_REQUIRE_EQUAL(p.num_entries(), static_cast<int>(reqs.size()));
  BOOST_CHECK_EQUAL(p.page_size, page_size);
  BOOST_CHECK_EQUAL(p.max_blocks_per_seq, max_blocks);
  BOOST_REQUIRE_EQUAL(p.query_start.size(), reqs.size() + 1);
  BOOST_CHECK_EQUAL(p.query_start[0], 0);

  int row = 0, logits = 0, max_q = 0, max_ctx = 0;
  std::vector<lora_segment> segs;
  for (std::size_t k = 0; k < order.size(); ++k) {
    const plan_request& r = reqs[static_cast<std::size_t>(order[k])];
    const plan_entry& e = p.entries[k];
    const int n = static_cast<int>(r.tokens.size()), ctx = r.context_before + n;
    BOOST_CHECK_EQUAL(e.seq, r.seq);
    BOOST_CHECK_EQUAL(e.adapter, r.adapter);
    BOOST_CHECK_EQUAL(e.first_row, row);
    BOOST_CHECK_EQUAL(e.num_rows, n);
    BOOST_CHECK_EQUAL(e.context_before, r.context_before);
    BOOST_CHECK_EQUAL(e.logits_begin, logits);
    BOOST_CHECK_EQUAL(e.num_logits, static_cast<int>(r.logit_offsets.size()));
    BOOST_CHECK_EQUAL(e.sample, r.sample);
    for (int t = 0; t < n; ++t) {
      const int pos = r.context_before + t;
      BOOST_CHECK_EQUAL(p.tokens.at(row + t), r.tokens[t]);
      BOOST_CHECK_EQUAL(p.positions.at(row + t), pos);
      BOOST_CHECK_EQUAL(p.slots.at(row + t), r.block_table[pos / page_size] * page_size + pos % page_size);
      BOOST_CHECK_EQUAL(p.row_adapter.at(row + t), r.adapter);
    }
    for (const std::int32_t off : r.logit_offsets) {
      BOOST_CHECK_EQUAL(p.logit_rows.at(logits), row + off);
      BOOST_CHECK_EQUAL(p.logit_positions.at(logits), r.context_before + off);
      ++logits;
    }
    for (int b = 0; b < max_blocks; ++b)
      BOOST_CHECK_EQUAL(p.block_tables.at(k * max_blocks + b), b < static_cast<int>(r.block_table.size()) ? r.block_table[b] : 0);
    BOOST_CHECK_EQUAL(p.query_start.at(k + 1), row + n);
    BOOST_CHECK_EQUAL(p.context_lens.at(k), ctx);
    if (r.adapter >= 0) {
      if (!segs.empty() && segs.back().adapter == r.adapter) segs.back().end = row + n;
      else segs.push_back({row, row + n, r.adapter});
    }
    row += n;
    max_q = std::max(max_q, n);
    max_ctx = std::max(max_ctx, ctx);
  }
  BOOST_CHECK_EQUAL(p.num_rows(), row);
  BOOST_CHECK_EQUAL(p.positions.size(), static_cast<std::size_t>(row));
  BOOST_CHECK_EQUAL(p.slots.size(), static_cast<std::size_t>(row));
  BOOST_CHECK_EQUAL(p.row_adapter.size(), static_cast<std::size_t>(row));
  BOOST_CHECK_EQUAL(p.logit_rows.size(), static_cast<std::size_t>(logits));
  BOOST_CHECK_EQUAL(p.logit_positions.size(), static_cast<std::size_t>(logits));
  BOOST_CHECK_EQUAL(p.block_tables.size(), reqs.size() * static_cast<std::size_t>(max_blocks));
  BOOST_CHECK_EQUAL(p.context_lens.size(), reqs.size());
  BOOST_CHECK_EQUAL(p.max_query_len, max_q);
  BOOST_CHECK_EQUAL(p.max_context_len, max_ctx);
  BOOST_REQUIRE_EQUAL(p.segments.size(), segs.size());  // one run per adapter: rows are grouped
  for (std::size_t i = 0; i < segs.size(); ++i) {
    BOOST_CHECK_EQUAL(p.segments[i].begin, segs[i].begin);
    BOOST_CHECK_EQUAL(p.segments[i].end, segs[i].end);
    BOOST_CHECK_EQUAL(p.segments[i].adapter, segs[i].adapter);
  }
}

/// Runs of rows whose adapter differs from `adapter`, straight from row_adapter.
[[nodiscard]] std::vector<std::pair<int, int>> ref_other_runs(const batch_plan& p, int adapter) {
  std::vector<std::pair<int, int>> runs;
  for (int r = 0; r < p.num_rows(); ++r) {
    if (p.row_adapter[r] == adapter) continue;
    if (!runs.empty() && runs.back().second == r) ++runs.back().second;
    else runs.push_back({r, r + 1});
  }
  return runs;
}

void check_other_than(const batch_plan& p, int adapter) {
  const auto got = segments_other_than(p, adapter, 17);
  const auto want = ref_other_runs(p, adapter);
  BOOST_REQUIRE_EQUAL(got.size(), want.size());
  BOOST_CHECK_LE(got.size(), 2u);
  for (std::size_t i = 0; i < got.size(); ++i) {
    BOOST_CHECK_EQUAL(got[i].begin, want[i].first);
    BOOST_CHECK_EQUAL(got[i].end, want[i].second);
    BOOST_CHECK_EQUAL(got[i].adapter, 17);
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(batch_plan_groups_by_adapter_and_maps_slots) {
  request_store s;
  s.add(10, 2, {11, 12, 13}, 5, {7, 3}, {2}, true);               // prefill chunk after context, adapter 2
  s.add(11, -1, {21}, 9, {1, 4, 6}, {0}, true);                   // base decode
  s.add(12, 0, {31, 32, 33, 34}, 0, {5}, {}, false);              // first chunk of a prompt: no logits
  s.add(13, 2, {41}, 3, {2}, {0}, true);                          // decode, adapter 2
  s.add(14, 0, {51, 52, 53}, 0, {8}, {0, 1, 2}, true);            // prompt logits + sample
  const batch_plan p = build_batch_plan(s.reqs, 4);
  check_plan(s.reqs, 4, p);
  // The same layout, written out.
  std::vector<int> seqs;
  for (const auto& e : p.entries) seqs.push_back(e.seq);
  BOOST_CHECK((seqs == std::vector<int>{12, 14, 10, 13, 11}));
  BOOST_CHECK((p.query_start == std::vector<std::int32_t>{0, 4, 7, 10, 11, 12}));
  BOOST_CHECK((p.context_lens == std::vector<std::int32_t>{4, 3, 8, 4, 10}));
  BOOST_CHECK((p.positions == std::vector<std::int32_t>{0, 1, 2, 3, 0, 1, 2, 5, 6, 7, 3, 9}));
  // slot = page * 4 + pos % 4: seq 10 at positions 5..7 lives in its second page (3).
  BOOST_CHECK((p.slots == std::vector<std::int32_t>{20, 21, 22, 23, 32, 33, 34, 13, 14, 15, 11, 25}));
  BOOST_CHECK((p.logit_rows == std::vector<std::int32_t>{4, 5, 6, 9, 10, 11}));
  BOOST_CHECK((p.logit_positions == std::vector<std::int32_t>{0, 1, 2, 7, 3, 9}));
  BOOST_CHECK((p.row_adapter == std::vector<std::int32_t>{0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, -1}));
  BOOST_REQUIRE_EQUAL(p.segments.size(), 2u);
  BOOST_CHECK(p.segments[0].begin == 0 && p.segments[0].end == 7 && p.segments[0].adapter == 0);
  BOOST_CHECK(p.segments[1].begin == 7 && p.segments[1].end == 11 && p.segments[1].adapter == 2);
  BOOST_CHECK_EQUAL(p.max_blocks_per_seq, 3);
  BOOST_CHECK((p.block_tables == std::vector<std::int32_t>{5, 0, 0, 8, 0, 0, 7, 3, 0, 2, 0, 0, 1, 4, 6}));
  BOOST_CHECK_EQUAL(p.entries[1].logits_begin, 0);
  BOOST_CHECK_EQUAL(p.entries[4].logits_begin, 5);

  // segments_other_than: at most two runs around the chosen adapter's rows.
  const auto around2 = segments_other_than(p, 2, 9);
  BOOST_REQUIRE_EQUAL(around2.size(), 2u);
  BOOST_CHECK(around2[0].begin == 0 && around2[0].end == 7 && around2[0].adapter == 9);
  BOOST_CHECK(around2[1].begin == 11 && around2[1].end == 12);
  for (const int ad : {-1, 0, 2, 5}) check_other_than(p, ad);
  BOOST_CHECK(segments_other_than(batch_plan{}, 0, 0).empty());
}

BOOST_AUTO_TEST_CASE(batch_plan_random_layouts_match_the_reference) {
  auto rng = make_rng("batch_plan_random");
  for (int trial = 0; trial < 300; ++trial) {
    const int page_size = std::vector<int>{1, 3, 16}[trial % 3];
    request_store s;
    const int n_req = uniform_int(rng, 1, trial % 4 == 0 ? 40 : 12);  // > 16: std::sort would no longer be stable
    for (int i = 0; i < n_req; ++i) {
      const int n = uniform_int(rng, 1, 9), before = uniform_int(rng, 0, 40);
      std::vector<std::int32_t> toks(n), table((before + n + page_size - 1) / page_size + uniform_int(rng, 0, 2));
      for (auto& t : toks) t = uniform_int(rng, 0, 31999);
      for (auto& p : table) p = uniform_int(rng, 0, 999);
      std::vector<std::int32_t> offs;
      for (int t = 0; t < n; ++t)
        if (uniform_int(rng, 0, 3) == 0) offs.push_back(t);
      const bool sample = uniform_int(rng, 0, 1) == 1;
      if (sample && (offs.empty() || offs.back() != n - 1)) offs.push_back(n - 1);
      s.add(100 + i, uniform_int(rng, -1, 3), toks, before, table, offs, sample);
    }
    const batch_plan p = build_batch_plan(s.reqs, page_size);
    check_plan(s.reqs, page_size, p);
    for (const int ad : {-1, 0, 1, 2, 3}) check_other_than(p, ad);
  }
}

BOOST_AUTO_TEST_CASE(batch_plan_rejects_inconsistent_requests) {
  {
    request_store s;
    s.add(0, -1, {1, 2, 3}, 0, {0}, {}, true);  // sampled but wants no logits
    check_invalid("sample without logits", [&] { (void)build_batch_plan(s.reqs, 4); }, "last token");
  }
  {
    request_store s;
    s.add(0, -1, {1, 2, 3}, 0, {0}, {0}, true);  // sampled, but not from the last token
    check_invalid("sample from an earlier token", [&] { (void)build_batch_plan(s.reqs, 4); }, "last token");
  }
  {
    request_store s;
    s.add(0, 1, {1}, 2, {0}, {0}, true);
    s.add(42, 1, {1, 2}, 7, {3, 4}, {1}, true);  // 9 tokens, 2 pages of 4
    check_invalid("short block table", [&] { (void)build_batch_plan(s.reqs, 4); }, "sequence 42");
  }
  {
    request_store s;
    s.add(0, -1, {}, 3, {0}, {}, false);
    check_invalid("no tokens", [&] { (void)build_batch_plan(s.reqs, 4); }, "no tokens");
  }
  {
    request_store s;
    s.add(0, -1, {1, 2}, 0, {0}, {2}, false);
    check_invalid("offset outside", [&] { (void)build_batch_plan(s.reqs, 4); }, "offset");
  }
  request_store s;
  s.add(0, -1, {1}, 0, {0}, {0}, true);
  check_invalid("page size", [&] { (void)build_batch_plan(s.reqs, 0); }, "page_size");
}

// ---------------------------------------------------------------------------------------------------------
// Scheduler.

namespace {

/// The fake model: the token drawn for position p.
[[nodiscard]] std::int32_t fake_token(int pos) { return 100 + pos % 7; }

/// prefix + i (appended, not operator+(const char*, string&&): GCC 12 warns falsely on that, -Wrestrict).
[[nodiscard]] std::string numbered(std::string prefix, int i) {
  prefix += std::to_string(i);
  return prefix;
}

[[nodiscard]] sequence make_seq(const std::string& id, int prompt_len, int max_tokens, int adapter = -1) {
  sequence s;
  s.id = id;
  s.adapter = adapter;
  for (int i = 0; i < prompt_len; ++i) s.prompt.push_back(1000 + i);
  s.max_tokens = max_tokens;
  return s;
}

/// Everything a test learns from the steps it ran.
struct run_log {
  std::map<int, std::vector<int>> prompt_logit_positions;  // per sequence, positions < prompt length
  std::map<int, std::vector<int>> sampled_positions;       // per sequence, the position whose logits drew a token
  int steps = 0;
};

/// Schedules one step, checks it against the sequences' state, completes it with the fake sampler.
std::optional<batch_plan> step(scheduler& sch, const block_allocator& alloc, const scheduler_config& cfg, run_log& log) {
  std::optional<batch_plan> plan = sch.schedule();
  if (!plan) return plan;
  ++log.steps;
  const batch_plan& p = *plan;
  BOOST_CHECK_LE(p.num_rows(), cfg.max_batch_tokens);
  BOOST_CHECK_GT(p.num_rows(), 0);
  std::vector<std::int32_t> sampled;
  for (const plan_entry& e : p.entries) {
    const sequence& s = sch.at(e.seq);
    BOOST_CHECK(s.state == sequence_state::running);
    BOOST_CHECK_EQUAL(e.context_before, s.num_cached);
    BOOST_CHECK_EQUAL(e.adapter, s.adapter);
    BOOST_CHECK_EQUAL(e.sample, e.context_before + e.num_rows == s.total_tokens());
    for (int t = 0; t < e.num_rows; ++t) BOOST_CHECK_EQUAL(p.tokens[e.first_row + t], s.token_at(e.context_before + t));
    for (int l = 0; l < e.num_logits; ++l) {
      const int pos = p.logit_positions[e.logits_begin + l];
      if (pos < static_cast<int>(s.prompt.size())) {
        BOOST_CHECK(s.want_prompt_logits || (e.sample && l == e.num_logits - 1));
        if (s.want_prompt_logits) log.prompt_logit_positions[e.seq].push_back(pos);
      }
    }
    if (e.sample) log.sampled_positions[e.seq].push_back(p.logit_positions[e.logits_begin + e.num_logits - 1]);
    sampled.push_back(e.sample ? fake_token(e.context_before + e.num_rows) : -1);
  }
  sch.complete(p, sampled);
  // Page accounting: every page is free or in exactly one table, and tables hold only running sequences.
  std::set<std::int32_t> held;
  std::size_t total = 0;
  for (int i = 0; i < sch.size(); ++i) {
    const sequence& s = sch.at(i);
    if (s.state != sequence_state::running) BOOST_CHECK(s.block_table.empty());
    else BOOST_CHECK_GE(static_cast<int>(s.block_table.size()) * alloc.page_size(), s.num_cached);
    held.insert(s.block_table.begin(), s.block_table.end());
    total += s.block_table.size();
  }
  BOOST_CHECK_EQUAL(held.size(), total);
  BOOST_CHECK_EQUAL(static_cast<int>(total) + alloc.num_free(), alloc.num_pages());
  return plan;
}

/// A sequence's output when nothing stops it early.
void check_finished_by_length(const scheduler& sch, int i) {
  const sequence& s = sch.at(i);
  BOOST_CHECK(s.state == sequence_state::finished);
  BOOST_CHECK(s.finished_by == finish_reason::length);
  BOOST_REQUIRE_EQUAL(static_cast<int>(s.output.size()), s.max_tokens);
  for (int k = 0; k < s.max_tokens; ++k) BOOST_CHECK_EQUAL(s.output[k], fake_token(static_cast<int>(s.prompt.size()) + k));
}

}  // namespace

BOOST_AUTO_TEST_CASE(scheduler_runs_decodes_before_new_prefills) {
  block_allocator alloc(32, 4);
  const scheduler_config cfg{4, 16, 64};
  scheduler sch(cfg, alloc);
  run_log log;
  for (const char* id : {"a", "b", "c"}) (void)sch.add(make_seq(id, 1, 5));
  auto p1 = step(sch, alloc, cfg, log);  // three one-token prompts
  BOOST_REQUIRE(p1);
  BOOST_CHECK_EQUAL(p1->num_entries(), 3);
  const int d = sch.add(make_seq("d", 6, 2));
  auto p2 = step(sch, alloc, cfg, log);
  BOOST_REQUIRE(p2);
  BOOST_REQUIRE_EQUAL(p2->num_entries(), 4);
  for (int k = 0; k < 3; ++k) {
    BOOST_CHECK_EQUAL(p2->entries[k].seq, k);
    BOOST_CHECK_EQUAL(p2->entries[k].num_rows, 1);
    BOOST_CHECK(p2->entries[k].sample);
  }
  BOOST_CHECK_EQUAL(p2->entries[3].seq, d);  // only the budget the decodes left
  BOOST_CHECK_EQUAL(p2->entries[3].num_rows, 1);
  BOOST_CHECK(!p2->entries[3].sample);
  BOOST_CHECK_EQUAL(p2->entries[3].num_logits, 0);
  while (step(sch, alloc, cfg, log)) {}
  for (int i = 0; i < 4; ++i) check_finished_by_length(sch, i);
  BOOST_CHECK_EQUAL(alloc.num_free(), 32);
}

BOOST_AUTO_TEST_CASE(scheduler_chunks_a_long_prompt_under_the_budget) {
  block_allocator alloc(16, 4);
  const scheduler_config cfg{7, 16, 64};
  scheduler sch(cfg, alloc);
  run_log log;
  const int i = sch.add(make_seq("long", 20, 3));
  const int rows[] = {7, 7, 6};
  for (int k = 0; k < 3; ++k) {
    auto p = step(sch, alloc, cfg, log);
    BOOST_REQUIRE(p);
    BOOST_REQUIRE_EQUAL(p->num_entries(), 1);
    BOOST_CHECK_EQUAL(p->entries[0].context_before, 7 * k);
    BOOST_CHECK_EQUAL(p->entries[0].num_rows, rows[k]);
    BOOST_CHECK_EQUAL(p->entries[0].sample, k == 2);
    BOOST_CHECK_EQUAL(p->logit_rows.size(), k == 2 ? 1u : 0u);
    BOOST_CHECK_EQUAL(sch.at(i).output.size(), k == 2 ? 1u : 0u);
  }
  auto p = step(sch, alloc, cfg, log);  // then a decode
  BOOST_REQUIRE(p);
  BOOST_CHECK_EQUAL(p->entries[0].context_before, 20);
  BOOST_CHECK_EQUAL(p->entries[0].num_rows, 1);
  BOOST_CHECK_EQUAL(p->tokens[0], fake_token(20));
  while (step(sch, alloc, cfg, log)) {}
  check_finished_by_length(sch, i);
  BOOST_CHECK_EQUAL(log.steps, 5);
  BOOST_CHECK((log.sampled_positions[i] == std::vector<int>{19, 20, 21}));
}

BOOST_AUTO_TEST_CASE(scheduler_finishes_on_stop_token_and_on_length) {
  block_allocator alloc(16, 4);
  const scheduler_config cfg{64, 16, 64};
  scheduler sch(cfg, alloc);
  run_log log;
  sequence stopper = make_seq("stop", 5, 10);
  stopper.stop_tokens = {fake_token(7), 3};  // the third token, drawn at position 7
  const int s = sch.add(stopper);
  const int l = sch.add(make_seq("length", 3, 4));
  std::optional<batch_plan> p;
  while ((p = step(sch, alloc, cfg, log))) {
    const sequence& st = sch.at(s);
    if (st.state == sequence_state::finished) BOOST_CHECK(st.block_table.empty());
  }
  const sequence& st = sch.at(s);
  BOOST_CHECK(st.state == sequence_state::finished);
  BOOST_CHECK(st.finished_by == finish_reason::stop);
  BOOST_CHECK((st.output == std::vector<std::int32_t>{fake_token(5), fake_token(6), fake_token(7)}));
  check_finished_by_length(sch, l);
  BOOST_CHECK_EQUAL(alloc.num_free(), 16);
  BOOST_CHECK(!sch.has_work());
  BOOST_CHECK(!sch.schedule());
  BOOST_CHECK_EQUAL(std::string(finish_reason_name(st.finished_by)), "stop");
}

BOOST_AUTO_TEST_CASE(scheduler_rejects_requests_that_can_never_run) {
  block_allocator alloc(3, 4);  // 12 tokens of cache
  BOOST_CHECK_THROW(scheduler(scheduler_config{0, 1, 64}, alloc), std::invalid_argument);
  BOOST_CHECK_THROW(scheduler(scheduler_config{8, 1, 0}, alloc), std::invalid_argument);
  scheduler sch(scheduler_config{16, 4, 20}, alloc);
  check_invalid("empty prompt", [&] { sch.add(make_seq("e", 0, 4)); }, "empty prompt");
  check_invalid("too long", [&] { sch.add(make_seq("t", 15, 6)); }, "context limit");
  check_invalid("max_tokens 0", [&] { sch.add(make_seq("z", 4, 0)); }, "max_tokens");
  check_invalid("too many pages", [&] { sch.add(make_seq("p", 8, 5)); }, "KV pages");
  BOOST_CHECK_EQUAL(sch.size(), 0);
  BOOST_CHECK(!sch.has_work());
  BOOST_CHECK_EQUAL(sch.add(make_seq("ok", 8, 4)), 0);  // exactly the whole cache
  BOOST_CHECK(sch.has_work());
  const auto p = sch.schedule();
  BOOST_REQUIRE(p);
  BOOST_CHECK_THROW(sch.complete(*p, {}), std::invalid_argument);
}

BOOST_AUTO_TEST_CASE(scheduler_respects_max_running) {
  block_allocator alloc(32, 4);
  const scheduler_config cfg{64, 2, 64};
  scheduler sch(cfg, alloc);
  run_log log;
  for (const char* id : {"a", "b", "c"}) (void)sch.add(make_seq(id, 3, 2));
  auto p = step(sch, alloc, cfg, log);
  BOOST_REQUIRE(p);
  BOOST_CHECK_EQUAL(p->num_entries(), 2);
  BOOST_CHECK(sch.at(2).state == sequence_state::waiting);
  while (step(sch, alloc, cfg, log)) {}
  for (int i = 0; i < 3; ++i) check_finished_by_length(sch, i);
}

BOOST_AUTO_TEST_CASE(scheduler_preempts_the_youngest_and_recomputes_it) {
  block_allocator alloc(6, 4);  // 24 token slots; three sequences of 16 tokens each
  const scheduler_config cfg{64, 16, 64};
  scheduler sch(cfg, alloc);
  run_log log;
  for (const char* id : {"a", "b", "c"}) (void)sch.add(make_seq(id, 6, 10));
  std::vector<int> times(3, 0);
  std::vector<bool> restart_due(3, false);
  for (int guard = 0; guard < 200; ++guard) {
    std::vector<int> running_before;
    for (int i = 0; i < 3; ++i)
      if (sch.at(i).state == sequence_state::running) running_before.push_back(i);
    const std::vector<sequence> snapshot = {sch.at(0), sch.at(1), sch.at(2)};
    auto p = step(sch, alloc, cfg, log);
    if (!p) break;
    for (const plan_entry& e : p->entries) {
      if (!restart_due[e.seq]) continue;
      // The first step after a preemption recomputes from scratch: prompt + every output so far.
      const sequence& before = snapshot[e.seq];
      BOOST_CHECK_EQUAL(e.context_before, 0);
      BOOST_CHECK_EQUAL(e.num_rows, before.total_tokens());
      for (int t = 0; t < e.num_rows; ++t) BOOST_CHECK_EQUAL(p->tokens[e.first_row + t], before.token_at(t));
      restart_due[e.seq] = false;
    }
    std::vector<int> victims;
    for (int i = 0; i < 3; ++i)
      if (sch.at(i).times_preempted > times[i]) {
        victims.push_back(i);
        times[i] = sch.at(i).times_preempted;
        BOOST_CHECK(sch.at(i).block_table.empty());
        BOOST_CHECK_EQUAL(sch.at(i).num_cached, 0);
        restart_due[i] = true;
      }
    // Victims are younger than every sequence that kept running.
    for (const int v : victims)
      for (const int r : running_before)
        if (std::find(victims.begin(), victims.end(), r) == victims.end() && sch.at(r).state == sequence_state::running)
          BOOST_CHECK_LT(r, v);
  }
  BOOST_CHECK_GT(sch.num_preemptions(), 0);
  BOOST_CHECK(!sch.has_work());
  for (int i = 0; i < 3; ++i) {
    check_finished_by_length(sch, i);
    // Each token drawn exactly once, from the logits of the position before it, preemptions or not.
    std::vector<int> want;
    for (int k = 0; k < 10; ++k) want.push_back(5 + k);
    BOOST_CHECK(log.sampled_positions[i] == want);
  }
  BOOST_CHECK_EQUAL(sch.at(0).times_preempted, 0);
  BOOST_CHECK_EQUAL(alloc.num_free(), 6);
}

BOOST_AUTO_TEST_CASE(scheduler_returns_prompt_logits_once) {
  {  // chunked: every prompt position once, the last one also samples
    block_allocator alloc(16, 4);
    const scheduler_config cfg{4, 16, 64};
    scheduler sch(cfg, alloc);
    run_log log;
    sequence s = make_seq("pl", 10, 3);
    s.want_prompt_logits = true;
    const int i = sch.add(s);
    std::vector<std::vector<std::int32_t>> positions;
    while (auto p = step(sch, alloc, cfg, log)) positions.push_back(p->logit_positions);
    BOOST_REQUIRE_EQUAL(positions.size(), 5u);
    BOOST_CHECK((positions[0] == std::vector<std::int32_t>{0, 1, 2, 3}));
    BOOST_CHECK((positions[1] == std::vector<std::int32_t>{4, 5, 6, 7}));
    BOOST_CHECK((positions[2] == std::vector<std::int32_t>{8, 9}));
    BOOST_CHECK((positions[3] == std::vector<std::int32_t>{10}));
    BOOST_CHECK((log.prompt_logit_positions[i] == std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
    check_finished_by_length(sch, i);
  }
  {  // preempted after its prompt: the recompute returns no prompt logits again
    block_allocator alloc(5, 2);
    const scheduler_config cfg{64, 16, 64};
    scheduler sch(cfg, alloc);
    run_log log;
    (void)sch.add(make_seq("a", 4, 6));
    sequence b = make_seq("b", 4, 6);
    b.want_prompt_logits = true;
    const int ib = sch.add(b);
    while (step(sch, alloc, cfg, log)) {}
    BOOST_CHECK_GE(sch.at(ib).times_preempted, 1);
    BOOST_CHECK((log.prompt_logit_positions[ib] == std::vector<int>{0, 1, 2, 3}));
    check_finished_by_length(sch, 0);
    check_finished_by_length(sch, ib);
  }
}

BOOST_AUTO_TEST_CASE(scheduler_random_workloads_finish_with_the_expected_tokens) {
  auto rng = make_rng("scheduler_random");
  int preemptions = 0;
  for (int trial = 0; trial < 40; ++trial) {
    const int page_size = std::vector<int>{1, 3, 16}[trial % 3];
    block_allocator alloc(uniform_int(rng, 48, 96) / page_size + 1, page_size);
    const scheduler_config cfg{uniform_int(rng, 1, 24), uniform_int(rng, 1, 8), 48};
    scheduler sch(cfg, alloc);
    run_log log;
    const int n = uniform_int(rng, 1, 12);
    for (int i = 0; i < n; ++i) {
      const int prompt = uniform_int(rng, 1, 30);
      const int max_tokens = std::min(uniform_int(rng, 1, 15), alloc.num_pages() * page_size - prompt);
      sequence s = make_seq(numbered("r", i), prompt, std::max(max_tokens, 1), uniform_int(rng, -1, 2));
      s.want_prompt_logits = uniform_int(rng, 0, 2) == 0;
      if (alloc.pages_for(prompt + s.max_tokens) > alloc.num_pages()) continue;
      (void)sch.add(s);
    }
    // Sequences also arrive while others run.
    const int late = uniform_int(rng, 0, 3);
    for (int guard = 0; guard < 2000 && sch.has_work(); ++guard) {
      if (guard == 3)
        for (int i = 0; i < late; ++i) (void)sch.add(make_seq(numbered("late", i), uniform_int(rng, 1, 10), uniform_int(rng, 1, 8)));
      BOOST_REQUIRE(step(sch, alloc, cfg, log));
    }
    BOOST_REQUIRE_MESSAGE(!sch.has_work(), "trial " << trial << " did not finish");
    for (int i = 0; i < sch.size(); ++i) {
      check_finished_by_length(sch, i);
      const sequence& s = sch.at(i);
      const int prompt = static_cast<int>(s.prompt.size());
      std::vector<int> want;
      for (int k = 0; k < s.max_tokens; ++k) want.push_back(prompt - 1 + k);
      BOOST_CHECK_MESSAGE(log.sampled_positions[i] == want, "trial " << trial << " seq " << i << ": a token drawn twice or skipped");
      if (s.want_prompt_logits) {
        std::vector<int> all(prompt);
        for (int k = 0; k < prompt; ++k) all[k] = k;
        BOOST_CHECK_MESSAGE(log.prompt_logit_positions[i] == all, "trial " << trial << " seq " << i << ": prompt logits repeated or missing");
      }
    }
    BOOST_CHECK_EQUAL(alloc.num_free(), alloc.num_pages());
    preemptions += sch.num_preemptions();
  }
  BOOST_TEST_MESSAGE("random workloads: " << preemptions << " preemptions");
  BOOST_CHECK_GT(preemptions, 0);
}
