#pragma once
/// Hugging Face `config.json` of a Llama-family causal LM → one validated description of the model.
///
/// Accepted: architectures LlamaForCausalLM and MistralForCausalLM (model_type llama / mistral). RoPE theta from
/// top-level `rope_theta` or transformers-5 `rope_parameters.rope_theta`; scaling from `rope_scaling` or
/// `rope_parameters` with rope_type (or legacy `type`) default, linear, llama3. `head_dim` defaults to
/// hidden_size / num_attention_heads; num_key_value_heads defaults to num_attention_heads (GQA when fewer);
/// tie_word_embeddings defaults to false; rms_norm_eps defaults to 1e-6. Mistral's sliding_window, when set
/// below max_position_embeddings, bounds the served context (so attention never needs the window).
/// Refused with an unsupported_error naming the field: any other architecture, hidden_act other than silu,
/// attention_bias or mlp_bias true, pretraining_tp != 1, any other rope type; missing or non-positive sizes,
/// num_attention_heads not a multiple of num_key_value_heads, an odd head_dim are format_errors.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "model/errors.hpp"

namespace loraplex::model {

enum class rope_scaling_type : std::uint8_t { none = 0, linear = 1, llama3 = 2 };

struct rope_config {
  double theta = 10000.0;
  rope_scaling_type scaling = rope_scaling_type::none;
  double factor = 1.0;                     // linear and llama3
  double low_freq_factor = 1.0;            // llama3
  double high_freq_factor = 4.0;           // llama3
  int original_max_position_embeddings = 8192;  // llama3
};

struct model_config {
  std::string architecture;  // "LlamaForCausalLM" or "MistralForCausalLM"
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int max_position_embeddings = 0;  // the longest context served (sliding_window applied)
  double rms_norm_eps = 1e-6;
  rope_config rope;
  bool tie_word_embeddings = false;
  std::optional<int> bos_token_id;
  std::vector<int> eos_token_ids;  // eos_token_id may be an int or a list

  [[nodiscard]] int q_dim() const noexcept { return num_heads * head_dim; }
  [[nodiscard]] int kv_dim() const noexcept { return num_kv_heads * head_dim; }
};

/// Parses and validates; `source` names the file in messages.
[[nodiscard]] model_config parse_hf_config(const nlohmann::json& j, const std::string& source);
/// Reads `<dir>/config.json` (or the file itself when given a file).
[[nodiscard]] model_config load_hf_config(const std::filesystem::path& dir_or_file);

/// RoPE inverse frequencies [head_dim / 2] with the scaling folded in, as transformers computes them
/// (`_compute_default_rope_parameters`, `_compute_linear_scaling_rope_parameters`,
/// `_compute_llama3_parameters`), rounded to f32 at the end.
[[nodiscard]] std::vector<float> rope_inv_freq(const model_config& c);
/// The factor transformers applies to cos and sin (1 for default, linear and llama3).
[[nodiscard]] float rope_attention_scaling(const model_config& c);

}  // namespace loraplex::model
