#include "model/modules.hpp"

namespace loraplex::model {

std::string_view module_short_name(module_kind k) noexcept {
  switch (k) {
    case module_kind::q: return "q_proj";
    case module_kind::k: return "k_proj";
    case module_kind::v: return "v_proj";
    case module_kind::o: return "o_proj";
    case module_kind::gate: return "gate_proj";
    case module_kind::up: return "up_proj";
    case module_kind::down: return "down_proj";
  }
  return "?";
}

std::string_view module_parent(module_kind k) noexcept {
  switch (k) {
    case module_kind::q:
    case module_kind::k:
    case module_kind::v:
    case module_kind::o: return "self_attn";
    case module_kind::gate:
    case module_kind::up:
    case module_kind::down: return "mlp";
  }
  return "?";
}

std::string module_path(int layer, module_kind k) {
  std::string s = "model.layers." + std::to_string(layer) + ".";
  s += module_parent(k);
  s += '.';
  s += module_short_name(k);
  return s;
}

int module_in_features(const model_config& c, module_kind k) noexcept {
  switch (k) {
    case module_kind::q:
    case module_kind::k:
    case module_kind::v:
    case module_kind::gate:
    case module_kind::up: return c.hidden_size;
    case module_kind::o: return c.q_dim();
    case module_kind::down: return c.intermediate_size;
  }
  return 0;
}

int module_out_features(const model_config& c, module_kind k) noexcept {
  switch (k) {
    case module_kind::q: return c.q_dim();
    case module_kind::k:
    case module_kind::v: return c.kv_dim();
    case module_kind::o:
    case module_kind::down: return c.hidden_size;
    case module_kind::gate:
    case module_kind::up: return c.intermediate_size;
  }
  return 0;
}

}  // namespace loraplex::model
