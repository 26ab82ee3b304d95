#pragma once
/// The base model's weights on a device, in the storage type chosen for the run: q|k|v fused into one
/// [q_dim + 2·kv_dim, hidden] matrix, gate|up into one [2·inter, hidden]; norms in f32.

#include <functional>
#include <string>
#include <vector>

#include "gpu/device.hpp"
#include "model/hf_config.hpp"
#include "model/safetensors.hpp"

namespace loraplex::gpu {

struct layer_weights {
  device_memory qkv;         // [q_dim + 2*kv_dim, hidden] weight type
  device_memory o;           // [hidden, q_dim]
  device_memory gate_up;     // [2*inter, hidden]
  device_memory down;        // [hidden, inter]
  device_memory input_norm;  // [hidden] f32
  device_memory post_norm;   // [hidden] f32
};

struct model_weights {
  dtype type = dtype::f32;
  device_memory embed;       // [vocab, hidden]
  device_memory lm_head;     // [vocab, hidden]; empty when tied to embed
  device_memory final_norm;  // [hidden] f32
  std::vector<layer_weights> layers;

  [[nodiscard]] const void* lm_head_ptr() const noexcept { return lm_head.get() ? lm_head.get() : embed.get(); }
};

/// Called after each layer is uploaded: (layers done, layers in all).
using progress_fn = std::function<void(int, int)>;

/// Checks every tensor's presence and shape against the config (model::format_error naming the tensor and
/// both shapes) and uploads it converted to `type`.
[[nodiscard]] model_weights upload_weights(device& dev, const model::model_config& cfg,
                                           const model::safetensors_checkpoint& ckpt, dtype type,
                                           const progress_fn& progress = {});

}  // namespace loraplex::gpu
