#pragma once
/// One forward step of a Llama-family model over a batch plan, on any device: prefill chunks and decodes of
/// many sequences, each with its own adapter or none, LoRA grouped by adapter segments with heterogeneous
/// ranks, KV in pages. Merged mode: one adapter's LoRA folded into the base weights (W' = W + s·B·A); its rows
/// skip LoRA, rows of other adapters (and base rows) subtract it, so a batch never splits by mode. Unmerge
/// restores the saved original rows, bit for bit.

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "engine/batch_plan.hpp"
#include "engine/sequence.hpp"
#include "gpu/device.hpp"
#include "gpu/lora_table.hpp"
#include "gpu/model_weights.hpp"
#include "model/hf_config.hpp"
#include "model/peft_adapter.hpp"
#include "model/safetensors.hpp"

namespace loraplex::gpu {

struct runner_options {
  dtype weight_type = dtype::f32;  // storage of base and adapter weights
  dtype act_type = dtype::f32;     // activations and KV cache
  int page_size = 16;              // tokens per KV page
  int num_pages = 256;             // KV pages (each holds page_size tokens of every layer)
  int max_batch_tokens = 512;      // rows per step
  int max_logit_rows = 512;        // logits rows per step (sampled rows plus any prompt logits asked for)
  int max_adapters = 16;           // adapter slots on the device
  int max_lora_rank = 256;
};

class model_runner {
 public:
  model_runner(device& dev, const model::model_config& cfg, const model::safetensors_checkpoint& ckpt,
               runner_options opts, const progress_fn& progress = {});

  [[nodiscard]] const model::model_config& config() const noexcept { return cfg_; }
  [[nodiscard]] const runner_options& options() const noexcept { return opts_; }
  [[nodiscard]] device& dev() noexcept { return dev_; }

  /// Uploads an adapter (loaded against this model's config) and returns its slot.
  int add_adapter(std::shared_ptr<const model::lora_adapter> adapter);
  void remove_adapter(int slot);

  /// Folds the adapter in `slot` into the base weights. Throws std::logic_error when one is merged already.
  void merge(int slot);
  /// Restores the original base weights bit for bit. No-op when nothing is merged.
  void unmerge();
  [[nodiscard]] std::optional<int> merged() const noexcept { return merged_; }

  struct step_result {
    std::vector<std::int32_t> sampled;  // per plan entry; -1 where the entry does not sample
    std::vector<float> logits;          // [plan.logit_rows.size(), vocab] when asked for, else empty
  };
  /// Runs one step. `sampling[i]` and `draw_index[i]` (the index of the token being drawn, for the seeded
  /// random stream) belong to plan entry i.
  [[nodiscard]] step_result step(const engine::batch_plan& plan, std::span<const engine::sampling_options> sampling,
                                 std::span<const std::int32_t> draw_index, bool want_logits);

  /// The base weights as stored now (tests: merge → unmerge must restore them bit for bit).
  [[nodiscard]] const model_weights& weights() const noexcept { return weights_; }

 private:
  void run_lora(lora_group g, int layer, const void* x, int ldx, int in_features, void* y, int ldy, int num_rows,
                const std::int32_t* seg, int num_segments, const std::int32_t* row_adapter, int max_rank);

  device& dev_;
  model::model_config cfg_;
  runner_options opts_;
  model_weights weights_;
  lora_table lora_;
  std::vector<float> inv_freq_host_;
  device_memory inv_freq_;
  std::vector<device_memory> k_cache_, v_cache_;
  // Step buffers, sized for max_batch_tokens rows.
  device_memory residual_, x_, qkv_, attn_, delta_, gate_up_, act_, shrink_, xg_, logits_, sampled_;
  device_memory attn_ws_, sample_ws_;
  std::size_t attn_ws_bytes_ = 0;
  device_memory arena_;  // the step's index arrays, uploaded in one copy
  std::optional<int> merged_;
  struct saved_rows {
    void* dst;
    device_memory copy;
  };
  std::vector<saved_rows> saved_;  // original rows of merged modules
};

}  // namespace loraplex::gpu
