#define BOOST_TEST_MODULE test_hf_config
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <functional>
#include <numbers>

#include <nlohmann/json.hpp>

#include "model/hf_config.hpp"
#include "test_util.hpp"

using namespace loraplex::model;
using loraplex::test::check_error;
using loraplex::test::temp_dir;
using loraplex::test::write_file;
using json = nlohmann::json;

namespace {

/// A Llama-2-7B-style config.json (pre-transformers-5: top-level rope_theta, no head_dim).
[[nodiscard]] json llama2_like() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "rope_scaling": null, "tie_word_embeddings": false,
    "attention_bias": false, "mlp_bias": false, "pretraining_tp": 1, "torch_dtype": "float16",
    "bos_token_id": 1, "eos_token_id": 2
  })");
}

/// Independent reference for the expected inverse frequencies: plain double math, written out per case.
[[nodiscard]] std::vector<double> expected_inv_freq(double theta, int dim, const std::string& type, double factor = 1,
                                                    double low = 1, double high = 4, double old_ctx = 8192) {
  std::vector<double> out;
  for (int i = 0; 2 * i < dim; ++i) {
    const double base = std::pow(theta, -(2.0 * i) / dim);
    if (type == "linear") {
      out.push_back(base / factor);
    } else if (type == "llama3") {
      const double wavelen = 2 * std::numbers::pi / base;
      if (wavelen < old_ctx / high) {
        out.push_back(base);  // high frequency: kept
      } else if (wavelen > old_ctx / low) {
        out.push_back(base / factor);  // low frequency: scaled
      } else {
        const double s = (old_ctx / wavelen - low) / (high - low);
        out.push_back((1 - s) * base / factor + s * base);
      }
    } else {
      out.push_back(base);
    }
  }
  return out;
}

void check_inv_freq(const std::vector<float>& got, const std::vector<double>& want) {
  BOOST_REQUIRE_EQUAL(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    BOOST_CHECK_MESSAGE(std::abs(got[i] - want[i]) <= 1e-6 * std::abs(want[i]),
                        "inv_freq[" << i << "] = " << got[i] << ", expected " << want[i]);
  }
}

[[nodiscard]] model_config parse(const json& j) { return parse_hf_config(j, "config.json"); }

}  // namespace

BOOST_AUTO_TEST_CASE(fixture_config_with_rope_parameters) {
  const auto c = load_hf_config(LORAPLEX_TEST_DATA "/tiny-llama/base");
  BOOST_CHECK_EQUAL(c.architecture, "LlamaForCausalLM");
  BOOST_CHECK_EQUAL(c.vocab_size, 512);
  BOOST_CHECK_EQUAL(c.hidden_size, 128);
  BOOST_CHECK_EQUAL(c.intermediate_size, 344);
  BOOST_CHECK_EQUAL(c.num_layers, 3);
  BOOST_CHECK_EQUAL(c.num_heads, 4);
  BOOST_CHECK_EQUAL(c.num_kv_heads, 2);
  BOOST_CHECK_EQUAL(c.head_dim, 32);
  BOOST_CHECK_EQUAL(c.q_dim(), 128);
  BOOST_CHECK_EQUAL(c.kv_dim(), 64);
  BOOST_CHECK_EQUAL(c.max_position_embeddings, 256);
  BOOST_CHECK_EQUAL(c.rms_norm_eps, 1e-5);
  BOOST_CHECK_EQUAL(c.rope.theta, 10000.0);
  BOOST_CHECK(c.rope.scaling == rope_scaling_type::none);
  BOOST_CHECK(!c.tie_word_embeddings);
  BOOST_REQUIRE(c.bos_token_id);
  BOOST_CHECK_EQUAL(*c.bos_token_id, 1);
  BOOST_CHECK((c.eos_token_ids == std::vector<int>{2}));
  BOOST_CHECK_EQUAL(rope_attention_scaling(c), 1.0f);

  const auto inv = rope_inv_freq(c);
  check_inv_freq(inv, expected_inv_freq(10000.0, 32, "default"));
  BOOST_CHECK_EQUAL(inv[0], 1.0f);
  BOOST_CHECK_CLOSE(inv[1], 0.5623413251903491, 1e-4);  // 10000^(-2/32)

  // The file itself may be named, too.
  const auto same = load_hf_config(LORAPLEX_TEST_DATA "/tiny-llama/base/config.json");
  BOOST_CHECK_EQUAL(same.hidden_size, 128);
  check_error<format_error>("missing config", [] { (void)load_hf_config("/nonexistent/loraplex/dir"); },
                            {"/nonexistent/loraplex/dir"});
}

BOOST_AUTO_TEST_CASE(old_style_config_defaults) {
  auto j = llama2_like();
  j["rope_theta"] = 500000.0;
  const auto c = parse(j);
  BOOST_CHECK_EQUAL(c.rope.theta, 500000.0);
  BOOST_CHECK(c.rope.scaling == rope_scaling_type::none);
  BOOST_CHECK_EQUAL(c.head_dim, 128);  // hidden_size / num_attention_heads
  BOOST_CHECK_EQUAL(c.num_kv_heads, 32);
  check_inv_freq(rope_inv_freq(c), expected_inv_freq(500000.0, 128, "default"));

  // Defaults: num_key_value_heads, rms_norm_eps, rope_theta, tie_word_embeddings; dtype fields ignored.
  j.erase("num_key_value_heads");
  j.erase("rms_norm_eps");
  j.erase("rope_theta");
  j.erase("tie_word_embeddings");
  j["dtype"] = "bfloat16";
  const auto d = parse(j);
  BOOST_CHECK_EQUAL(d.num_kv_heads, 32);
  BOOST_CHECK_EQUAL(d.rms_norm_eps, 1e-6);
  BOOST_CHECK_EQUAL(d.rope.theta, 10000.0);
  BOOST_CHECK(!d.tie_word_embeddings);

  j["head_dim"] = 64;  // an explicit head_dim wins over hidden / heads
  BOOST_CHECK_EQUAL(parse(j).head_dim, 64);
  BOOST_CHECK_EQUAL(parse(j).q_dim(), 32 * 64);
}

BOOST_AUTO_TEST_CASE(gqa_tied_embeddings_and_eos_list) {
  auto j = llama2_like();
  j["num_key_value_heads"] = 8;
  j["tie_word_embeddings"] = true;
  j["eos_token_id"] = {128001, 128008, 128009};
  j["bos_token_id"] = nullptr;
  const auto c = parse(j);
  BOOST_CHECK_EQUAL(c.num_kv_heads, 8);
  BOOST_CHECK_EQUAL(c.kv_dim(), 8 * 128);
  BOOST_CHECK_EQUAL(c.q_dim(), 4096);
  BOOST_CHECK(c.tie_word_embeddings);
  BOOST_CHECK((c.eos_token_ids == std::vector<int>{128001, 128008, 128009}));
  BOOST_CHECK(!c.bos_token_id);
}

BOOST_AUTO_TEST_CASE(rope_scaling_linear) {
  auto j = llama2_like();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};  // legacy `type` key
  const auto c = parse(j);
  BOOST_CHECK(c.rope.scaling == rope_scaling_type::linear);
  BOOST_CHECK_EQUAL(c.rope.factor, 4.0);
  check_inv_freq(rope_inv_freq(c), expected_inv_freq(10000.0, 128, "linear", 4.0));

  j["rope_scaling"] = {{"rope_type", "default"}};
  BOOST_CHECK(parse(j).rope.scaling == rope_scaling_type::none);
}

BOOST_AUTO_TEST_CASE(rope_scaling_llama3_both_spellings) {
  // Llama 3.1 8B, old spelling.
  auto j = llama2_like();
  j["vocab_size"] = 128256;
  j["num_key_value_heads"] = 8;
  j["max_position_embeddings"] = 131072;
  j["rope_theta"] = 500000.0;
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  const auto c = parse(j);
  BOOST_CHECK(c.rope.scaling == rope_scaling_type::llama3);
  BOOST_CHECK_EQUAL(c.rope.original_max_position_embeddings, 8192);
  BOOST_CHECK_EQUAL(c.max_position_embeddings, 131072);
  const auto inv = rope_inv_freq(c);
  const auto want = expected_inv_freq(500000.0, 128, "llama3", 8.0, 1.0, 4.0, 8192);
  check_inv_freq(inv, want);
  // The three regimes are all present at these settings: kept, smoothed, divided by the factor.
  BOOST_CHECK_EQUAL(inv.front(), 1.0f);
  BOOST_CHECK_CLOSE(inv.back(), std::pow(500000.0, -126.0 / 128) / 8.0, 1e-4);
  int smoothed = 0;
  for (std::size_t i = 0; i < inv.size(); ++i) {
    const double base = std::pow(500000.0, -(2.0 * static_cast<double>(i)) / 128);
    smoothed += std::abs(want[i] - base) > 1e-12 * base && std::abs(want[i] - base / 8) > 1e-12 * base;
  }
  BOOST_CHECK_GT(smoothed, 0);

  // Transformers-5 spelling: everything under rope_parameters, other factors.
  auto k = llama2_like();
  k.erase("rope_theta");
  k.erase("rope_scaling");
  k["rope_parameters"] = {{"rope_type", "llama3"},
                          {"rope_theta", 500000.0},
                          {"factor", 32.0},
                          {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0},
                          {"original_max_position_embeddings", 8192}};
  const auto c5 = parse(k);
  BOOST_CHECK_EQUAL(c5.rope.theta, 500000.0);
  BOOST_CHECK_EQUAL(c5.rope.factor, 32.0);
  check_inv_freq(rope_inv_freq(c5), expected_inv_freq(500000.0, 128, "llama3", 32.0, 1.0, 4.0, 8192));

  k["rope_parameters"] = {{"rope_type", "linear"}, {"rope_theta", 1000.0}, {"factor", 2}};
  const auto lin = parse(k);
  BOOST_CHECK(lin.rope.scaling == rope_scaling_type::linear);
  check_inv_freq(rope_inv_freq(lin), expected_inv_freq(1000.0, 128, "linear", 2.0));
}

BOOST_AUTO_TEST_CASE(mistral_sliding_window_bounds_context) {
  auto j = llama2_like();
  j["architectures"] = {"MistralForCausalLM"};
  j["model_type"] = "mistral";
  j["num_key_value_heads"] = 8;
  j["max_position_embeddings"] = 32768;
  j["sliding_window"] = 4096;
  const auto c = parse(j);
  BOOST_CHECK_EQUAL(c.architecture, "MistralForCausalLM");
  BOOST_CHECK_EQUAL(c.max_position_embeddings, 4096);
  j["sliding_window"] = nullptr;
  BOOST_CHECK_EQUAL(parse(j).max_position_embeddings, 32768);
  j["sliding_window"] = 65536;
  BOOST_CHECK_EQUAL(parse(j).max_position_embeddings, 32768);
}

BOOST_AUTO_TEST_CASE(refusals_name_the_field) {
  auto with = [](const char* key, json value) {
    auto j = llama2_like();
    j[key] = std::move(value);
    return j;
  };
  {
    const auto j = with("hidden_act", "gelu");
    try {
      (void)parse(j);
      BOOST_ERROR("gelu accepted");
    } catch (const unsupported_error& e) {
      BOOST_CHECK_EQUAL(std::string(e.what()),
                        "config.json: hidden_act \"gelu\" is not supported (loraplex serves SiLU Llama-family models)");
    }
  }
  const auto refused = [&](const char* label, const json& j, std::initializer_list<std::string> parts) {
    check_error<unsupported_error>(label, [&] { (void)parse(j); }, parts);
  };
  refused("architecture", with("architectures", {"GPT2LMHeadModel"}),
          {"config.json", "architectures", "GPT2LMHeadModel"});
  refused("model_type", with("model_type", "qwen2"), {"model_type", "qwen2"});
  refused("attention_bias", with("attention_bias", true), {"attention_bias"});
  refused("mlp_bias", with("mlp_bias", true), {"mlp_bias"});
  refused("pretraining_tp", with("pretraining_tp", 2), {"pretraining_tp", "2"});
  refused("rope yarn", with("rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}}),
          {"rope_scaling.rope_type", "yarn"});
  refused("rope dynamic (legacy key)", with("rope_scaling", {{"type", "dynamic"}, {"factor", 2.0}}),
          {"rope_scaling.type", "dynamic"});
  refused("rope_parameters longrope", with("rope_parameters", {{"rope_type", "longrope"}, {"rope_theta", 1e4}}),
          {"rope_parameters.rope_type", "longrope"});
  refused("quantized", with("quantization_config", {{"quant_method", "gptq"}}), {"quantization_config"});
}

BOOST_AUTO_TEST_CASE(format_errors_name_the_field) {
  const auto bad = [](const char* label, const std::function<void(json&)>& edit,
                      std::initializer_list<std::string> parts) {
    auto j = llama2_like();
    edit(j);
    check_error<format_error>(label, [&] { (void)parse_hf_config(j, "config.json"); }, parts);
  };
  bad("missing hidden_size", [](json& j) { j.erase("hidden_size"); }, {"config.json", "hidden_size", "missing"});
  bad("zero vocab", [](json& j) { j["vocab_size"] = 0; }, {"vocab_size", "positive"});
  bad("negative layers", [](json& j) { j["num_hidden_layers"] = -2; }, {"num_hidden_layers"});
  bad("string size", [](json& j) { j["intermediate_size"] = "11008"; }, {"intermediate_size", "integer"});
  bad("missing max_position_embeddings", [](json& j) { j.erase("max_position_embeddings"); },
      {"max_position_embeddings"});
  bad("heads not a multiple of kv heads", [](json& j) { j["num_key_value_heads"] = 3; },
      {"num_attention_heads", "num_key_value_heads"});
  bad("odd head_dim", [](json& j) { j["head_dim"] = 33; }, {"head_dim", "odd"});
  bad("hidden not divisible", [](json& j) { j["num_attention_heads"] = 30; j["num_key_value_heads"] = 30; },
      {"hidden_size", "num_attention_heads"});
  bad("linear without factor", [](json& j) { j["rope_scaling"] = {{"rope_type", "linear"}}; },
      {"rope_scaling.factor"});
  bad("llama3 without low_freq_factor",
      [](json& j) {
        j["rope_scaling"] = {{"rope_type", "llama3"},
                             {"factor", 8.0},
                             {"high_freq_factor", 4.0},
                             {"original_max_position_embeddings", 8192}};
      },
      {"rope_scaling.low_freq_factor"});
  bad("rope_scaling without type", [](json& j) { j["rope_scaling"] = {{"factor", 8.0}}; }, {"rope_type"});
  bad("negative theta", [](json& j) { j["rope_theta"] = -1.0; }, {"rope_theta"});
  bad("eos list of strings", [](json& j) { j["eos_token_id"] = {"</s>"}; }, {"eos_token_id"});
  bad("tie as string", [](json& j) { j["tie_word_embeddings"] = "yes"; }, {"tie_word_embeddings"});
  bad("no architecture", [](json& j) { j.erase("architectures"); j.erase("model_type"); }, {"architectures"});

  temp_dir tmp;
  write_file(tmp.path() / "config.json", "{\"hidden_size\": ");
  check_error<format_error>("config that is not JSON", [&] { (void)load_hf_config(tmp.path()); },
                            {(tmp.path() / "config.json").string(), "JSON"});
}
