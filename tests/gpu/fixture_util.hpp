#pragma once
// The Hugging Face transformers + PEFT reference (tests/data/tiny-llama) and helpers that run its cases
// through loraplex's offline driver on any device and compare logits and greedy tokens.

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "gpu/model_runner.hpp"
#include "model/hf_config.hpp"
#include "model/peft_adapter.hpp"
#include "model/safetensors.hpp"
#include "tools/loraplex_run/offline.hpp"

namespace fixture {

using namespace loraplex;

/// tests/data/tiny-llama; LORAPLEX_TEST_DATA in the environment overrides the build's path (GPU-host bundles).
inline const std::string data_dir = [] {
  const char* env = std::getenv("LORAPLEX_TEST_DATA");
  return std::string(env != nullptr && *env != '\0' ? env : LORAPLEX_TEST_DATA) + "/tiny-llama";
}();
inline const std::vector<std::string> adapter_names = {"sql-r8", "chat-r16", "rs-r4", "mlp-r12"};

struct ref_case {
  std::string name;  // "p0.sql-r8"
  std::vector<std::int32_t> prompt;
  std::optional<std::string> adapter;
  std::string base;  // "base" or "base-bf16"
  std::vector<std::int32_t> greedy;
  std::vector<float> margins;
};

struct reference {
  std::vector<ref_case> cases;
  std::vector<std::vector<std::int32_t>> mixed_rows;
  std::vector<std::optional<std::string>> mixed_adapters;
  model::safetensors_file logits = model::safetensors_file::open(data_dir + "/reference.safetensors");

  reference() {
    std::ifstream in(data_dir + "/reference.json");
    const nlohmann::json j = nlohmann::json::parse(in);
    for (const auto& c : j.at("cases")) {
      if (c.at("case") == "mixed") {
        for (const auto& r : c.at("rows")) mixed_rows.push_back(r.get<std::vector<std::int32_t>>());
        for (const auto& a : c.at("adapters"))
          mixed_adapters.push_back(a.is_null() ? std::nullopt : std::optional<std::string>(a.get<std::string>()));
        continue;
      }
      ref_case rc;
      rc.name = c.at("case");
      rc.prompt = c.at("prompt").get<std::vector<std::int32_t>>();
      if (!c.at("adapter").is_null()) rc.adapter = c.at("adapter").get<std::string>();
      rc.base = c.at("base");
      rc.greedy = c.at("greedy").get<std::vector<std::int32_t>>();
      rc.margins = c.at("margins").get<std::vector<float>>();
      cases.push_back(std::move(rc));
    }
  }

  /// The reference tensor's values (F32).
  [[nodiscard]] std::vector<float> tensor(const std::string& name) const {
    const model::tensor_view* t = logits.find(name);
    BOOST_REQUIRE_MESSAGE(t != nullptr, "reference tensor " << name << " missing");
    BOOST_REQUIRE(t->type == dtype::f32);
    const float* p = reinterpret_cast<const float*>(t->data);
    return {p, p + t->numel()};
  }

  [[nodiscard]] std::vector<ref_case> select(const std::string& base) const {
    std::vector<ref_case> out;
    for (const auto& c : cases)
      if (c.base == base) out.push_back(c);
    return out;
  }
};

inline const reference& ref() {
  static const reference r;
  return r;
}

/// A model on a device with the four fixture adapters resident.
struct loaded_model {
  model::model_config cfg;
  model::safetensors_checkpoint ckpt;
  std::unique_ptr<gpu::model_runner> runner;
  std::map<std::string, int> slots;

  loaded_model(gpu::device& dev, const std::string& base, dtype weight_type, dtype act_type, int max_batch_tokens = 512,
               int page_size = 16, int num_pages = 256)
      : cfg(model::load_hf_config(data_dir + "/" + base)), ckpt(model::safetensors_checkpoint::open_dir(data_dir + "/" + base)) {
    gpu::runner_options o;
    o.weight_type = weight_type;
    o.act_type = act_type;
    o.max_batch_tokens = max_batch_tokens;
    o.max_logit_rows = max_batch_tokens;
    o.page_size = page_size;
    o.num_pages = num_pages;
    o.max_adapters = 4;
    o.max_lora_rank = 16;
    runner = std::make_unique<gpu::model_runner>(dev, cfg, ckpt, o);
    for (const auto& name : adapter_names)
      slots[name] = runner->add_adapter(std::make_shared<const model::lora_adapter>(
          model::load_peft_adapter(data_dir + "/adapters/" + name, cfg, name)));
  }
};

inline std::vector<tools::offline_request> requests_for(const std::vector<ref_case>& cases, int max_tokens = 12) {
  std::vector<tools::offline_request> out;
  for (const auto& c : cases) {
    tools::offline_request r;
    r.id = c.name;
    r.adapter = c.adapter;
    r.prompt = c.prompt;
    r.max_tokens = max_tokens;
    out.push_back(std::move(r));
  }
  return out;
}

inline tools::offline_options options(bool logits, bool merged, int max_batch_tokens, int max_context = 256) {
  tools::offline_options o;
  o.want_logits = logits;
  o.merged = merged;
  o.scheduler.max_batch_tokens = max_batch_tokens;
  o.scheduler.max_running = 1024;
  o.scheduler.max_context = max_context;
  return o;
}

/// max |a - b|, and max |b| (the reference's scale).
struct diff {
  double max_abs = 0.0;
  double max_ref = 0.0;
  bool finite = true;
  [[nodiscard]] double relative() const { return max_abs / std::max(1.0, max_ref); }
};

inline diff compare(const std::vector<float>& got, const std::vector<float>& want) {
  BOOST_REQUIRE_EQUAL(got.size(), want.size());
  diff d;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) d.finite = false;
    d.max_abs = std::max(d.max_abs, static_cast<double>(std::fabs(got[i] - want[i])));
    d.max_ref = std::max(d.max_ref, static_cast<double>(std::fabs(want[i])));
  }
  return d;
}

/// Checks every case's prefill and decode logits against the reference and its greedy tokens: exactly
/// (f32: `abs_tol` absolute), or, with `rel_tol`, relative to the largest reference logit, comparing tokens
/// only at steps whose reference margin exceeds twice the measured error (and stopping at the first step
/// where the continuation may legitimately diverge). Returns the worst error seen.
/// The worst decode row normalised by its own largest logit, over every check_cases call (reported by tests).
inline double worst_row_ = 0.0;

inline double check_cases(const std::vector<ref_case>& cases, const std::vector<tools::offline_result>& results,
                          double abs_tol, double rel_tol = 0.0) {
  BOOST_REQUIRE_EQUAL(cases.size(), results.size());
  double worst = 0.0;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const ref_case& c = cases[i];
    const tools::offline_result& r = results[i];
    BOOST_TEST_CONTEXT("case " << c.name) {
      const diff dp = compare(r.prefill_logits, ref().tensor(c.name + ".prefill"));
      BOOST_TEST(dp.finite);
      if (rel_tol == 0.0) {
        BOOST_TEST(dp.max_abs <= abs_tol, "prefill max |Δlogit| " << dp.max_abs);
        BOOST_TEST(r.tokens == c.greedy, boost::test_tools::per_element());
        const diff dd = compare(r.decode_logits, ref().tensor(c.name + ".decode"));
        BOOST_TEST(dd.finite);
        BOOST_TEST(dd.max_abs <= abs_tol, "decode max |Δlogit| " << dd.max_abs);
        worst = std::max({worst, dp.max_abs, dd.max_abs});
      } else {
        BOOST_TEST(dp.relative() <= rel_tol, "prefill relative error " << dp.relative());
        worst = std::max(worst, dp.relative());
        // Decode: compare only while the generated prefix equals the reference's (after a legitimate divergence
        // at a near-tie the logits are of a different continuation). The bound is relative to the largest
        // logit of the compared steps (as for prefill); the worst single row, normalised by its own largest
        // logit, is reported too.
        const std::vector<float> want = ref().tensor(c.name + ".decode");
        const std::size_t vocab = want.size() / c.greedy.size();
        diff all;
        double worst_row = 0.0;
        for (std::size_t k = 0; k < c.greedy.size() && k < r.tokens.size(); ++k) {
          const std::vector<float> g(r.decode_logits.begin() + static_cast<std::ptrdiff_t>(k * vocab),
                                     r.decode_logits.begin() + static_cast<std::ptrdiff_t>((k + 1) * vocab));
          const std::vector<float> w(want.begin() + static_cast<std::ptrdiff_t>(k * vocab),
                                     want.begin() + static_cast<std::ptrdiff_t>((k + 1) * vocab));
          const diff dk = compare(g, w);
          all.finite = all.finite && dk.finite;
          all.max_abs = std::max(all.max_abs, dk.max_abs);
          all.max_ref = std::max(all.max_ref, dk.max_ref);
          worst_row = std::max(worst_row, dk.relative());
          if (c.margins[k] > 2.0 * dk.max_abs) {
            BOOST_TEST(r.tokens[k] == c.greedy[k], "decode step " << k << " margin " << c.margins[k] << " error " << dk.max_abs);
          }
          if (r.tokens[k] != c.greedy[k]) break;
        }
        BOOST_TEST(all.finite);
        BOOST_TEST(all.relative() <= rel_tol, "decode relative error " << all.relative());
        worst = std::max(worst, all.relative());
        worst_row_ = std::max(worst_row_, worst_row);
      }
    }
  }
  return worst;
}

}  // namespace fixture
