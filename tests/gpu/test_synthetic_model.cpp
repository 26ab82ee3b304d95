// Any Llama-family shape, not only the fixture's: a random model with odd sizes (head_dim != hidden/heads,
// GQA 3:1, tied embeddings, llama3 RoPE scaling, top-level rope_theta) and a PEFT adapter using all-linear,
// rank_pattern, alpha_pattern, rsLoRA off and layers_to_transform, written to real files, loaded by the real
// loaders and run through the batched, paged engine — against a dense forward pass written here from the
// transformers/PEFT formulas (plain loops in double, no paging, one sequence at a time).
#define BOOST_TEST_MODULE synthetic_model
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "gpu/cpu_device.hpp"
#include "gpu/model_runner.hpp"
#include "model/hf_config.hpp"
#include "model/peft_adapter.hpp"
#include "model/safetensors.hpp"
#include "tools/loraplex_run/offline.hpp"

namespace fs = std::filesystem;
using namespace loraplex;

namespace {

constexpr int vocab = 301, hidden = 96, heads = 3, kv_heads = 1, head_dim = 40, inter = 200, layers = 2;
constexpr double theta = 500000.0, eps = 1e-6;
using mat = std::vector<float>;  // row-major

struct synthetic {
  fs::path dir;
  std::map<std::string, mat> w;                    // base weights by HF name
  std::map<std::string, std::pair<mat, mat>> lora;  // module name → (A [r,in], B [out,r])
  std::map<std::string, double> scaling;           // module name → alpha/r

  synthetic() {
    std::random_device rd;
    dir = fs::temp_directory_path() / ("loraplex-synthetic-" + std::to_string(rd()));
    fs::create_directories(dir / "base");
    fs::create_directories(dir / "adapter");
    std::mt19937 rng(1234);
    std::normal_distribution<float> nd(0.0f, 0.08f);
    auto make = [&](const std::string& name, int rows, int cols, float center = 0.0f) {
      mat m(static_cast<std::size_t>(rows) * cols);
      for (auto& v : m) v = center + nd(rng);
      w[name] = m;
    };
    make("model.embed_tokens.weight", vocab, hidden);
    make("model.norm.weight", 1, hidden, 1.0f);
    for (int l = 0; l < layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      make(p + "self_attn.q_proj.weight", heads * head_dim, hidden);
      make(p + "self_attn.k_proj.weight", kv_heads * head_dim, hidden);
      make(p + "self_attn.v_proj.weight", kv_heads * head_dim, hidden);
      make(p + "self_attn.o_proj.weight", hidden, heads * head_dim);
      make(p + "mlp.gate_proj.weight", inter, hidden);
      make(p + "mlp.up_proj.weight", inter, hidden);
      make(p + "mlp.down_proj.weight", hidden, inter);
      make(p + "input_layernorm.weight", 1, hidden, 1.0f);
      make(p + "post_attention_layernorm.weight", 1, hidden, 1.0f);
    }
    std::vector<model::tensor_to_write> tw;
    for (const auto& [name, m] : w) {
      std::vector<std::int64_t> shape;
      if (name.find("norm") != std::string::npos) shape = {hidden};
      else if (name == "model.embed_tokens.weight") shape = {vocab, hidden};
      else if (name.find("q_proj") != std::string::npos) shape = {heads * head_dim, hidden};
      else if (name.find("k_proj") != std::string::npos || name.find("v_proj") != std::string::npos) shape = {kv_heads * head_dim, hidden};
      else if (name.find("o_proj") != std::string::npos) shape = {hidden, heads * head_dim};
      else if (name.find("down_proj") != std::string::npos) shape = {hidden, inter};
      else shape = {inter, hidden};
      tw.push_back({name, dtype::f32, shape, m.data()});
    }
    model::write_safetensors(dir / "base" / "model.safetensors", tw);
    nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"vocab_size", vocab},
                          {"hidden_size", hidden}, {"intermediate_size", inter}, {"num_hidden_layers", layers},
                          {"num_attention_heads", heads}, {"num_key_value_heads", kv_heads}, {"head_dim", head_dim},
                          {"max_position_embeddings", 512}, {"rms_norm_eps", eps}, {"rope_theta", theta},
                          {"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                                            {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}}},
                          {"tie_word_embeddings", true}, {"hidden_act", "silu"}};
    std::ofstream(dir / "base" / "config.json") << cfg.dump(2);

    // Adapter: all-linear, r 6 (down_proj: 3), alpha 12 (q_proj: 30), only layer 1.
    nlohmann::json acfg = {{"peft_type", "LORA"}, {"r", 6}, {"lora_alpha", 12}, {"target_modules", "all-linear"},
                           {"rank_pattern", {{"down_proj", 3}}}, {"alpha_pattern", {{"q_proj", 30}}},
                           {"layers_to_transform", {1}}, {"use_rslora", false}, {"fan_in_fan_out", false}};
    std::ofstream(dir / "adapter" / "adapter_config.json") << acfg.dump(2);
    std::vector<model::tensor_to_write> at;
    const std::vector<std::pair<std::string, std::pair<int, int>>> mods = {
        {"self_attn.q_proj", {hidden, heads * head_dim}}, {"self_attn.k_proj", {hidden, kv_heads * head_dim}},
        {"self_attn.v_proj", {hidden, kv_heads * head_dim}}, {"self_attn.o_proj", {heads * head_dim, hidden}},
        {"mlp.gate_proj", {hidden, inter}}, {"mlp.up_proj", {hidden, inter}}, {"mlp.down_proj", {inter, hidden}}};
    std::normal_distribution<float> ld(0.0f, 0.15f);
    for (const auto& [m, io] : mods) {
      const std::string name = "model.layers.1." + m;
      const int r = m == "mlp.down_proj" ? 3 : 6;
      const double alpha = m == "self_attn.q_proj" ? 30.0 : 12.0;
      mat a(static_cast<std::size_t>(r) * io.first), b(static_cast<std::size_t>(io.second) * r);
      for (auto& v : a) v = ld(rng);
      for (auto& v : b) v = ld(rng);
      lora[name] = {a, b};
      scaling[name] = alpha / r;
    }
    for (auto& [name, ab] : lora) {
      const int r = name.find("down_proj") != std::string::npos ? 3 : 6;
      const auto in = static_cast<std::int64_t>(ab.first.size() / r), out = static_cast<std::int64_t>(ab.second.size() / r);
      at.push_back({"base_model.model." + name + ".lora_A.weight", dtype::f32, {r, in}, ab.first.data()});
      at.push_back({"base_model.model." + name + ".lora_B.weight", dtype::f32, {out, r}, ab.second.data()});
    }
    model::write_safetensors(dir / "adapter" / "adapter_model.safetensors", at);
  }
  ~synthetic() {
    if (!dir.empty()) fs::remove_all(dir);
  }
  synthetic(const synthetic&) = default;

  /// The same model as the engine stores it in bf16: every weight rounded, and B·scaling rounded as one
  /// matrix (the engine folds the scaling into Bᵀ before rounding).
  [[nodiscard]] synthetic rounded_to_bf16() const {
    synthetic r(*this);
    r.dir.clear();  // owns no files
    auto round = [](mat& m) {
      for (auto& v : m) v = bf16_to_f32(f32_to_bf16(v));
    };
    for (auto& [name, m] : r.w)
      if (name.find("norm") == std::string::npos) round(m);  // norms stay f32 in the engine
    for (auto& [name, ab] : r.lora) {
      round(ab.first);
      for (auto& v : ab.second) v = static_cast<float>(v * r.scaling[name]);
      round(ab.second);
      r.scaling[name] = 1.0;
    }
    return r;
  }

  // y[out] = W[out, in] · x (+ s · B · A · x when the module has LoRA and `with_lora`)
  std::vector<double> linear(const std::string& module, const std::vector<double>& x, int out, bool with_lora) const {
    const mat& W = w.at(module + ".weight");
    const int in = static_cast<int>(x.size());
    std::vector<double> y(static_cast<std::size_t>(out), 0.0);
    for (int o = 0; o < out; ++o)
      for (int i = 0; i < in; ++i) y[o] += static_cast<double>(W[static_cast<std::size_t>(o) * in + i]) * x[i];
    const auto it = lora.find(module);
    if (with_lora && it != lora.end()) {
      const mat& A = it->second.first;
      const mat& B = it->second.second;
      const int r = static_cast<int>(A.size()) / in;
      std::vector<double> s(static_cast<std::size_t>(r), 0.0);
      for (int k = 0; k < r; ++k)
        for (int i = 0; i < in; ++i) s[k] += static_cast<double>(A[static_cast<std::size_t>(k) * in + i]) * x[i];
      for (int o = 0; o < out; ++o)
        for (int k = 0; k < r; ++k) y[o] += scaling.at(module) * B[static_cast<std::size_t>(o) * r + k] * s[k];
    }
    return y;
  }

  std::vector<double> rmsnorm(const std::vector<double>& x, const std::string& wname) const {
    double ss = 0.0;
    for (double v : x) ss += v * v;
    const double inv = 1.0 / std::sqrt(ss / x.size() + eps);
    std::vector<double> y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) y[i] = w.at(wname)[i] * (x[i] * inv);
    return y;
  }

  /// transformers' llama3 inverse frequencies, written out again here.
  static std::vector<double> inv_freq() {
    std::vector<double> f(head_dim / 2);
    const double factor = 8.0, low = 1.0, high = 4.0, old_ctx = 64.0, pi = 3.14159265358979323846;
    for (int i = 0; i < head_dim / 2; ++i) {
      const double base = 1.0 / std::pow(theta, 2.0 * i / head_dim);
      const double wavelen = 2 * pi / base;
      if (wavelen > old_ctx / low) f[i] = base / factor;
      else if (wavelen < old_ctx / high) f[i] = base;
      else {
        const double smooth = (old_ctx / wavelen - low) / (high - low);
        f[i] = (1 - smooth) * base / factor + smooth * base;
      }
    }
    return f;
  }

  /// Logits at every position of one sequence.
  std::vector<std::vector<double>> forward(const std::vector<std::int32_t>& tokens, bool with_lora) const {
    const int T = static_cast<int>(tokens.size());
    const auto freq = inv_freq();
    std::vector<std::vector<double>> h(T, std::vector<double>(hidden));
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < hidden; ++i) h[t][i] = w.at("model.embed_tokens.weight")[static_cast<std::size_t>(tokens[t]) * hidden + i];
    auto rope = [&](std::vector<double>& v, int nh, int pos) {
      for (int hh = 0; hh < nh; ++hh)
        for (int i = 0; i < head_dim / 2; ++i) {
          const double a = static_cast<float>(pos) * static_cast<float>(freq[i]);
          double& x0 = v[static_cast<std::size_t>(hh) * head_dim + i];
          double& x1 = v[static_cast<std::size_t>(hh) * head_dim + i + head_dim / 2];
          const double y0 = x0 * std::cos(a) - x1 * std::sin(a), y1 = x1 * std::cos(a) + x0 * std::sin(a);
          x0 = y0;
          x1 = y1;
        }
    };
    for (int l = 0; l < layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      std::vector<std::vector<double>> q(T), k(T), v(T);
      for (int t = 0; t < T; ++t) {
        const auto x = rmsnorm(h[t], p + "input_layernorm.weight");
        q[t] = linear(p + "self_attn.q_proj", x, heads * head_dim, with_lora);
        k[t] = linear(p + "self_attn.k_proj", x, kv_heads * head_dim, with_lora);
        v[t] = linear(p + "self_attn.v_proj", x, kv_heads * head_dim, with_lora);
        rope(q[t], heads, t);
        rope(k[t], kv_heads, t);
      }
      for (int t = 0; t < T; ++t) {
        std::vector<double> att(static_cast<std::size_t>(heads) * head_dim, 0.0);
        for (int hh = 0; hh < heads; ++hh) {
          const int kh = hh / (heads / kv_heads);
          std::vector<double> s(static_cast<std::size_t>(t) + 1);
          double mx = -1e300, sum = 0.0;
          for (int u = 0; u <= t; ++u) {
            double d = 0.0;
            for (int i = 0; i < head_dim; ++i) d += q[t][hh * head_dim + i] * k[u][kh * head_dim + i];
            s[u] = d / std::sqrt(static_cast<double>(head_dim));
            mx = std::max(mx, s[u]);
          }
          for (auto& x : s) sum += (x = std::exp(x - mx));
          for (int u = 0; u <= t; ++u)
            for (int i = 0; i < head_dim; ++i) att[hh * head_dim + i] += s[u] / sum * v[u][kh * head_dim + i];
        }
        const auto o = linear(p + "self_attn.o_proj", att, hidden, with_lora);
        for (int i = 0; i < hidden; ++i) h[t][i] += o[i];
        const auto x = rmsnorm(h[t], p + "post_attention_layernorm.weight");
        const auto g = linear(p + "mlp.gate_proj", x, inter, with_lora);
        const auto u = linear(p + "mlp.up_proj", x, inter, with_lora);
        std::vector<double> a(static_cast<std::size_t>(inter));
        for (int i = 0; i < inter; ++i) a[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
        const auto d = linear(p + "mlp.down_proj", a, hidden, with_lora);
        for (int i = 0; i < hidden; ++i) h[t][i] += d[i];
      }
    }
    std::vector<std::vector<double>> logits(T);
    for (int t = 0; t < T; ++t) {
      const auto x = rmsnorm(h[t], "model.norm.weight");
      logits[t].assign(vocab, 0.0);
      for (int o = 0; o < vocab; ++o)
        for (int i = 0; i < hidden; ++i) logits[t][o] += w.at("model.embed_tokens.weight")[static_cast<std::size_t>(o) * hidden + i] * x[i];
    }
    return logits;
  }
};

}  // namespace

BOOST_AUTO_TEST_CASE(odd_shapes_match_an_independent_dense_forward) {
  synthetic s;
  const model::model_config cfg = model::load_hf_config(s.dir / "base");
  BOOST_TEST(cfg.tie_word_embeddings);
  BOOST_TEST(cfg.head_dim == head_dim);
  const auto ckpt = model::safetensors_checkpoint::open_dir(s.dir / "base");
  auto adapter = std::make_shared<const model::lora_adapter>(model::load_peft_adapter(s.dir / "adapter", cfg, "syn"));
  BOOST_TEST(adapter->num_targeted() == 7);  // layer 1 only, all seven modules

  const synthetic s_bf16 = s.rounded_to_bf16();
  gpu::cpu_device dev;
  for (const dtype wt : {dtype::f32, dtype::bf16}) {
    gpu::runner_options o;
    o.weight_type = wt;
    o.page_size = 5;
    o.num_pages = 64;
    o.max_batch_tokens = 64;
    o.max_logit_rows = 64;
    o.max_adapters = 2;
    o.max_lora_rank = 8;
    gpu::model_runner runner(dev, cfg, ckpt, o);
    const std::map<std::string, int> slots = {{"syn", runner.add_adapter(adapter)}};
    std::vector<tools::offline_request> reqs(3);
    reqs[0] = {0, "base", std::nullopt, {5, 77, 300, 12, 9, 41, 150}, 1, {}, {}};
    reqs[1] = {0, "lora", std::string("syn"), {5, 77, 300, 12, 9, 41, 150}, 1, {}, {}};
    reqs[2] = {0, "lora-long", std::string("syn"), {}, 1, {}, {}};
    for (int i = 0; i < 70; ++i) reqs[2].prompt.push_back((i * 37 + 11) % vocab);  // past original_max_position 64
    tools::offline_options oo;
    oo.want_logits = true;
    oo.scheduler.max_batch_tokens = 64;  // the long prompt is prefilled in two chunks
    oo.scheduler.max_context = 512;
    for (const bool merged : {false, true}) {
      oo.merged = merged;
      const auto res = tools::run_offline(runner, reqs, slots, oo);
      for (std::size_t r = 0; r < reqs.size(); ++r) {
        const auto want = (wt == dtype::f32 ? s : s_bf16).forward(reqs[r].prompt, reqs[r].adapter.has_value());
        double worst = 0.0, scale = 0.0;
        for (std::size_t t = 0; t < want.size(); ++t)
          for (int v = 0; v < vocab; ++v) {
            worst = std::max(worst, std::fabs(res[r].prefill_logits[t * vocab + v] - want[t][v]));
            scale = std::max(scale, std::fabs(want[t][v]));
          }
        // The reference sees the same (f32 or bf16-rounded) weights and computes in double; the engine computes
        // in f32 (merged: W + s·B·A rounded once more to the storage type, ≈2^-9 relative in bf16).
        const double tol = wt == dtype::f32 ? 1e-4 : (merged ? 2e-2 * std::max(1.0, scale) : 1e-4);
        BOOST_TEST(worst <= tol, "request " << reqs[r].id << " weights " << dtype_name(wt) << (merged ? " merged" : "")
                                            << ": max |Δlogit| " << worst << " (scale " << scale << ")");
      }
    }
  }
}
