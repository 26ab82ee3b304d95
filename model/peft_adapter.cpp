#include "model/peft_adapter.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <regex>

#include <nlohmann/json.hpp>

#include "kernels/dtype.hpp"
#include "model/safetensors.hpp"

namespace loraplex::model {

namespace {

/// PEFT's "all-linear" for a Llama decoder: every linear layer but the output layer (lm_head).
constexpr std::array<const char*, num_module_kinds> all_linear_names = {"q_proj",    "k_proj", "v_proj",   "o_proj",
                                                                        "gate_proj", "up_proj", "down_proj"};

constexpr std::string_view key_prefix = "base_model.model.";

[[nodiscard]] bool ends_with(std::string_view s, std::string_view suffix) noexcept {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

[[nodiscard]] bool contains(std::string_view s, std::string_view part) noexcept {
  return s.find(part) != std::string_view::npos;
}

/// Compiles a regex from a config field; an invalid one is the file's fault, so a format_error naming the field.
[[nodiscard]] std::regex compile(const std::string& pattern, const std::string& source, const std::string& field) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw format_error(source + ": " + field + " \"" + pattern + "\" is not a valid regular expression: " + e.what());
  }
}

/// PEFT's `re.match(rf"(.*\.)?({key})$", name)` for rank_pattern / alpha_pattern keys.
[[nodiscard]] std::string pattern_regex(const std::string& key) { return "(.*\\.)?(" + key + ")"; }

/// PEFT's layer-index extraction (`re.match`, anchored at the start only, hence match_continuous).
[[nodiscard]] std::optional<long> layer_index(const std::string& name, const std::string& regex_text) {
  std::smatch m;
  if (!std::regex_search(name, m, std::regex(regex_text), std::regex_constants::match_continuous)) return std::nullopt;
  const std::string digits = m[1].str();
  long v = 0;
  const auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  if (ec != std::errc() || p != digits.data() + digits.size()) return std::nullopt;
  return v;
}

/// adapter_config.json: a template so that load_peft_adapter can read the file as nlohmann::ordered_json and
/// keep rank_pattern / alpha_pattern in file order (nlohmann::json sorts keys; "first match wins" needs order).
template <class Json>
class config_parser {
 public:
  config_parser(const Json& j, const std::string& source) : j_(j), source_(source) {}

  [[nodiscard]] adapter_config parse() const {
    if (!j_.is_object()) throw format_error(source_ + ": not a JSON object");
    adapter_config c;

    if (const Json* t = get("peft_type")) {
      if (!t->is_string()) fail("peft_type", "must be a string");
      if (t->template get<std::string>() != "LORA") {
        refuse("peft_type \"" + t->template get<std::string>() + "\" is not supported (loraplex serves LoRA adapters)");
      }
    }
    refuse_if_true("use_dora", "DoRA (weight-decomposed LoRA) is not supported");
    refuse_if_true("lora_bias", "LoRA bias terms are not supported");
    refuse_if_true("fan_in_fan_out", "transposed (GPT-2 Conv1D style) base weights are not supported");
    refuse_if_true("use_qalora", "QA-LoRA (input pooling for quantized bases) is not supported");
    refuse_if_set("modules_to_save",
                  "full replacement weights for whole modules are not supported; serve the merged model instead");
    refuse_if_set("exclude_modules", "excluded modules are not supported; list the targets in target_modules instead");
    refuse_if_set("layer_replication", "layer replication changes the base model's layers and is not supported");
    refuse_if_set("target_parameters", "LoRA on raw parameters (not Linear modules) is not supported");
    refuse_if_set("trainable_token_indices", "trainable token embeddings are not supported");
    refuse_if_set("alora_invocation_tokens", "activated LoRA (alora_invocation_tokens) is not supported");
    refuse_if_set("use_bdlora", "block-diagonal LoRA is not supported");

    if (const Json* r = get("r")) {
      if (!r->is_number_integer()) fail("r", "must be an integer, got " + r->dump());
      const auto v = r->template get<std::int64_t>();
      if (v <= 0 || v > std::numeric_limits<int>::max()) refuse("r " + r->dump() + " is not a positive rank");
      c.r = static_cast<int>(v);
    }
    if (const Json* a = get("lora_alpha")) {
      if (!a->is_number()) fail("lora_alpha", "must be a number, got " + a->dump());
      c.lora_alpha = a->template get<double>();
    }
    if (const Json* b = get("use_rslora")) {
      if (!b->is_boolean()) fail("use_rslora", "must be true or false");
      c.use_rslora = b->template get<bool>();
    }

    const Json* tm = get("target_modules");
    if (!tm) {
      refuse("target_modules is missing or null: name the modules explicitly (PEFT's per-model default is not "
             "applied)");
    }
    if (tm->is_string()) {
      const auto s = tm->template get<std::string>();
      std::string lower = s;
      std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char ch) { return std::tolower(ch); });
      c.all_linear = lower == "all-linear";
      if (!c.all_linear) (void)compile(s, source_, "target_modules");
      c.target_modules = s;
    } else if (tm->is_array()) {
      std::vector<std::string> names;
      for (const auto& e : *tm) {
        if (!e.is_string()) fail("target_modules", "must be a list of strings or a string, got " + tm->dump());
        names.push_back(e.template get<std::string>());
      }
      c.target_modules = std::move(names);
    } else {
      fail("target_modules", "must be a list of strings or a string, got " + tm->dump());
    }

    if (const Json* rp = get("rank_pattern")) {
      if (!rp->is_object()) fail("rank_pattern", "must be an object");
      for (const auto& [key, v] : rp->items()) {
        (void)compile(pattern_regex(key), source_, "rank_pattern key");
        if (!v.is_number_integer()) fail("rank_pattern", "\"" + key + "\" must map to an integer rank");
        const auto rank = v.template get<std::int64_t>();
        if (rank <= 0 || rank > std::numeric_limits<int>::max()) {
          refuse("rank_pattern \"" + key + "\": " + v.dump() + " is not a positive rank");
        }
        c.rank_pattern.emplace_back(key, static_cast<int>(rank));
      }
    }
    if (const Json* ap = get("alpha_pattern")) {
      if (!ap->is_object()) fail("alpha_pattern", "must be an object");
      for (const auto& [key, v] : ap->items()) {
        (void)compile(pattern_regex(key), source_, "alpha_pattern key");
        if (!v.is_number()) fail("alpha_pattern", "\"" + key + "\" must map to a number");
        c.alpha_pattern.emplace_back(key, v.template get<double>());
      }
    }

    if (const Json* lt = get("layers_to_transform")) {
      std::vector<int> layers;
      if (lt->is_number_integer()) {
        layers.push_back(lt->template get<int>());
      } else if (lt->is_array()) {
        for (const auto& e : *lt) {
          if (!e.is_number_integer()) fail("layers_to_transform", "must be an integer or a list of integers");
          layers.push_back(e.template get<int>());
        }
      } else {
        fail("layers_to_transform", "must be an integer or a list of integers");
      }
      // PEFT: an empty list restricts nothing.
      if (!layers.empty()) c.layers_to_transform = std::move(layers);
    }
    if (const Json* lp = get("layers_pattern")) {
      if (lp->is_string()) {
        if (!lp->template get<std::string>().empty()) c.layers_pattern.push_back(lp->template get<std::string>());
      } else if (lp->is_array()) {
        for (const auto& e : *lp) {
          if (!e.is_string()) fail("layers_pattern", "must be a string or a list of strings");
          c.layers_pattern.push_back(e.template get<std::string>());
        }
      } else {
        fail("layers_pattern", "must be a string or a list of strings");
      }
      for (const auto& p : c.layers_pattern) (void)compile(".*\\." + p + "\\.(\\d+)\\.", source_, "layers_pattern");
    }
    return c;
  }

 private:
  /// nullptr when absent or null: PEFT writes every field, null meaning "not used".
  [[nodiscard]] const Json* get(const char* key) const {
    const auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }

  [[noreturn]] void fail(const std::string& field, const std::string& why) const {
    throw format_error(source_ + ": " + field + " " + why);
  }
  [[noreturn]] void refuse(const std::string& why) const { throw unsupported_error(source_ + ": " + why); }

  void refuse_if_true(const char* key, const std::string& why) const {
    const Json* v = get(key);
    if (!v) return;
    if (!v->is_boolean()) fail(key, "must be true or false, got " + v->dump());
    if (v->template get<bool>()) refuse(std::string(key) + " is true: " + why);
  }

  /// Refuses a field that is set to anything but null, false or an empty list/object/string.
  void refuse_if_set(const char* key, const std::string& why) const {
    const Json* v = get(key);
    if (!v) return;
    if (v->is_boolean() && !v->template get<bool>()) return;
    if ((v->is_array() || v->is_object()) && v->empty()) return;
    if (v->is_string() && v->template get<std::string>().empty()) return;
    refuse(std::string(key) + " " + v->dump() + " is set: " + why);
  }

  const Json& j_;
  const std::string& source_;
};

/// (layer, kind) for "model.layers.{i}.{self_attn|mlp}.{kind}"; nullopt for any other name.
[[nodiscard]] std::optional<std::pair<int, module_kind>> parse_module_name(std::string_view name, int num_layers) {
  constexpr std::string_view layers = "model.layers.";
  if (name.substr(0, layers.size()) != layers) return std::nullopt;
  name.remove_prefix(layers.size());
  const auto dot = name.find('.');
  if (dot == std::string_view::npos || dot == 0) return std::nullopt;
  int layer = -1;
  const auto [p, ec] = std::from_chars(name.data(), name.data() + dot, layer);
  if (ec != std::errc() || p != name.data() + dot || layer < 0 || layer >= num_layers) return std::nullopt;
  const std::string_view rest = name.substr(dot + 1);
  for (module_kind k : all_module_kinds) {
    std::string expect(module_parent(k));
    expect += '.';
    expect += module_short_name(k);
    if (rest == expect) return std::pair{layer, k};
  }
  return std::nullopt;
}

/// f32 copy of a F32/F16/BF16 tensor. The bytes are copied first: a tensor's offset in the file need not be
/// aligned for its element type.
[[nodiscard]] std::vector<float> to_f32(const tensor_view& t) {
  const auto n = static_cast<std::size_t>(t.numel());
  std::vector<float> out(n);
  if (t.type == dtype::f32) {
    if (t.bytes) std::memcpy(out.data(), t.data, t.bytes);
    return out;
  }
  std::vector<std::uint16_t> raw(n);
  if (t.bytes) std::memcpy(raw.data(), t.data, t.bytes);
  for (std::size_t i = 0; i < n; ++i) out[i] = load_as_f32(raw.data(), t.type, i);
  return out;
}

[[nodiscard]] std::string shape_str(std::int64_t a, std::int64_t b) {
  return "[" + std::to_string(a) + ", " + std::to_string(b) + "]";
}

[[nodiscard]] std::string describe_targets(const adapter_config& c) {
  if (const auto* s = std::get_if<std::string>(&c.target_modules)) return "\"" + *s + "\"";
  std::string out = "[";
  for (const auto& n : std::get<std::vector<std::string>>(c.target_modules)) {
    out += (out.size() > 1 ? ", \"" : "\"") + n + "\"";
  }
  return out + "]";
}

}  // namespace

bool adapter_config::targets(const std::string& module_name) const {
  // A regex string is matched against the whole name and, as in PEFT, ignores layers_to_transform.
  if (!all_linear) {
    if (const auto* re = std::get_if<std::string>(&target_modules)) {
      return std::regex_match(module_name, std::regex(*re));
    }
  }
  // "all-linear" is, as in PEFT, expanded to the list of linear module names before matching.
  std::vector<std::string> names;
  if (all_linear) {
    names.assign(all_linear_names.begin(), all_linear_names.end());
  } else {
    names = std::get<std::vector<std::string>>(target_modules);
    // PEFT: an exact full-name entry targets the module regardless of layers_to_transform.
    if (std::find(names.begin(), names.end(), module_name) != names.end()) return true;
  }
  const bool found = std::any_of(names.begin(), names.end(),
                                 [&](const std::string& n) { return ends_with(module_name, "." + n); });
  if (!found || !layers_to_transform) return found;

  std::optional<long> index;
  if (layers_pattern.empty()) {
    index = layer_index(module_name, R"(.*\.[^.]*\.(\d+)\.)");
  } else {
    for (const auto& p : layers_pattern) {
      index = layer_index(module_name, ".*\\." + p + "\\.(\\d+)\\.");
      if (index) break;
    }
  }
  if (!index) return false;
  return std::find(layers_to_transform->begin(), layers_to_transform->end(), *index) != layers_to_transform->end();
}

int adapter_config::rank_for(const std::string& module_name) const {
  for (const auto& [key, rank] : rank_pattern) {
    if (std::regex_match(module_name, std::regex(pattern_regex(key)))) return rank;
  }
  return r;
}

double adapter_config::scaling_for(const std::string& module_name) const {
  const int rank = rank_for(module_name);
  double alpha = lora_alpha;
  for (const auto& [key, a] : alpha_pattern) {
    if (std::regex_match(module_name, std::regex(pattern_regex(key)))) {
      alpha = a;
      break;
    }
  }
  return use_rslora ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / rank;
}

adapter_config parse_adapter_config(const nlohmann::json& j, const std::string& source) {
  return config_parser<nlohmann::json>(j, source).parse();
}

int lora_adapter::max_rank() const noexcept {
  int best = 0;
  for (const auto& layer : modules) {
    for (const auto& m : layer) {
      if (m) best = std::max(best, m->rank);
    }
  }
  return best;
}

std::size_t lora_adapter::weight_bytes(std::size_t element_size) const noexcept {
  std::size_t total = 0;
  for (const auto& layer : modules) {
    for (const auto& m : layer) {
      if (m) {
        total += static_cast<std::size_t>(m->rank) * static_cast<std::size_t>(m->in_features + m->out_features) *
                 element_size;
      }
    }
  }
  return total;
}

int lora_adapter::num_targeted() const noexcept {
  int n = 0;
  for (const auto& layer : modules) {
    for (const auto& m : layer) n += m ? 1 : 0;
  }
  return n;
}

lora_adapter load_peft_adapter(const std::filesystem::path& dir, const model_config& base, const std::string& name) {
  std::error_code ec;
  const auto config_path = dir / "adapter_config.json";
  const std::string config_where = config_path.string();
  if (!std::filesystem::is_regular_file(config_path, ec)) {
    throw format_error(config_where + ": not found (a PEFT adapter directory holds adapter_config.json and "
                                      "adapter_model.safetensors)");
  }
  nlohmann::ordered_json raw;
  {
    std::ifstream in(config_path, std::ios::binary);
    if (!in) throw format_error(config_where + ": cannot open");
    try {
      raw = nlohmann::ordered_json::parse(in);
    } catch (const nlohmann::ordered_json::exception& e) {
      throw format_error(config_where + ": not valid JSON: " + e.what());
    }
  }

  lora_adapter out;
  out.name = name;
  out.dir = dir;
  out.config = config_parser<nlohmann::ordered_json>(raw, config_where).parse();
  const adapter_config& cfg = out.config;

  const auto weights_path = dir / "adapter_model.safetensors";
  if (!std::filesystem::is_regular_file(weights_path, ec)) {
    if (std::filesystem::is_regular_file(dir / "adapter_model.bin", ec)) {
      throw unsupported_error(
          (dir / "adapter_model.bin").string() +
          ": adapters saved as a pickle (adapter_model.bin) are not read; convert it to adapter_model.safetensors "
          "in that directory with: python3 -c \"import torch; from safetensors.torch import save_file; "
          "save_file(torch.load('adapter_model.bin', map_location='cpu'), 'adapter_model.safetensors')\"");
    }
    throw format_error(weights_path.string() + ": not found (and no adapter_model.bin either)");
  }

  // Embedding and output-layer LoRA would silently do nothing here, so refuse the config that asks for them.
  for (const char* special : {"model.embed_tokens", "lm_head"}) {
    if (cfg.targets(special)) {
      throw unsupported_error(config_where + ": target_modules " + describe_targets(cfg) + " matches '" + special +
                              "': LoRA on " + (special[0] == 'l' ? "the output layer" : "the token embeddings") +
                              " is not supported");
    }
  }

  const int num_layers = base.num_layers;
  std::vector<std::array<bool, num_module_kinds>> targeted(static_cast<std::size_t>(num_layers));
  bool any = false;
  for (int l = 0; l < num_layers; ++l) {
    for (module_kind k : all_module_kinds) {
      const bool t = cfg.targets(module_path(l, k));
      targeted[static_cast<std::size_t>(l)][static_cast<std::size_t>(k)] = t;
      any = any || t;
    }
  }
  if (!any) {
    throw unsupported_error("adapter '" + name + "' (" + dir.string() + ") targets none of the model's modules " +
                            "(target_modules " + describe_targets(cfg) +
                            "): refusing to serve the base model in its place");
  }

  const auto file = safetensors_file::open(weights_path);
  const std::string weights_where = weights_path.string();
  struct pair_views {
    const tensor_view* a = nullptr;
    const tensor_view* b = nullptr;
  };
  std::vector<std::array<pair_views, num_module_kinds>> found(static_cast<std::size_t>(num_layers));
  for (const auto& t : file.tensors()) {
    const std::string what = weights_where + ": tensor '" + t.name + "'";
    const std::string_view key = t.name;
    if (contains(key, "lora_embedding_A") || contains(key, "lora_embedding_B")) {
      throw unsupported_error(what + " is embedding LoRA (lora_embedding_A/B), which is not supported");
    }
    if (contains(key, "lora_magnitude_vector")) {
      throw unsupported_error(what + " is a DoRA magnitude (lora_magnitude_vector, use_dora): not supported");
    }
    if (ends_with(key, "lora_A.bias") || ends_with(key, "lora_B.bias")) {
      throw unsupported_error(what + " is a LoRA bias (lora_bias): not supported");
    }
    if (contains(key, "modules_to_save")) {
      throw unsupported_error(what + " is a full replacement weight (modules_to_save): not supported");
    }
    if (key.substr(0, key_prefix.size()) != key_prefix) {
      throw format_error(what + " does not start with '" + std::string(key_prefix) + "'");
    }
    const std::string_view stripped = key.substr(key_prefix.size());
    const bool is_a = ends_with(stripped, ".lora_A.weight");
    const bool is_b = ends_with(stripped, ".lora_B.weight");
    if (contains(stripped, "embed_tokens") || contains(stripped, "lm_head")) {
      throw unsupported_error(what + " is for " + (contains(stripped, "lm_head") ? "lm_head" : "embed_tokens") +
                              ": LoRA or full weights on the embeddings or the output layer are not supported");
    }
    if (!is_a && !is_b) {
      throw format_error(what + " is not a LoRA weight (expected <module>.lora_A.weight or <module>.lora_B.weight)");
    }
    const std::string module(stripped.substr(0, stripped.size() - std::string_view(".lora_A.weight").size()));
    const auto parsed = parse_module_name(module, num_layers);
    if (!parsed) {
      throw format_error(what + " names module '" + module + "', which is not a linear module of this model " +
                         "(model.layers.{0.." + std::to_string(num_layers - 1) +
                         "}.self_attn.{q,k,v,o}_proj or .mlp.{gate,up,down}_proj)");
    }
    const auto [layer, kind] = *parsed;
    if (!targeted[static_cast<std::size_t>(layer)][static_cast<std::size_t>(kind)]) {
      throw format_error(what + " is for a module the config does not target (target_modules " +
                         describe_targets(cfg) + ")");
    }
    auto& slot = found[static_cast<std::size_t>(layer)][static_cast<std::size_t>(kind)];
    (is_a ? slot.a : slot.b) = &t;
  }

  out.modules.resize(static_cast<std::size_t>(num_layers));
  for (int l = 0; l < num_layers; ++l) {
    for (module_kind k : all_module_kinds) {
      if (!targeted[static_cast<std::size_t>(l)][static_cast<std::size_t>(k)]) continue;
      const std::string module = module_path(l, k);
      const std::string key = std::string(key_prefix) + module;
      const auto& slot = found[static_cast<std::size_t>(l)][static_cast<std::size_t>(k)];
      for (const auto& [view, suffix] : {std::pair{slot.a, ".lora_A.weight"}, std::pair{slot.b, ".lora_B.weight"}}) {
        if (!view) {
          throw format_error(weights_where + ": tensor '" + key + suffix + "' is missing (module " + module +
                             " is targeted by the config)");
        }
      }
      const int rank = cfg.rank_for(module);
      const int in = module_in_features(base, k);
      const int out_f = module_out_features(base, k);
      const tensor_view& a = *slot.a;
      const tensor_view& b = *slot.b;
      if (a.shape.size() == 2 && a.shape[1] == in && a.shape[0] != rank) {
        throw format_error(weights_where + ": tensor '" + a.name + "' has rank " + std::to_string(a.shape[0]) +
                           " but adapter_config.json gives module " + module + " rank " + std::to_string(rank) +
                           " (r / rank_pattern)");
      }
      if (a.shape.size() != 2 || a.shape[0] != rank || a.shape[1] != in) {
        throw format_error(weights_where + ": tensor '" + a.name + "' has shape " + a.shape_string() +
                           ", expected " + shape_str(rank, in) + " ([r, in_features] for the base model)");
      }
      if (b.shape.size() != 2 || b.shape[0] != out_f || b.shape[1] != rank) {
        throw format_error(weights_where + ": tensor '" + b.name + "' has shape " + b.shape_string() +
                           ", expected " + shape_str(out_f, rank) + " ([out_features, r] for the base model)");
      }

      lora_module m;
      m.rank = rank;
      const double scaling = cfg.scaling_for(module);
      m.scaling = static_cast<float>(scaling);
      m.in_features = in;
      m.out_features = out_f;
      m.a = to_f32(a);
      const std::vector<float> bf = to_f32(b);  // [out, rank]
      m.bt.resize(static_cast<std::size_t>(rank) * static_cast<std::size_t>(out_f));
      for (int o = 0; o < out_f; ++o) {
        for (int r = 0; r < rank; ++r) {
          m.bt[static_cast<std::size_t>(r) * out_f + o] =
              static_cast<float>(static_cast<double>(bf[static_cast<std::size_t>(o) * rank + r]) * scaling);
        }
      }
      out.modules[static_cast<std::size_t>(l)][static_cast<std::size_t>(k)] = std::move(m);
    }
  }
  return out;
}

}  // namespace loraplex::model
