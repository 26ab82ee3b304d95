#pragma once
// The fixture checks, written once for any device: the CPU test runs them at f32, the CUDA test (label gpu)
// at bf16 and f32.

#include <cstring>
#include <set>

#include "tests/gpu/fixture_util.hpp"

namespace fixture {

struct precision {
  dtype weight_type;
  dtype act_type;
  double abs_tol;  // used when rel_tol == 0
  double rel_tol;
};

/// Every prompt × (base and each adapter) as ONE mixed batch; the first step holds all 15 prompts and 5
/// adapter groups.
inline void all_cases_one_mixed_batch(gpu::device& dev, precision p) {
  loaded_model m(dev, "base", p.weight_type, p.act_type);
  const auto cases = ref().select("base");
  BOOST_REQUIRE_EQUAL(cases.size(), 15u);
  tools::offline_stats st;
  const auto res = tools::run_offline(*m.runner, requests_for(cases), m.slots, options(true, false, 512), &st);
  BOOST_TEST(st.max_adapters_in_step == 5);
  std::size_t prompt_rows = 0;
  for (const auto& c : cases) prompt_rows += c.prompt.size();
  BOOST_TEST(st.max_rows_in_step == static_cast<int>(prompt_rows));
  BOOST_TEST(st.steps == 12);  // one prefill step and 11 decode steps, all sequences together
  const double worst = check_cases(cases, res, p.abs_tol, p.rel_tol);
  BOOST_TEST_MESSAGE("all cases, one mixed batch: worst error " << worst);
  if (p.rel_tol > 0.0) BOOST_TEST_MESSAGE("  worst single decode row on its own scale: " << worst_row_);
}

/// The bf16 sharded base (model.safetensors.index.json) against the `bf16` cases.
inline void bf16_sharded_base(gpu::device& dev, precision p) {
  loaded_model m(dev, "base-bf16", p.weight_type, p.act_type);
  const auto cases = ref().select("base-bf16");
  BOOST_REQUIRE_EQUAL(cases.size(), 3u);
  const auto res = tools::run_offline(*m.runner, requests_for(cases), m.slots, options(true, false, 512));
  const double worst = check_cases(cases, res, p.abs_tol, p.rel_tol);
  BOOST_TEST_MESSAGE("bf16 sharded base: worst error " << worst);
}

/// PEFT's own mixed-adapter batch: prefill logits of 5 rows with 5 different adapters (or none).
inline void mixed_prefill(gpu::device& dev, precision p) {
  loaded_model m(dev, "base", p.weight_type, p.act_type);
  std::vector<tools::offline_request> reqs;
  for (std::size_t i = 0; i < ref().mixed_rows.size(); ++i) {
    tools::offline_request r;
    r.id = "mixed" + std::to_string(i);
    r.adapter = ref().mixed_adapters[i];
    r.prompt = ref().mixed_rows[i];
    r.max_tokens = 1;
    reqs.push_back(r);
  }
  const auto res = tools::run_offline(*m.runner, reqs, m.slots, options(true, false, 512));
  const std::vector<float> want = ref().tensor("mixed.prefill");
  const std::size_t per_row = want.size() / reqs.size();
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    const std::vector<float> w(want.begin() + static_cast<std::ptrdiff_t>(i * per_row),
                               want.begin() + static_cast<std::ptrdiff_t>((i + 1) * per_row));
    const diff d = compare(res[i].prefill_logits, w);
    BOOST_TEST(d.finite);
    if (p.rel_tol == 0.0)
      BOOST_TEST(d.max_abs <= p.abs_tol, "mixed row " << i << " max |Δlogit| " << d.max_abs);
    else
      BOOST_TEST(d.relative() <= p.rel_tol, "mixed row " << i << " relative error " << d.relative());
  }
}

/// --mode merged: each adapter's requests with that adapter merged, one adapter at a time.
inline void merged_mode_matches(gpu::device& dev, precision p) {
  loaded_model m(dev, "base", p.weight_type, p.act_type);
  const auto cases = ref().select("base");
  const auto merged = tools::run_offline(*m.runner, requests_for(cases), m.slots, options(true, true, 512));
  BOOST_TEST(!m.runner->merged().has_value());
  const double worst = check_cases(cases, merged, p.abs_tol, p.rel_tol);
  BOOST_TEST_MESSAGE("merged mode: worst error " << worst);
  if (p.rel_tol > 0.0) BOOST_TEST_MESSAGE("  worst single decode row on its own scale: " << worst_row_);
}

/// One adapter merged while a mixed batch of every adapter runs: its rows skip LoRA, the others subtract it.
inline void merged_with_mixed_batch(gpu::device& dev, precision p) {
  loaded_model m(dev, "base", p.weight_type, p.act_type);
  const auto cases = ref().select("base");
  for (const std::string name : {"chat-r16", "rs-r4"}) {
    m.runner->merge(m.slots.at(name));
    const auto res = tools::run_offline(*m.runner, requests_for(cases), m.slots, options(true, false, 512));
    const double worst = check_cases(cases, res, p.abs_tol, p.rel_tol);
    BOOST_TEST_MESSAGE(name << " merged, mixed batch: worst error " << worst);
    m.runner->unmerge();
  }
}

/// Every byte of the base weights as stored on the device.
inline std::vector<std::vector<std::byte>> snapshot(gpu::device& dev, const gpu::model_weights& w) {
  std::vector<std::vector<std::byte>> out;
  auto grab = [&](const gpu::device_memory& m) {
    std::vector<std::byte> b(m.bytes());
    dev.download(b.data(), m.get(), b.size());
    out.push_back(std::move(b));
  };
  grab(w.embed);
  if (w.lm_head.get() != nullptr) grab(w.lm_head);
  for (const auto& l : w.layers) {
    grab(l.qkv);
    grab(l.o);
    grab(l.gate_up);
    grab(l.down);
  }
  return out;
}

/// merge → unmerge restores every weight bit for bit, for every adapter.
inline void merge_unmerge_bit_exact(gpu::device& dev, dtype weight_type, dtype act_type) {
  loaded_model m(dev, "base", weight_type, act_type);
  const auto before = snapshot(dev, m.runner->weights());
  for (const auto& name : adapter_names) {
    BOOST_TEST_CONTEXT("adapter " << name << ", weights " << dtype_name(weight_type)) {
      m.runner->merge(m.slots.at(name));
      const auto merged = snapshot(dev, m.runner->weights());
      BOOST_TEST((merged != before), "merging changed no weight");
      BOOST_CHECK_THROW(m.runner->merge(m.slots.at(name)), std::logic_error);
      m.runner->unmerge();
      const auto after = snapshot(dev, m.runner->weights());
      BOOST_REQUIRE_EQUAL(after.size(), before.size());
      for (std::size_t i = 0; i < before.size(); ++i)
        BOOST_TEST((after[i] == before[i]), "weight buffer " << i << " differs after unmerge");
    }
  }
}

/// Prefill in chunks of 5 rows and a KV cache too small for every sequence at once: preemptions happen, and
/// every logit and token still matches.
inline void chunked_prefill_and_preemption(gpu::device& dev, precision p) {
  loaded_model m(dev, "base", p.weight_type, p.act_type, /*max_batch_tokens=*/16, /*page_size=*/3, /*num_pages=*/40);
  const auto cases = ref().select("base");
  tools::offline_stats st;
  const auto res = tools::run_offline(*m.runner, requests_for(cases), m.slots, options(true, false, 16), &st);
  BOOST_TEST(st.preemptions > 0);
  BOOST_TEST(st.max_rows_in_step <= 16);
  const double worst = check_cases(cases, res, p.abs_tol, p.rel_tol);
  BOOST_TEST_MESSAGE("chunked prefill + " << st.preemptions << " preemptions: worst error " << worst);
}

/// Seeded sampling draws the same tokens whatever shares the batch (alone, mixed, preempted).
inline void seeded_sampling_is_batch_independent(gpu::device& dev, precision p) {
  auto reqs = requests_for(ref().select("base"), 20);
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    reqs[i].sampling.temperature = 0.9f;
    reqs[i].sampling.top_k = static_cast<int>(i % 3 == 0 ? 0 : 40);
    reqs[i].sampling.top_p = i % 2 == 0 ? 1.0f : 0.9f;
    reqs[i].sampling.seed = 1000 + i;
  }
  loaded_model big(dev, "base", p.weight_type, p.act_type);
  const auto mixed = tools::run_offline(*big.runner, reqs, big.slots, options(false, false, 512));
  std::set<std::vector<std::int32_t>> distinct;
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    const auto alone = tools::run_offline(*big.runner, {reqs[i]}, big.slots, options(false, false, 512));
    BOOST_TEST(alone[0].tokens == mixed[i].tokens, boost::test_tools::per_element());
    distinct.insert(mixed[i].tokens);
  }
  BOOST_TEST(distinct.size() > 5u);  // the draws are not all the same continuation
  loaded_model small(dev, "base", p.weight_type, p.act_type, 16, 3, 40);
  tools::offline_stats st;
  const auto preempted = tools::run_offline(*small.runner, reqs, small.slots, options(false, false, 16), &st);
  BOOST_TEST(st.preemptions > 0);
  for (std::size_t i = 0; i < reqs.size(); ++i) BOOST_TEST(preempted[i].tokens == mixed[i].tokens, boost::test_tools::per_element());
}

}  // namespace fixture
