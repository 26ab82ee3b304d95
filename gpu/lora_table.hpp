#pragma once
/// Adapters resident on a device and the pointer tables the LoRA kernels read.
///
/// Each adapter occupies a slot. For every (layer, module group) the device holds a table of
/// (slots + 1) × slices entries — A pointer, Bt pointer, rank, lda, ldb — so a batch plan's adapter slot is
/// directly the kernel's table entry and no per-step table is built or copied. The extra last slot holds the
/// negated copy of the merged adapter (merged mode: rows of other adapters subtract it).
///
/// Module groups: qkv (slices q, k, v), o, gate_up (slices gate, up), down.

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "gpu/device.hpp"
#include "model/hf_config.hpp"
#include "model/peft_adapter.hpp"

namespace loraplex::gpu {

enum class lora_group : std::uint8_t { qkv = 0, o = 1, gate_up = 2, down = 3 };
inline constexpr int num_lora_groups = 4;
[[nodiscard]] int group_slices(lora_group g) noexcept;
/// The module of slice j of group g.
[[nodiscard]] model::module_kind group_module(lora_group g, int j) noexcept;

/// One adapter's matrices on the device.
struct resident_adapter {
  std::shared_ptr<const model::lora_adapter> host;
  device_memory memory;  // every A and Bt of the adapter, in the weight type
  struct matrices {
    const void* a = nullptr;
    const void* bt = nullptr;
    int rank = 0;
  };
  std::vector<std::array<matrices, model::num_module_kinds>> modules;  // [layer][module]
};

class lora_table {
 public:
  lora_table(device& dev, const model::model_config& cfg, dtype weight_type, int max_slots);

  /// Uploads an adapter into a free slot and returns the slot. Throws std::runtime_error when every slot is
  /// taken.
  int add(std::shared_ptr<const model::lora_adapter> adapter);
  void remove(int slot);
  [[nodiscard]] const resident_adapter* at(int slot) const noexcept;
  [[nodiscard]] int max_slots() const noexcept { return max_slots_; }
  /// The reserved slot of the negated merged adapter.
  [[nodiscard]] int negated_slot() const noexcept { return max_slots_; }
  /// Fills the negated slot with -Bt of `slot` (merge), or empties it (nullopt).
  void set_negated(std::optional<int> slot);

  /// Device pointers to the group's table for one layer.
  struct view {
    const void* const* a_ptrs;
    const void* const* bt_ptrs;
    const std::int32_t* ranks;
    const std::int32_t* lda;
    const std::int32_t* ldb;
    int num_entries;  // slots + 1
  };
  [[nodiscard]] view table(int layer, lora_group g) const noexcept;
  /// The largest rank over the given slots in this group (0 when none targets it).
  [[nodiscard]] int max_rank(lora_group g, const std::vector<int>& slots) const noexcept;

 private:
  void write_slot(int slot, const resident_adapter* r);
  void sync_tables();
  [[nodiscard]] std::size_t entry_index(int layer, lora_group g, int slot, int j) const noexcept;

  device& dev_;
  model::model_config cfg_;
  dtype type_;
  int max_slots_;
  std::vector<std::unique_ptr<resident_adapter>> slots_;  // max_slots + 1 (the negated slot)
  // Host mirrors of the device tables, one entry per (layer, group, slot, slice), uploaded whole on change.
  std::vector<const void*> a_, bt_;
  std::vector<std::int32_t> rank_, lda_, ldb_;
  device_memory d_a_, d_bt_, d_rank_, d_lda_, d_ldb_;
};

}  // namespace loraplex::gpu
