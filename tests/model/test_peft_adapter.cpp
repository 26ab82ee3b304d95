#define BOOST_TEST_MODULE test_peft_adapter
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstring>
#include <functional>
#include <set>

#include <nlohmann/json.hpp>

#include "model/peft_adapter.hpp"
#include "model/safetensors.hpp"
#include "test_util.hpp"

using namespace loraplex;
using namespace loraplex::model;
using loraplex::test::check_error;
using loraplex::test::read_file;
using loraplex::test::temp_dir;
using loraplex::test::write_file;
using ojson = nlohmann::ordered_json;

namespace {

const std::filesystem::path adapters_dir = LORAPLEX_TEST_DATA "/tiny-llama/adapters";

[[nodiscard]] const model_config& base() {
  static const model_config c = load_hf_config(LORAPLEX_TEST_DATA "/tiny-llama/base");
  return c;
}

/// A tensor held in memory as f32, written in any dtype.
struct owned_tensor {
  std::string name;
  std::vector<std::int64_t> shape;
  std::vector<float> values;
};

[[nodiscard]] std::vector<float> to_f32(const tensor_view& t) {
  std::vector<float> out(static_cast<std::size_t>(t.numel()));
  std::vector<std::byte> raw(t.bytes);
  std::memcpy(raw.data(), t.data, t.bytes);
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (t.type == dtype::f32) {
      std::memcpy(&out[i], raw.data() + 4 * i, 4);
    } else {
      std::uint16_t h;
      std::memcpy(&h, raw.data() + 2 * i, 2);
      out[i] = t.type == dtype::f16 ? f16_to_f32(h) : bf16_to_f32(h);
    }
  }
  return out;
}

[[nodiscard]] std::vector<owned_tensor> read_tensors(const std::filesystem::path& file) {
  const auto f = safetensors_file::open(file);
  std::vector<owned_tensor> out;
  for (const auto& t : f.tensors()) out.push_back({t.name, t.shape, to_f32(t)});
  return out;
}

[[nodiscard]] ojson fixture_config(const std::string& adapter) {
  return ojson::parse(read_file(adapters_dir / adapter / "adapter_config.json"));
}

void write_adapter(const std::filesystem::path& dir, const ojson& config, const std::vector<owned_tensor>& tensors,
                   dtype type = dtype::f32) {
  std::filesystem::create_directories(dir);
  write_file(dir / "adapter_config.json", config.dump(2));
  std::vector<std::vector<std::uint16_t>> half(tensors.size());
  std::vector<tensor_to_write> out;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    if (type == dtype::f32) {
      out.push_back({t.name, type, t.shape, t.values.data()});
      continue;
    }
    for (float v : t.values) half[i].push_back(type == dtype::f16 ? f32_to_f16(v) : f32_to_bf16(v));
    out.push_back({t.name, type, t.shape, half[i].data()});
  }
  write_safetensors(dir / "adapter_model.safetensors", out, {{"format", "pt"}});
}

/// Copies a fixture adapter into dir, letting the test edit its config and its tensors on the way.
void copy_adapter(const std::string& from, const std::filesystem::path& dir,
                  const std::function<void(ojson&)>& edit_config = {},
                  const std::function<void(std::vector<owned_tensor>&)>& edit_tensors = {}, dtype type = dtype::f32) {
  auto config = fixture_config(from);
  auto tensors = read_tensors(adapters_dir / from / "adapter_model.safetensors");
  if (edit_config) edit_config(config);
  if (edit_tensors) edit_tensors(tensors);
  write_adapter(dir, config, tensors, type);
}

[[nodiscard]] std::string key(int layer, module_kind k, char ab) {
  return "base_model.model." + module_path(layer, k) + ".lora_" + ab + ".weight";
}

/// Deterministic, distinct values (so transposition or scaling mistakes show).
[[nodiscard]] std::vector<float> pattern_values(std::size_t n, float seed) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = std::sin(seed + 0.37f * static_cast<float>(i)) * 0.1f;
  return v;
}

/// LoRA A [r, in] and B [out, r] for one base module.
void add_lora(std::vector<owned_tensor>& t, int layer, module_kind k, int rank) {
  const int in = module_in_features(base(), k);
  const int out = module_out_features(base(), k);
  const float seed = static_cast<float>(layer * 10 + static_cast<int>(k));
  t.push_back({key(layer, k, 'A'), {rank, in}, pattern_values(static_cast<std::size_t>(rank * in), seed)});
  t.push_back({key(layer, k, 'B'), {out, rank}, pattern_values(static_cast<std::size_t>(out * rank), seed + 0.5f)});
}

void erase_tensor(std::vector<owned_tensor>& t, const std::string& name) {
  const auto before = t.size();
  std::erase_if(t, [&](const owned_tensor& x) { return x.name == name; });
  BOOST_REQUIRE_EQUAL(t.size() + 1, before);
}

/// Checks every module's a == A and bt == Bᵀ·scaling against the adapter's own file, and returns the set of
/// targeted (layer, kind) pairs.
std::set<std::pair<int, module_kind>> check_weights(const lora_adapter& a, const std::filesystem::path& dir) {
  const auto f = safetensors_file::open(dir / "adapter_model.safetensors");
  std::set<std::pair<int, module_kind>> seen;
  BOOST_REQUIRE_EQUAL(a.modules.size(), 3u);
  for (int l = 0; l < 3; ++l) {
    for (module_kind k : all_module_kinds) {
      const auto& m = a.modules[static_cast<std::size_t>(l)][static_cast<std::size_t>(k)];
      if (!m) {
        BOOST_CHECK(!f.find(key(l, k, 'A')));
        continue;
      }
      seen.emplace(l, k);
      const tensor_view* at = f.find(key(l, k, 'A'));
      const tensor_view* bt = f.find(key(l, k, 'B'));
      BOOST_REQUIRE(at && bt);
      BOOST_CHECK_EQUAL(m->in_features, module_in_features(base(), k));
      BOOST_CHECK_EQUAL(m->out_features, module_out_features(base(), k));
      const auto av = to_f32(*at);
      const auto bv = to_f32(*bt);
      BOOST_REQUIRE_EQUAL(m->a.size(), av.size());
      BOOST_CHECK(m->a == av);
      BOOST_REQUIRE_EQUAL(m->bt.size(), bv.size());
      const int r = m->rank;
      const int out = m->out_features;
      std::size_t bad = 0;
      for (int o = 0; o < out; ++o) {
        for (int k2 = 0; k2 < r; ++k2) {
          const double want = static_cast<double>(bv[static_cast<std::size_t>(o * r + k2)]) * m->scaling;
          const double got = m->bt[static_cast<std::size_t>(k2 * out + o)];
          bad += std::abs(got - want) > 1e-6 * std::abs(want) + 1e-30;
        }
      }
      BOOST_CHECK_MESSAGE(bad == 0, module_path(l, k) << ": " << bad << " elements of bt differ from Bᵀ·scaling");
    }
  }
  return seen;
}

[[nodiscard]] std::set<std::pair<int, module_kind>> all_layers(std::initializer_list<module_kind> kinds) {
  std::set<std::pair<int, module_kind>> s;
  for (int l = 0; l < 3; ++l) {
    for (module_kind k : kinds) s.emplace(l, k);
  }
  return s;
}

using enum module_kind;

}  // namespace

BOOST_AUTO_TEST_CASE(fixture_adapters_load) {
  struct expect {
    const char* name;
    int rank;
    double scaling;
    std::set<std::pair<int, module_kind>> modules;
  };
  const std::vector<expect> cases = {
      {"sql-r8", 8, 2.0, all_layers({q, v})},
      {"chat-r16", 16, 2.0, all_layers({q, k, v, o, gate, up, down})},
      {"rs-r4", 4, 4.0, all_layers({q, k, v, o})},  // rsLoRA: 8 / sqrt(4)
      {"mlp-r12", 12, 2.0, all_layers({q, gate, up, down})},
  };
  for (const auto& c : cases) {
    BOOST_TEST_CONTEXT(c.name) {
      const auto dir = adapters_dir / c.name;
      const auto a = load_peft_adapter(dir, base(), c.name);
      BOOST_CHECK_EQUAL(a.name, c.name);
      BOOST_CHECK_EQUAL(a.dir, dir);
      BOOST_CHECK_EQUAL(a.config.r, c.rank);
      BOOST_CHECK_EQUAL(a.max_rank(), c.rank);
      BOOST_CHECK_EQUAL(a.num_targeted(), static_cast<int>(c.modules.size()));
      BOOST_CHECK(check_weights(a, dir) == c.modules);
      std::size_t bytes = 0;
      for (const auto& [l, kind] : c.modules) {
        const auto& m = *a.modules[static_cast<std::size_t>(l)][static_cast<std::size_t>(kind)];
        BOOST_CHECK_EQUAL(m.rank, c.rank);
        BOOST_CHECK_CLOSE(m.scaling, c.scaling, 1e-5);
        bytes += static_cast<std::size_t>(c.rank) *
                 static_cast<std::size_t>(module_in_features(base(), kind) + module_out_features(base(), kind));
      }
      BOOST_CHECK_EQUAL(a.weight_bytes(2), 2 * bytes);
      BOOST_CHECK_EQUAL(a.weight_bytes(4), 4 * bytes);
    }
  }
  // sql-r8 by hand: q 8·(128+128) + v 8·(128+64) per layer, 3 layers.
  BOOST_CHECK_EQUAL(load_peft_adapter(adapters_dir / "sql-r8", base(), "sql").weight_bytes(2), 2u * 3 * (2048 + 1536));
}

BOOST_AUTO_TEST_CASE(f16_and_bf16_adapters_convert_to_f32) {
  temp_dir tmp;
  for (dtype t : {dtype::f16, dtype::bf16}) {
    const auto dir = tmp.path() / std::string(dtype_name(t));
    copy_adapter("sql-r8", dir, {}, {}, t);
    const auto a = load_peft_adapter(dir, base(), "half");
    BOOST_CHECK_EQUAL(a.num_targeted(), 6);
    BOOST_CHECK(check_weights(a, dir) == all_layers({q, v}));
    // The value really is the rounded one, not the f32 original.
    const auto orig = read_tensors(adapters_dir / "sql-r8" / "adapter_model.safetensors");
    const auto& m = *a.modules[0][static_cast<std::size_t>(q)];
    for (const auto& o : orig) {
      if (o.name != key(0, q, 'A')) continue;
      for (std::size_t i = 0; i < o.values.size(); ++i) {
        const float x = o.values[i];
        const float want = t == dtype::f16 ? f16_to_f32(f32_to_f16(x)) : bf16_to_f32(f32_to_bf16(x));
        BOOST_REQUIRE_EQUAL(m.a[i], want);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(rank_and_alpha_patterns) {
  temp_dir tmp;
  auto config = fixture_config("sql-r8");  // r 8, alpha 16, q and v
  // File order matters: the first matching key wins, so layer 0's q_proj gets 4, not 2 (sorted order would give 2).
  config["rank_pattern"] = ojson::parse(R"({"q_proj": 4, "model.layers.0.self_attn.q_proj": 2})");
  config["alpha_pattern"] = ojson::parse(R"({"layers.1.self_attn.v_proj": 64})");
  std::vector<owned_tensor> t;
  for (int l = 0; l < 3; ++l) {
    add_lora(t, l, q, 4);
    add_lora(t, l, v, 8);
  }
  const auto dir = tmp.path() / "patterns";
  write_adapter(dir, config, t);
  const auto a = load_peft_adapter(dir, base(), "patterns");
  BOOST_CHECK(check_weights(a, dir) == all_layers({q, v}));
  for (int l = 0; l < 3; ++l) {
    const auto& mq = *a.modules[static_cast<std::size_t>(l)][static_cast<std::size_t>(q)];
    const auto& mv = *a.modules[static_cast<std::size_t>(l)][static_cast<std::size_t>(v)];
    BOOST_CHECK_EQUAL(mq.rank, 4);
    BOOST_CHECK_CLOSE(mq.scaling, 16.0 / 4, 1e-5);
    BOOST_CHECK_EQUAL(mv.rank, 8);
    BOOST_CHECK_CLOSE(mv.scaling, l == 1 ? 64.0 / 8 : 16.0 / 8, 1e-5);
  }
  BOOST_CHECK_EQUAL(a.max_rank(), 8);
  BOOST_CHECK_EQUAL(a.config.rank_pattern.front().first, "q_proj");  // file order kept

  // The same rules through parse_adapter_config, with rsLoRA.
  auto j = nlohmann::json::parse(config.dump());
  j["use_rslora"] = true;
  j["rank_pattern"] = {{"q_proj", 4}};
  const auto c = parse_adapter_config(j, "adapter_config.json");
  BOOST_CHECK_EQUAL(c.rank_for("model.layers.2.self_attn.q_proj"), 4);
  BOOST_CHECK_EQUAL(c.rank_for("model.layers.2.self_attn.v_proj"), 8);
  BOOST_CHECK_CLOSE(c.scaling_for("model.layers.2.self_attn.q_proj"), 16.0 / 2, 1e-9);
  BOOST_CHECK_CLOSE(c.scaling_for("model.layers.1.self_attn.v_proj"), 64.0 / std::sqrt(8.0), 1e-9);
  BOOST_CHECK_CLOSE(c.scaling_for("model.layers.0.self_attn.v_proj"), 16.0 / std::sqrt(8.0), 1e-9);
  // A key matches a whole dotted suffix only: "proj" is not a suffix component of "q_proj".
  j["rank_pattern"] = {{"proj", 2}};
  BOOST_CHECK_EQUAL(parse_adapter_config(j, "x").rank_for("model.layers.0.self_attn.q_proj"), 8);
}

BOOST_AUTO_TEST_CASE(target_modules_forms) {
  temp_dir tmp;
  {  // a regex string must match the whole name
    auto config = fixture_config("sql-r8");
    config["target_modules"] = R"(.*\.layers\.[02]\.self_attn\.(q|k)_proj)";
    std::vector<owned_tensor> t;
    for (int l : {0, 2}) {
      add_lora(t, l, q, 8);
      add_lora(t, l, k, 8);
    }
    const auto dir = tmp.path() / "regex";
    write_adapter(dir, config, t);
    const auto a = load_peft_adapter(dir, base(), "regex");
    BOOST_CHECK((check_weights(a, dir) == std::set<std::pair<int, module_kind>>{{0, q}, {0, k}, {2, q}, {2, k}}));
    BOOST_CHECK(!a.config.targets("model.layers.1.self_attn.q_proj"));

    auto j = nlohmann::json::parse(config.dump());
    j["target_modules"] = "q_proj";  // a partial match is not a match
    BOOST_CHECK(!parse_adapter_config(j, "x").targets("model.layers.0.self_attn.q_proj"));
  }
  for (const char* spelling : {"all-linear", "ALL-Linear"}) {  // every linear layer, never lm_head
    const auto dir = tmp.path() / spelling;
    copy_adapter("chat-r16", dir, [&](ojson& c) { c["target_modules"] = spelling; });
    const auto a = load_peft_adapter(dir, base(), "all");
    BOOST_CHECK(a.config.all_linear);
    BOOST_CHECK_EQUAL(a.num_targeted(), 21);
    BOOST_CHECK(!a.config.targets("lm_head"));
    BOOST_CHECK(!a.config.targets("model.embed_tokens"));
  }
  {  // list entries match the name or a dotted suffix
    auto j = nlohmann::json::parse(fixture_config("sql-r8").dump());
    j["target_modules"] = {"self_attn.q_proj", "proj"};
    const auto c = parse_adapter_config(j, "x");
    BOOST_CHECK(c.targets("model.layers.0.self_attn.q_proj"));
    BOOST_CHECK(!c.targets("model.layers.0.self_attn.k_proj"));
    BOOST_CHECK(!c.targets("model.layers.0.mlp.up_proj"));
  }
}

BOOST_AUTO_TEST_CASE(layers_to_transform_and_pattern) {
  temp_dir tmp;
  const auto drop_layer_1 = [](std::vector<owned_tensor>& t) {
    std::erase_if(t, [](const owned_tensor& x) { return x.name.find(".layers.1.") != std::string::npos; });
  };
  const auto dir = tmp.path() / "layers";
  copy_adapter("sql-r8", dir, [](ojson& c) { c["layers_to_transform"] = {0, 2}; }, drop_layer_1);
  const auto a = load_peft_adapter(dir, base(), "layers");
  BOOST_CHECK((check_weights(a, dir) == std::set<std::pair<int, module_kind>>{{0, q}, {0, v}, {2, q}, {2, v}}));

  // The untouched file has layer-1 tensors, for modules the config no longer targets.
  const auto full = tmp.path() / "layers-full";
  copy_adapter("sql-r8", full, [](ojson& c) { c["layers_to_transform"] = {0, 2}; });
  check_error<format_error>("tensor for an untransformed layer", [&] { (void)load_peft_adapter(full, base(), "x"); },
                            {key(1, q, 'A'), "does not target"});

  auto j = nlohmann::json::parse(fixture_config("sql-r8").dump());
  j["layers_to_transform"] = 1;
  j["layers_pattern"] = "layers";
  auto c = parse_adapter_config(j, "x");
  BOOST_CHECK(c.targets("model.layers.1.self_attn.q_proj"));
  BOOST_CHECK(!c.targets("model.layers.0.self_attn.q_proj"));
  j["layers_pattern"] = {"blocks", "h"};
  c = parse_adapter_config(j, "x");
  BOOST_CHECK(!c.targets("model.layers.1.self_attn.q_proj"));
}

BOOST_AUTO_TEST_CASE(config_refusals_name_the_field) {
  temp_dir tmp;
  int n = 0;
  const auto refused = [&](const char* label, const std::function<void(ojson&)>& edit,
                           std::initializer_list<std::string> parts) {
    const auto dir = tmp.path() / "config-cases" / std::to_string(n++);
    copy_adapter("sql-r8", dir, edit);
    check_error<unsupported_error>(label, [&] { (void)load_peft_adapter(dir, base(), "x"); }, parts);
  };
  refused("use_dora", [](ojson& c) { c["use_dora"] = true; }, {"adapter_config.json", "use_dora"});
  refused("modules_to_save", [](ojson& c) { c["modules_to_save"] = {"lm_head"}; }, {"modules_to_save"});
  refused("lora_bias", [](ojson& c) { c["lora_bias"] = true; }, {"lora_bias"});
  refused("fan_in_fan_out", [](ojson& c) { c["fan_in_fan_out"] = true; }, {"fan_in_fan_out"});
  refused("exclude_modules", [](ojson& c) { c["exclude_modules"] = {"q_proj"}; }, {"exclude_modules"});
  refused("peft_type", [](ojson& c) { c["peft_type"] = "IA3"; }, {"peft_type", "IA3"});
  refused("r zero", [](ojson& c) { c["r"] = 0; }, {"r 0"});
  refused("target_modules null", [](ojson& c) { c["target_modules"] = nullptr; }, {"target_modules"});
  refused("target on embed_tokens", [](ojson& c) { c["target_modules"] = {"q_proj", "v_proj", "embed_tokens"}; },
          {"target_modules", "embed_tokens"});
  refused("target on lm_head", [](ojson& c) { c["target_modules"] = {"q_proj", "v_proj", "lm_head"}; },
          {"target_modules", "lm_head"});

  // Accepted: the "unused" spellings of these fields.
  const auto ok = tmp.path() / "ok";
  copy_adapter("sql-r8", ok, [](ojson& c) {
    c["modules_to_save"] = ojson::array();
    c["exclude_modules"] = ojson::array();
    c["use_dora"] = false;
  });
  BOOST_CHECK_EQUAL(load_peft_adapter(ok, base(), "ok").num_targeted(), 6);

  // Type errors are format errors naming the field.
  auto j = nlohmann::json::parse(fixture_config("sql-r8").dump());
  j["r"] = "8";
  check_error<format_error>("r as a string", [&] { (void)parse_adapter_config(j, "cfg.json"); }, {"cfg.json", "r"});
  j["r"] = 8;
  j["target_modules"] = "(unclosed";
  check_error<format_error>("bad regex", [&] { (void)parse_adapter_config(j, "cfg.json"); }, {"target_modules"});
}

BOOST_AUTO_TEST_CASE(targets_nothing_is_refused) {
  temp_dir tmp;
  const auto dir = tmp.path() / "gpt2";
  copy_adapter("sql-r8", dir, [](ojson& c) { c["target_modules"] = {"c_attn", "c_proj"}; });
  check_error<unsupported_error>("targets nothing", [&] { (void)load_peft_adapter(dir, base(), "gpt2-lora"); },
                                 {"adapter 'gpt2-lora'", dir.string(), "targets none of the model's modules",
                                  "target_modules", "c_attn", "refusing to serve the base model"});
}

BOOST_AUTO_TEST_CASE(tensor_refusals_name_the_tensor) {
  temp_dir tmp;
  int n = 0;
  const auto with_tensors = [&](const std::function<void(std::vector<owned_tensor>&)>& edit) {
    const auto dir = tmp.path() / "tensor-cases" / std::to_string(n++);
    copy_adapter("sql-r8", dir, {}, edit);
    return dir;
  };
  const auto load = [&](const std::filesystem::path& dir) {
    return [dir] { (void)load_peft_adapter(dir, base(), "x"); };
  };

  {
    const std::string name = "base_model.model.model.embed_tokens.lora_embedding_A";
    const auto dir = with_tensors([&](auto& t) { t.push_back({name, {8, 512}, std::vector<float>(8 * 512)}); });
    check_error<unsupported_error>("embedding LoRA", load(dir), {name, "lora_embedding_A"});
  }
  {
    const std::string name = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector";
    const auto dir = with_tensors([&](auto& t) { t.push_back({name, {128}, std::vector<float>(128)}); });
    check_error<unsupported_error>("DoRA magnitude", load(dir), {name, "lora_magnitude_vector"});
  }
  {
    const std::string name = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias";
    const auto dir = with_tensors([&](auto& t) { t.push_back({name, {128}, std::vector<float>(128)}); });
    check_error<unsupported_error>("lora_B bias", load(dir), {name, "lora_bias"});
  }
  {
    const std::string name = "base_model.model.lm_head.modules_to_save.weight";
    const auto dir = with_tensors([&](auto& t) { t.push_back({name, {4}, std::vector<float>(4)}); });
    check_error<unsupported_error>("modules_to_save weights", load(dir), {name, "modules_to_save"});
  }
  {
    const std::string name = "base_model.model.lm_head.lora_A.weight";
    const auto dir = with_tensors([&](auto& t) { t.push_back({name, {8, 128}, std::vector<float>(8 * 128)}); });
    check_error<unsupported_error>("lm_head LoRA", load(dir), {name, "lm_head"});
  }
  {  // lora_B of v_proj sized for the query width (no GQA)
    const std::string name = key(1, v, 'B');
    const auto dir = with_tensors([&](auto& t) {
      for (auto& x : t) {
        if (x.name == name) x = {name, {128, 8}, std::vector<float>(128 * 8)};
      }
    });
    check_error<format_error>("shape mismatch", load(dir), {name, "[128, 8]", "[64, 8]"});
  }
  {  // rank of the file differs from the config's r
    const auto dir = tmp.path() / "rank";
    copy_adapter("sql-r8", dir, [](ojson& c) { c["r"] = 16; });
    check_error<format_error>("rank mismatch", load(dir), {key(0, q, 'A'), "rank 8", "rank 16"});
  }
  {
    const auto dir = with_tensors([](auto& t) { erase_tensor(t, key(2, v, 'B')); });
    check_error<format_error>("missing lora_B", load(dir), {key(2, v, 'B'), "missing"});
  }
  {
    const auto dir = tmp.path() / "untargeted";
    copy_adapter("sql-r8", dir, [](ojson& c) { c["target_modules"] = {"q_proj"}; });
    check_error<format_error>("untargeted module", load(dir), {key(0, v, 'A'), "does not target"});
  }
  {
    const std::string name = "base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight";
    const auto dir = with_tensors([&](auto& t) { t.push_back({name, {8, 128}, std::vector<float>(8 * 128)}); });
    check_error<format_error>("unknown module", load(dir), {name, "not a linear module"});
  }
  {
    const std::string name = "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight";
    const auto dir = with_tensors([&](auto& t) { t.push_back({name, {8, 128}, std::vector<float>(8 * 128)}); });
    check_error<format_error>("layer out of range", load(dir), {name});
  }
  {
    const std::string name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight";
    const auto dir = with_tensors([&](auto& t) { t.push_back({name, {8, 128}, std::vector<float>(8 * 128)}); });
    check_error<format_error>("adapter name not stripped", load(dir), {name});
  }
}

BOOST_AUTO_TEST_CASE(adapter_files) {
  temp_dir tmp;
  {  // only a pickle: say how to convert
    const auto dir = tmp.path() / "bin";
    std::filesystem::create_directories(dir);
    write_file(dir / "adapter_config.json", fixture_config("sql-r8").dump());
    write_file(dir / "adapter_model.bin", "not really a pickle");
    check_error<unsupported_error>("only adapter_model.bin", [&] { (void)load_peft_adapter(dir, base(), "x"); },
                                   {"adapter_model.bin", "safetensors", "save_file(torch.load('adapter_model.bin'"});
    std::filesystem::remove(dir / "adapter_model.bin");
    check_error<format_error>("no weights at all", [&] { (void)load_peft_adapter(dir, base(), "x"); },
                              {"adapter_model.safetensors"});
    std::filesystem::remove(dir / "adapter_config.json");
    check_error<format_error>("no config", [&] { (void)load_peft_adapter(dir, base(), "x"); },
                              {(dir / "adapter_config.json").string()});
    write_file(dir / "adapter_config.json", "{\"r\": ");
    check_error<format_error>("config not JSON", [&] { (void)load_peft_adapter(dir, base(), "x"); },
                              {"adapter_config.json", "JSON"});
  }
}
