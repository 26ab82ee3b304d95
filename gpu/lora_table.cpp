#include "gpu/lora_table.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace loraplex::gpu {

namespace {
constexpr int slice_base[num_lora_groups] = {0, 3, 4, 6};  // first slice of each group among the 7 modules
constexpr int total_slices = 7;
}  // namespace

int group_slices(lora_group g) noexcept {
  switch (g) {
    case lora_group::qkv: return 3;
    case lora_group::gate_up: return 2;
    default: return 1;
  }
}

model::module_kind group_module(lora_group g, int j) noexcept {
  using mk = model::module_kind;
  switch (g) {
    case lora_group::qkv: return j == 0 ? mk::q : j == 1 ? mk::k : mk::v;
    case lora_group::o: return mk::o;
    case lora_group::gate_up: return j == 0 ? mk::gate : mk::up;
    case lora_group::down: return mk::down;
  }
  return mk::q;
}

lora_table::lora_table(device& dev, const model::model_config& cfg, dtype weight_type, int max_slots)
    : dev_(dev), cfg_(cfg), type_(weight_type), max_slots_(max_slots) {
  if (max_slots <= 0) throw std::invalid_argument("lora_table: max_slots must be positive");
  slots_.resize(static_cast<std::size_t>(max_slots) + 1);
  const std::size_t n = static_cast<std::size_t>(cfg.num_layers) * total_slices * (max_slots + 1);
  a_.assign(n, nullptr);
  bt_.assign(n, nullptr);
  rank_.assign(n, 0);
  lda_.assign(n, 0);
  ldb_.assign(n, 0);
  d_a_ = dev_.allocate(n * sizeof(void*));
  d_bt_ = dev_.allocate(n * sizeof(void*));
  d_rank_ = dev_.allocate(n * sizeof(std::int32_t));
  d_lda_ = dev_.allocate(n * sizeof(std::int32_t));
  d_ldb_ = dev_.allocate(n * sizeof(std::int32_t));
  sync_tables();
}

std::size_t lora_table::entry_index(int layer, lora_group g, int slot, int j) const noexcept {
  const std::size_t entries = static_cast<std::size_t>(max_slots_) + 1;
  const std::size_t block = (static_cast<std::size_t>(layer) * total_slices + slice_base[static_cast<int>(g)]) * entries;
  return block + static_cast<std::size_t>(slot) * group_slices(g) + j;
}

lora_table::view lora_table::table(int layer, lora_group g) const noexcept {
  const std::size_t e = entry_index(layer, g, 0, 0);
  return {d_a_.as<const void*>() + e, d_bt_.as<const void*>() + e, d_rank_.as<std::int32_t>() + e,
          d_lda_.as<std::int32_t>() + e, d_ldb_.as<std::int32_t>() + e, max_slots_ + 1};
}

int lora_table::max_rank(lora_group g, const std::vector<int>& slots) const noexcept {
  int r = 0;
  for (int l = 0; l < cfg_.num_layers; ++l)
    for (const int s : slots)
      for (int j = 0; j < group_slices(g); ++j) r = std::max(r, rank_[entry_index(l, g, s, j)]);
  return r;
}

namespace {
/// Uploads every matrix of `host` (optionally with Bt negated) into one allocation.
resident_adapter make_resident(device& dev, dtype type, std::shared_ptr<const model::lora_adapter> host, bool negate_bt) {
  resident_adapter r;
  std::size_t elems = 0;
  for (const auto& layer : host->modules)
    for (const auto& m : layer)
      if (m) elems += m->a.size() + m->bt.size();
  const std::size_t es = dtype_size(type);
  r.memory = dev.allocate(std::max<std::size_t>(elems, 1) * es);
  std::vector<std::byte> tmp;
  std::size_t off = 0;
  auto put = [&](const std::vector<float>& v, bool neg) {
    tmp.resize(v.size() * es);
    for (std::size_t i = 0; i < v.size(); ++i) store_from_f32(tmp.data(), type, i, neg ? -v[i] : v[i]);
    void* dst = static_cast<char*>(r.memory.get()) + off * es;
    dev.upload(dst, tmp.data(), tmp.size());
    off += v.size();
    return static_cast<const void*>(dst);
  };
  r.modules.resize(host->modules.size());
  for (std::size_t l = 0; l < host->modules.size(); ++l) {
    for (int k = 0; k < model::num_module_kinds; ++k) {
      const auto& m = host->modules[l][static_cast<std::size_t>(k)];
      if (!m) continue;
      auto& out = r.modules[l][static_cast<std::size_t>(k)];
      out.a = put(m->a, false);
      out.bt = put(m->bt, negate_bt);
      out.rank = m->rank;
    }
  }
  r.host = std::move(host);
  return r;
}
}  // namespace

void lora_table::write_slot(int slot, const resident_adapter* r) {
  for (int l = 0; l < cfg_.num_layers; ++l) {
    for (int g = 0; g < num_lora_groups; ++g) {
      const auto grp = static_cast<lora_group>(g);
      for (int j = 0; j < group_slices(grp); ++j) {
        const std::size_t e = entry_index(l, grp, slot, j);
        const model::module_kind kind = group_module(grp, j);
        const resident_adapter::matrices* m =
            r != nullptr && static_cast<std::size_t>(l) < r->modules.size() ? &r->modules[l][static_cast<std::size_t>(kind)] : nullptr;
        const bool on = m != nullptr && m->rank > 0;
        a_[e] = on ? m->a : nullptr;
        bt_[e] = on ? m->bt : nullptr;
        rank_[e] = on ? m->rank : 0;
        lda_[e] = on ? model::module_in_features(cfg_, kind) : 0;
        ldb_[e] = on ? model::module_out_features(cfg_, kind) : 0;
      }
    }
  }
}

void lora_table::sync_tables() {
  dev_.upload(d_a_.get(), a_.data(), a_.size() * sizeof(void*));
  dev_.upload(d_bt_.get(), bt_.data(), bt_.size() * sizeof(void*));
  dev_.upload(d_rank_.get(), rank_.data(), rank_.size() * sizeof(std::int32_t));
  dev_.upload(d_lda_.get(), lda_.data(), lda_.size() * sizeof(std::int32_t));
  dev_.upload(d_ldb_.get(), ldb_.data(), ldb_.size() * sizeof(std::int32_t));
}

int lora_table::add(std::shared_ptr<const model::lora_adapter> adapter) {
  if (static_cast<int>(adapter->modules.size()) != cfg_.num_layers)
    throw std::invalid_argument("adapter '" + adapter->name + "' was loaded for a model with a different layer count");
  for (int s = 0; s < max_slots_; ++s) {
    if (slots_[static_cast<std::size_t>(s)]) continue;
    slots_[static_cast<std::size_t>(s)] = std::make_unique<resident_adapter>(make_resident(dev_, type_, std::move(adapter), false));
    write_slot(s, slots_[static_cast<std::size_t>(s)].get());
    sync_tables();
    return s;
  }
  throw std::runtime_error("no free adapter slot on " + dev_.name() + " (" + std::to_string(max_slots_) + " in use)");
}

void lora_table::remove(int slot) {
  if (slot < 0 || slot >= max_slots_ || !slots_[static_cast<std::size_t>(slot)])
    throw std::invalid_argument("lora_table: slot " + std::to_string(slot) + " holds no adapter");
  dev_.synchronize();  // no queued step may still read the memory about to be freed
  slots_[static_cast<std::size_t>(slot)].reset();
  write_slot(slot, nullptr);
  sync_tables();
}

const resident_adapter* lora_table::at(int slot) const noexcept {
  if (slot < 0 || slot > max_slots_) return nullptr;
  return slots_[static_cast<std::size_t>(slot)].get();
}

void lora_table::set_negated(std::optional<int> slot) {
  auto& neg = slots_[static_cast<std::size_t>(max_slots_)];
  dev_.synchronize();
  neg.reset();
  if (slot) {
    const resident_adapter* src = at(*slot);
    if (src == nullptr) throw std::invalid_argument("lora_table: slot " + std::to_string(*slot) + " holds no adapter");
    neg = std::make_unique<resident_adapter>(make_resident(dev_, type_, src->host, true));
  }
  write_slot(max_slots_, neg.get());
  sync_tables();
}

}  // namespace loraplex::gpu
