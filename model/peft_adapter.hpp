#pragma once
/// PEFT LoRA adapters: `adapter_config.json` + `adapter_model.safetensors`, read and checked against the base
/// model they will be served on.
///
/// Semantics (PEFT 0.21): y = W·x + s·B·(A·x), s = lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora.
/// `rank_pattern` / `alpha_pattern` override r / alpha for a module when the regex `(.*\.)?(KEY)$` matches
/// its name (model.layers.{i}.self_attn.q_proj); the first key in the file's order that matches wins; the
/// scaling of that module uses its own r and alpha. `target_modules`: a list (a module is targeted when its
/// name equals an entry or ends with "." + entry), a string (a regex that must match the whole name), or
/// "all-linear" (every linear layer but the output layer). `layers_to_transform` (int or list) with
/// `layers_pattern` restricts the layers. Tensor keys:
/// `base_model.model.<module name>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r].
///
/// Refused (unsupported_error, the message says which field or tensor and what to do): peft_type other than
/// LORA; use_dora; modules_to_save; lora_bias or lora_B bias tensors; embedding LoRA (lora_embedding_A/B or a
/// target that matches embed_tokens); a target on lm_head; fan_in_fan_out true; exclude_modules;
/// a directory with only adapter_model.bin (the message says how to convert it to safetensors);
/// an adapter whose targets match none of the model's modules (never serve the base model in its place).
/// Shape errors (format_error): a matrix whose shape does not fit the base module; a targeted module with
/// missing weights; a LoRA tensor for a module that is not targeted; a rank differing from the config's.

#include <array>
#include <cstddef>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "model/hf_config.hpp"
#include "model/modules.hpp"

namespace loraplex::model {

/// adapter_config.json, parsed and validated on its own (no base model needed).
struct adapter_config {
  int r = 8;
  double lora_alpha = 8.0;
  bool use_rslora = false;
  /// A list of names, a regex, or the string "all-linear".
  std::variant<std::vector<std::string>, std::string> target_modules;
  bool all_linear = false;
  std::vector<std::pair<std::string, int>> rank_pattern;      // in file order
  std::vector<std::pair<std::string, double>> alpha_pattern;  // in file order
  std::optional<std::vector<int>> layers_to_transform;
  std::vector<std::string> layers_pattern;  // empty: any layer-index pattern

  /// Whether PEFT would give this module (e.g. "model.layers.3.self_attn.q_proj") a LoRA layer.
  [[nodiscard]] bool targets(const std::string& module_name) const;
  /// The rank and scaling PEFT gives this module.
  [[nodiscard]] int rank_for(const std::string& module_name) const;
  [[nodiscard]] double scaling_for(const std::string& module_name) const;
};

/// Parses and validates adapter_config.json's object; `source` names the file in messages.
/// NOTE: nlohmann::json keeps object keys sorted, so rank_pattern / alpha_pattern come out in key order here;
/// load_peft_adapter parses the file as nlohmann::ordered_json itself to keep the file's order.
[[nodiscard]] adapter_config parse_adapter_config(const nlohmann::json& j, const std::string& source);

/// One module's LoRA matrices in f32 (converted from the file's type), scaling folded into bt.
struct lora_module {
  int rank = 0;
  float scaling = 1.0f;         // already folded into bt; kept for reporting
  int in_features = 0;
  int out_features = 0;
  std::vector<float> a;         // [rank, in_features]  (lora_A)
  std::vector<float> bt;        // [rank, out_features] (lora_Bᵀ · scaling)
};

/// A loaded adapter, ready to upload: modules[layer][module_kind], empty where not targeted.
struct lora_adapter {
  std::string name;
  std::filesystem::path dir;
  adapter_config config;
  std::vector<std::array<std::optional<lora_module>, num_module_kinds>> modules;

  [[nodiscard]] int max_rank() const noexcept;
  /// Bytes of all A and Bt matrices at the given element size.
  [[nodiscard]] std::size_t weight_bytes(std::size_t element_size) const noexcept;
  /// Number of (layer, module) pairs with LoRA weights.
  [[nodiscard]] int num_targeted() const noexcept;
};

/// Loads `<dir>/adapter_config.json` and `<dir>/adapter_model.safetensors` and checks them against `base`.
[[nodiscard]] lora_adapter load_peft_adapter(const std::filesystem::path& dir, const model_config& base,
                                             const std::string& name);

}  // namespace loraplex::model
