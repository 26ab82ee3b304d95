#pragma once
/// The seven linear modules of a Llama decoder layer, their names and shapes.

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "model/hf_config.hpp"

namespace loraplex::model {

enum class module_kind : std::uint8_t { q = 0, k = 1, v = 2, o = 3, gate = 4, up = 5, down = 6 };
inline constexpr int num_module_kinds = 7;
inline constexpr std::array<module_kind, num_module_kinds> all_module_kinds = {
    module_kind::q, module_kind::k, module_kind::v, module_kind::o, module_kind::gate, module_kind::up, module_kind::down};

/// "q_proj", "k_proj", … "down_proj".
[[nodiscard]] std::string_view module_short_name(module_kind k) noexcept;
/// "self_attn" for q/k/v/o, "mlp" for gate/up/down.
[[nodiscard]] std::string_view module_parent(module_kind k) noexcept;
/// "model.layers.3.self_attn.q_proj" — the name inside the base model, as PEFT matches it.
[[nodiscard]] std::string module_path(int layer, module_kind k);
/// in_features and out_features of the module under this config (PyTorch Linear: weight [out, in]).
[[nodiscard]] int module_in_features(const model_config& c, module_kind k) noexcept;
[[nodiscard]] int module_out_features(const model_config& c, module_kind k) noexcept;

}  // namespace loraplex::model
