#include "model/hf_config.hpp"

#include <cmath>
#include <fstream>
#include <limits>
#include <numbers>

#include <nlohmann/json.hpp>

namespace loraplex::model {

namespace {

using json = nlohmann::json;

/// Field access with messages that name the file and the field ("config.json: hidden_size must be ...").
class field_reader {
 public:
  field_reader(const json& obj, const std::string& source, std::string prefix)
      : obj_(obj), source_(source), prefix_(std::move(prefix)) {}

  /// The value, or nullptr when absent or null (transformers treats both as "not set").
  [[nodiscard]] const json* get(const char* key) const {
    const auto it = obj_.find(key);
    return it == obj_.end() || it->is_null() ? nullptr : &*it;
  }

  [[nodiscard]] std::string name(const char* key) const { return prefix_ + key; }

  [[noreturn]] void fail_format(const char* key, const std::string& why) const {
    throw format_error(source_ + ": " + name(key) + " " + why);
  }

  [[nodiscard]] std::optional<int> opt_int(const char* key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_number_integer()) fail_format(key, "must be an integer, got " + v->dump());
    if (v->is_number_unsigned() ? v->get<std::uint64_t>() > std::uint64_t(std::numeric_limits<int>::max())
                                : (v->get<std::int64_t>() < std::numeric_limits<int>::min() ||
                                   v->get<std::int64_t>() > std::numeric_limits<int>::max())) {
      fail_format(key, "is out of range: " + v->dump());
    }
    return static_cast<int>(v->get<std::int64_t>());
  }

  [[nodiscard]] int positive_int(const char* key) const {
    const auto v = opt_int(key);
    if (!v) fail_format(key, "is missing");
    if (*v <= 0) fail_format(key, "must be positive, got " + std::to_string(*v));
    return *v;
  }

  [[nodiscard]] std::optional<double> opt_number(const char* key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_number()) fail_format(key, "must be a number, got " + v->dump());
    return v->get<double>();
  }

  [[nodiscard]] double positive_number(const char* key) const {
    const auto v = opt_number(key);
    if (!v) fail_format(key, "is missing");
    if (!(*v > 0) || !std::isfinite(*v)) fail_format(key, "must be a positive number, got " + std::to_string(*v));
    return *v;
  }

  [[nodiscard]] bool opt_bool(const char* key, bool fallback) const {
    const json* v = get(key);
    if (!v) return fallback;
    if (!v->is_boolean()) fail_format(key, "must be true or false, got " + v->dump());
    return v->get<bool>();
  }

  [[nodiscard]] std::optional<std::string> opt_string(const char* key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_string()) fail_format(key, "must be a string, got " + v->dump());
    return v->get<std::string>();
  }

 private:
  const json& obj_;
  const std::string& source_;
  std::string prefix_;
};

[[nodiscard]] std::string refusal(const std::string& source, const std::string& field, const std::string& value,
                                  const std::string& why) {
  return source + ": " + field + " " + value + " is not supported (" + why + ")";
}

/// RoPE: theta and scaling from the pre-5 top-level keys or the transformers-5 `rope_parameters` object.
[[nodiscard]] rope_config parse_rope(const json& j, const std::string& source) {
  const field_reader top(j, source, "");
  rope_config rope;

  const json* params = top.get("rope_parameters");
  if (params && !params->is_object()) top.fail_format("rope_parameters", "must be an object");
  const json* legacy = top.get("rope_scaling");
  if (legacy && !legacy->is_object()) top.fail_format("rope_scaling", "must be an object or null");

  static const json empty_object = json::object();
  const field_reader pr(params ? *params : empty_object, source, "rope_parameters.");
  if (const auto t = pr.opt_number("rope_theta")) {
    rope.theta = *t;
  } else if (const auto t2 = top.opt_number("rope_theta")) {
    rope.theta = *t2;
  }
  if (!(rope.theta > 0) || !std::isfinite(rope.theta)) {
    throw format_error(source + ": rope_theta must be a positive number, got " + std::to_string(rope.theta));
  }

  // The scaling lives in whichever object names a type; rope_parameters (transformers 5) wins over rope_scaling.
  const auto has_type = [](const json* o) { return o && (o->contains("rope_type") || o->contains("type")); };
  const json* scaling = has_type(params) ? params : (legacy ? legacy : nullptr);
  if (!scaling) return rope;
  const std::string prefix = scaling == params ? "rope_parameters." : "rope_scaling.";
  const field_reader sr(*scaling, source, prefix);
  const char* type_key = sr.get("rope_type") ? "rope_type" : "type";
  const auto type = sr.opt_string(type_key);
  if (!type) sr.fail_format("rope_type", "is missing (expected default, linear or llama3)");

  if (*type == "default") return rope;
  if (*type == "linear") {
    rope.scaling = rope_scaling_type::linear;
    rope.factor = sr.positive_number("factor");
    return rope;
  }
  if (*type == "llama3") {
    rope.scaling = rope_scaling_type::llama3;
    rope.factor = sr.positive_number("factor");
    rope.low_freq_factor = sr.positive_number("low_freq_factor");
    rope.high_freq_factor = sr.positive_number("high_freq_factor");
    rope.original_max_position_embeddings = sr.positive_int("original_max_position_embeddings");
    if (rope.low_freq_factor == rope.high_freq_factor) {
      sr.fail_format("high_freq_factor", "must differ from low_freq_factor (the llama3 smoothing divides by the gap)");
    }
    return rope;
  }
  throw unsupported_error(refusal(source, sr.name(type_key), "\"" + *type + "\"",
                                  "loraplex implements default, linear and llama3 RoPE"));
}

}  // namespace

model_config parse_hf_config(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) throw format_error(source + ": not a JSON object");
  const field_reader r(j, source, "");
  model_config c;

  // Architecture: `architectures` is authoritative; model_type alone is enough for hand-written configs.
  const auto model_type = r.opt_string("model_type");
  if (model_type && *model_type != "llama" && *model_type != "mistral") {
    throw unsupported_error(refusal(source, "model_type", "\"" + *model_type + "\"",
                                    "loraplex serves llama and mistral models"));
  }
  if (const json* a = r.get("architectures")) {
    if (!a->is_array() || a->empty() || !(*a)[0].is_string()) {
      r.fail_format("architectures", "must be a non-empty list of strings");
    }
    if (a->size() != 1) {
      throw unsupported_error(refusal(source, "architectures", a->dump(), "expected exactly one architecture"));
    }
    c.architecture = (*a)[0].get<std::string>();
  } else if (model_type) {
    c.architecture = *model_type == "llama" ? "LlamaForCausalLM" : "MistralForCausalLM";
  } else {
    r.fail_format("architectures", "is missing (and there is no model_type)");
  }
  if (c.architecture != "LlamaForCausalLM" && c.architecture != "MistralForCausalLM") {
    throw unsupported_error(refusal(source, "architectures", "\"" + c.architecture + "\"",
                                    "loraplex serves LlamaForCausalLM and MistralForCausalLM"));
  }

  // transformers maps "swish" to the same SiLU module as "silu".
  if (const auto act = r.opt_string("hidden_act"); act && *act != "silu" && *act != "swish") {
    throw unsupported_error(
        refusal(source, "hidden_act", "\"" + *act + "\"", "loraplex serves SiLU Llama-family models"));
  }
  if (r.opt_bool("attention_bias", false)) {
    throw unsupported_error(refusal(source, "attention_bias", "true", "loraplex's attention projections have no bias"));
  }
  if (r.opt_bool("mlp_bias", false)) {
    throw unsupported_error(refusal(source, "mlp_bias", "true", "loraplex's MLP projections have no bias"));
  }
  if (const auto tp = r.opt_int("pretraining_tp"); tp && *tp != 1) {
    throw unsupported_error(refusal(source, "pretraining_tp", std::to_string(*tp),
                                    "only pretraining_tp 1, the unsplit projections, is served"));
  }
  if (r.get("quantization_config")) {
    throw unsupported_error(refusal(source, "quantization_config", "(a quantized checkpoint)",
                                    "loraplex reads F32, F16 and BF16 weights"));
  }

  c.vocab_size = r.positive_int("vocab_size");
  c.hidden_size = r.positive_int("hidden_size");
  c.intermediate_size = r.positive_int("intermediate_size");
  c.num_layers = r.positive_int("num_hidden_layers");
  c.num_heads = r.positive_int("num_attention_heads");
  c.max_position_embeddings = r.positive_int("max_position_embeddings");
  c.num_kv_heads = r.get("num_key_value_heads") ? r.positive_int("num_key_value_heads") : c.num_heads;
  if (c.num_heads % c.num_kv_heads != 0) {
    r.fail_format("num_attention_heads", std::to_string(c.num_heads) + " is not a multiple of num_key_value_heads " +
                                             std::to_string(c.num_kv_heads));
  }
  if (r.get("head_dim")) {
    c.head_dim = r.positive_int("head_dim");
  } else {
    if (c.hidden_size % c.num_heads != 0) {
      r.fail_format("hidden_size", std::to_string(c.hidden_size) + " is not a multiple of num_attention_heads " +
                                       std::to_string(c.num_heads) + " (and head_dim is not given)");
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) {
    r.fail_format("head_dim", std::to_string(c.head_dim) + " is odd (RoPE rotates pairs of dimensions)");
  }
  if (r.get("rms_norm_eps")) c.rms_norm_eps = r.positive_number("rms_norm_eps");
  c.tie_word_embeddings = r.opt_bool("tie_word_embeddings", false);

  c.bos_token_id = r.opt_int("bos_token_id");
  if (const json* eos = r.get("eos_token_id")) {
    if (eos->is_array()) {
      for (const auto& e : *eos) {
        if (!e.is_number_integer()) r.fail_format("eos_token_id", "must be an integer or a list of integers");
        c.eos_token_ids.push_back(e.get<int>());
      }
    } else {
      c.eos_token_ids.push_back(*r.opt_int("eos_token_id"));
    }
  }

  c.rope = parse_rope(j, source);

  // Serving at most the window means every attention span fits in it, so no sliding-window masking is needed.
  if (c.architecture == "MistralForCausalLM" && r.get("sliding_window")) {
    const int window = r.positive_int("sliding_window");
    if (window < c.max_position_embeddings) c.max_position_embeddings = window;
  }
  return c;
}

model_config load_hf_config(const std::filesystem::path& dir_or_file) {
  std::error_code ec;
  const auto file =
      std::filesystem::is_directory(dir_or_file, ec) ? dir_or_file / "config.json" : dir_or_file;
  std::ifstream in(file, std::ios::binary);
  if (!in) throw format_error(file.string() + ": cannot open (no config.json?)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw format_error(file.string() + ": not valid JSON: " + e.what());
  }
  return parse_hf_config(j, file.string());
}

std::vector<float> rope_inv_freq(const model_config& c) {
  const int half = c.head_dim / 2;
  const rope_config& r = c.rope;
  std::vector<float> out(static_cast<std::size_t>(half));
  const double low_freq_wavelen = r.original_max_position_embeddings / r.low_freq_factor;
  const double high_freq_wavelen = r.original_max_position_embeddings / r.high_freq_factor;
  for (int i = 0; i < half; ++i) {
    double inv = 1.0 / std::pow(r.theta, static_cast<double>(2 * i) / c.head_dim);
    switch (r.scaling) {
      case rope_scaling_type::none: break;
      case rope_scaling_type::linear: inv /= r.factor; break;
      case rope_scaling_type::llama3: {
        const double wavelen = 2.0 * std::numbers::pi / inv;
        if (wavelen > low_freq_wavelen) {
          inv /= r.factor;
        } else if (wavelen >= high_freq_wavelen) {
          const double smooth = (r.original_max_position_embeddings / wavelen - r.low_freq_factor) /
                                (r.high_freq_factor - r.low_freq_factor);
          inv = (1.0 - smooth) * inv / r.factor + smooth * inv;
        }
        break;
      }
    }
    out[static_cast<std::size_t>(i)] = static_cast<float>(inv);
  }
  return out;
}

float rope_attention_scaling(const model_config& /*c*/) { return 1.0f; }

}  // namespace loraplex::model
