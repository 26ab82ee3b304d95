#include "gpu/model_runner.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

namespace loraplex::gpu {

namespace {

/// Packs the step's host arrays into one buffer (256-byte aligned pieces) for a single upload.
class arena_builder {
 public:
  template <typename T>
  std::size_t add(const T* data, std::size_t n) {
    const std::size_t off = (bytes_.size() + 255) / 256 * 256;
    bytes_.resize(off + std::max<std::size_t>(n, 1) * sizeof(T));
    if (n > 0) std::memcpy(bytes_.data() + off, data, n * sizeof(T));
    return off;
  }
  template <typename T>
  std::size_t add(const std::vector<T>& v) {
    return add(v.data(), v.size());
  }
  [[nodiscard]] const std::vector<std::byte>& bytes() const noexcept { return bytes_; }

 private:
  std::vector<std::byte> bytes_;
};

struct split_segments {
  std::vector<std::int32_t> begin, end, adapter;
  void push(const engine::lora_segment& s) {
    begin.push_back(s.begin);
    end.push_back(s.end);
    adapter.push_back(s.adapter);
  }
};

}  // namespace

model_runner::model_runner(device& dev, const model::model_config& cfg, const model::safetensors_checkpoint& ckpt,
                           runner_options opts, const progress_fn& progress)
    : dev_(dev),
      cfg_(cfg),
      opts_(opts),
      weights_(upload_weights(dev, cfg, ckpt, opts.weight_type, progress)),
      lora_(dev, cfg, opts.weight_type, opts.max_adapters) {
  if (!dev_.supports_activation(opts_.act_type))
    throw std::invalid_argument("device " + dev_.name() + " does not compute in " + std::string(dtype_name(opts_.act_type)));
  if (opts_.max_batch_tokens <= 0 || opts_.max_logit_rows <= 0 || opts_.num_pages <= 0 || opts_.page_size <= 0)
    throw std::invalid_argument("model_runner: batch, logits, page sizes must be positive");
  inv_freq_host_ = model::rope_inv_freq(cfg_);
  inv_freq_ = dev_.allocate(inv_freq_host_.size() * sizeof(float));
  dev_.upload(inv_freq_.get(), inv_freq_host_.data(), inv_freq_host_.size() * sizeof(float));

  const std::size_t as = dtype_size(opts_.act_type);
  const std::size_t kv_bytes = static_cast<std::size_t>(opts_.num_pages) * opts_.page_size * cfg_.kv_dim() * as;
  for (int l = 0; l < cfg_.num_layers; ++l) {
    k_cache_.push_back(dev_.allocate(kv_bytes));
    v_cache_.push_back(dev_.allocate(kv_bytes));
  }
  const std::size_t n = static_cast<std::size_t>(opts_.max_batch_tokens);
  const std::size_t h = static_cast<std::size_t>(cfg_.hidden_size);
  residual_ = dev_.allocate(n * h * sizeof(float));
  x_ = dev_.allocate(n * h * as);
  qkv_ = dev_.allocate(n * static_cast<std::size_t>(cfg_.q_dim() + 2 * cfg_.kv_dim()) * as);
  attn_ = dev_.allocate(n * static_cast<std::size_t>(cfg_.q_dim()) * as);
  delta_ = dev_.allocate(n * h * as);
  gate_up_ = dev_.allocate(n * 2 * static_cast<std::size_t>(cfg_.intermediate_size) * as);
  act_ = dev_.allocate(n * static_cast<std::size_t>(cfg_.intermediate_size) * as);
  shrink_ = dev_.allocate(kernels::lora_shrink_buffer_bytes(kernels::max_lora_slices, opts_.max_batch_tokens, opts_.max_lora_rank));
  const std::size_t lr = static_cast<std::size_t>(opts_.max_logit_rows);
  xg_ = dev_.allocate(lr * h * as);
  logits_ = dev_.allocate(lr * static_cast<std::size_t>(cfg_.vocab_size) * sizeof(float));
  sampled_ = dev_.allocate(lr * sizeof(std::int32_t));
  const std::size_t sws = dev_.sample_workspace_bytes(opts_.max_logit_rows, cfg_.vocab_size);
  if (sws > 0) sample_ws_ = dev_.allocate(sws);
}

int model_runner::add_adapter(std::shared_ptr<const model::lora_adapter> adapter) {
  if (adapter->max_rank() > opts_.max_lora_rank)
    throw std::invalid_argument("adapter '" + adapter->name + "' has rank " + std::to_string(adapter->max_rank()) +
                                ", above the server's max_lora_rank " + std::to_string(opts_.max_lora_rank));
  return lora_.add(std::move(adapter));
}

void model_runner::remove_adapter(int slot) {
  if (merged_ && *merged_ == slot) throw std::logic_error("cannot remove the merged adapter; unmerge first");
  lora_.remove(slot);
}

void model_runner::merge(int slot) {
  if (merged_) throw std::logic_error("an adapter is merged already; unmerge it first");
  const resident_adapter* r = lora_.at(slot);
  if (r == nullptr || slot >= lora_.max_slots()) throw std::invalid_argument("merge: slot " + std::to_string(slot) + " holds no adapter");
  const std::size_t es = dtype_size(weights_.type);
  const int q = cfg_.q_dim(), kv = cfg_.kv_dim(), inter = cfg_.intermediate_size;
  for (int l = 0; l < cfg_.num_layers; ++l) {
    layer_weights& lw = weights_.layers[static_cast<std::size_t>(l)];
    for (const model::module_kind k : model::all_module_kinds) {
      const auto& m = r->modules[static_cast<std::size_t>(l)][static_cast<std::size_t>(k)];
      if (m.rank == 0) continue;
      void* w = nullptr;
      int row0 = 0;
      switch (k) {
        case model::module_kind::q: w = lw.qkv.get(); break;
        case model::module_kind::k: w = lw.qkv.get(); row0 = q; break;
        case model::module_kind::v: w = lw.qkv.get(); row0 = q + kv; break;
        case model::module_kind::o: w = lw.o.get(); break;
        case model::module_kind::gate: w = lw.gate_up.get(); break;
        case model::module_kind::up: w = lw.gate_up.get(); row0 = inter; break;
        case model::module_kind::down: w = lw.down.get(); break;
      }
      const int in = model::module_in_features(cfg_, k);
      const int out = model::module_out_features(cfg_, k);
      void* rows = static_cast<char*>(w) + static_cast<std::size_t>(row0) * in * es;
      const std::size_t bytes = static_cast<std::size_t>(out) * in * es;
      saved_rows s{rows, dev_.allocate(bytes)};
      dev_.copy(s.copy.get(), rows, bytes);
      saved_.push_back(std::move(s));
      kernels::lora_merge_args a;
      a.w = w;
      a.ldw = in;
      a.w_type = weights_.type;
      a.row_offset = row0;
      a.out_features = out;
      a.in_features = in;
      a.a = m.a;
      a.lda = in;
      a.bt = m.bt;
      a.ldb = out;
      a.adapter_type = weights_.type;
      a.rank = m.rank;
      dev_.lora_merge(a);
    }
  }
  lora_.set_negated(slot);
  merged_ = slot;
}

void model_runner::unmerge() {
  if (!merged_) return;
  for (saved_rows& s : saved_) dev_.copy(s.dst, s.copy.get(), s.copy.bytes());
  dev_.synchronize();
  saved_.clear();
  lora_.set_negated(std::nullopt);
  merged_.reset();
}

void model_runner::run_lora(lora_group g, int layer, const void* x, int ldx, int in_features, void* y, int ldy,
                            int num_rows, const std::int32_t* seg, int num_segments, const std::int32_t* row_adapter,
                            int max_rank) {
  if (num_segments == 0 || max_rank == 0) return;
  const lora_table::view t = lora_.table(layer, g);
  kernels::lora_args a;
  a.num_tokens = num_rows;
  a.in_features = in_features;
  a.x = x;
  a.ldx = ldx;
  a.y = y;
  a.ldy = ldy;
  a.act_type = opts_.act_type;
  a.weight_type = weights_.type;
  a.num_slices = group_slices(g);
  int off = 0;
  for (int j = 0; j < a.num_slices; ++j) {
    a.slice_offset[j] = off;
    a.slice_width[j] = model::module_out_features(cfg_, group_module(g, j));
    off += a.slice_width[j];
  }
  a.num_adapters = t.num_entries;
  a.a_ptrs = t.a_ptrs;
  a.bt_ptrs = t.bt_ptrs;
  a.ranks = t.ranks;
  a.lda = t.lda;
  a.ldb = t.ldb;
  a.max_rank = max_rank;
  a.num_segments = num_segments;
  a.seg_begin = seg;
  a.seg_end = seg + num_segments;
  a.seg_adapter = seg + 2 * num_segments;
  a.row_adapter = row_adapter;
  a.shrink_out = shrink_.as<float>();
  dev_.lora_shrink(a);
  dev_.lora_expand(a);
}

model_runner::step_result model_runner::step(const engine::batch_plan& plan,
                                             std::span<const engine::sampling_options> sampling,
                                             std::span<const std::int32_t> draw_index, bool want_logits) {
  const int n = plan.num_rows();
  const int num_logits = static_cast<int>(plan.logit_rows.size());
  if (n == 0) throw std::invalid_argument("model_runner::step: empty plan");
  if (n > opts_.max_batch_tokens)
    throw std::invalid_argument("model_runner::step: " + std::to_string(n) + " rows exceed max_batch_tokens " +
                                std::to_string(opts_.max_batch_tokens));
  if (num_logits > opts_.max_logit_rows)
    throw std::invalid_argument("model_runner::step: " + std::to_string(num_logits) + " logits rows exceed max_logit_rows " +
                                std::to_string(opts_.max_logit_rows));
  if (sampling.size() != plan.entries.size() || draw_index.size() != plan.entries.size())
    throw std::invalid_argument("model_runner::step: one sampling option and draw index per plan entry");
  for (const std::int32_t t : plan.tokens)
    if (t < 0 || t >= cfg_.vocab_size) throw std::invalid_argument("model_runner::step: token id " + std::to_string(t) + " outside the vocabulary");
  for (const auto& e : plan.entries)
    if (e.adapter >= 0 && (e.adapter >= lora_.max_slots() || lora_.at(e.adapter) == nullptr))
      throw std::invalid_argument("model_runner::step: adapter slot " + std::to_string(e.adapter) + " holds no adapter");

  // LoRA segments: in merged mode the merged adapter's rows need none, every other row subtracts it.
  split_segments main, corr;
  std::vector<std::int32_t> main_rows(plan.row_adapter), corr_rows(static_cast<std::size_t>(n), -1);
  std::vector<int> main_slots;
  for (const auto& s : plan.segments) {
    if (merged_ && s.adapter == *merged_) continue;
    main.push(s);
    if (std::find(main_slots.begin(), main_slots.end(), s.adapter) == main_slots.end()) main_slots.push_back(s.adapter);
  }
  if (merged_) {
    for (auto& r : main_rows)
      if (r == *merged_) r = -1;
    for (const auto& s : engine::segments_other_than(plan, *merged_, lora_.negated_slot())) {
      corr.push(s);
      for (int r = s.begin; r < s.end; ++r) corr_rows[static_cast<std::size_t>(r)] = s.adapter;
    }
  }
  std::vector<std::int32_t> main_seg(main.begin), corr_seg(corr.begin);
  main_seg.insert(main_seg.end(), main.end.begin(), main.end.end());
  main_seg.insert(main_seg.end(), main.adapter.begin(), main.adapter.end());
  corr_seg.insert(corr_seg.end(), corr.end.begin(), corr.end.end());
  corr_seg.insert(corr_seg.end(), corr.adapter.begin(), corr.adapter.end());
  int main_rank[num_lora_groups] = {}, corr_rank[num_lora_groups] = {};
  for (int g = 0; g < num_lora_groups; ++g) {
    main_rank[g] = main_slots.empty() ? 0 : lora_.max_rank(static_cast<lora_group>(g), main_slots);
    corr_rank[g] = corr.begin.empty() ? 0 : lora_.max_rank(static_cast<lora_group>(g), {lora_.negated_slot()});
  }

  // Sampling parameters per logits row: the entry's own on its sampled row, greedy elsewhere.
  std::vector<float> temp(static_cast<std::size_t>(num_logits), 0.0f), top_p(static_cast<std::size_t>(num_logits), 1.0f);
  std::vector<std::int32_t> top_k(static_cast<std::size_t>(num_logits), 0), draw(static_cast<std::size_t>(num_logits), 0);
  std::vector<std::uint64_t> seed(static_cast<std::size_t>(num_logits), 0);
  for (std::size_t i = 0; i < plan.entries.size(); ++i) {
    const auto& e = plan.entries[i];
    if (!e.sample) continue;
    const std::size_t r = static_cast<std::size_t>(e.logits_begin + e.num_logits - 1);
    temp[r] = sampling[i].temperature;
    top_k[r] = sampling[i].top_k;
    top_p[r] = sampling[i].top_p;
    seed[r] = sampling[i].seed;
    draw[r] = draw_index[i];
  }

  arena_builder ab;
  const std::size_t o_tokens = ab.add(plan.tokens), o_pos = ab.add(plan.positions), o_slots = ab.add(plan.slots);
  const std::size_t o_bt = ab.add(plan.block_tables), o_qs = ab.add(plan.query_start), o_ctx = ab.add(plan.context_lens);
  const std::size_t o_mseg = ab.add(main_seg), o_mrows = ab.add(main_rows), o_cseg = ab.add(corr_seg), o_crows = ab.add(corr_rows);
  const std::size_t o_lrows = ab.add(plan.logit_rows), o_temp = ab.add(temp), o_topk = ab.add(top_k), o_topp = ab.add(top_p);
  const std::size_t o_seed = ab.add(seed), o_draw = ab.add(draw);
  if (arena_.bytes() < ab.bytes().size()) arena_ = dev_.allocate(ab.bytes().size() * 2);
  dev_.upload(arena_.get(), ab.bytes().data(), ab.bytes().size());
  auto at = [&](std::size_t off) { return reinterpret_cast<std::int32_t*>(static_cast<char*>(arena_.get()) + off); };

  const int h = cfg_.hidden_size, q = cfg_.q_dim(), kv = cfg_.kv_dim(), inter = cfg_.intermediate_size;
  const int ld_qkv = q + 2 * kv;
  const dtype at_t = opts_.act_type, wt = weights_.type;

  kernels::embedding_args emb;
  emb.table = weights_.embed.get();
  emb.table_type = wt;
  emb.ids = at(o_tokens);
  emb.out = residual_.as<float>();
  emb.num_tokens = n;
  emb.hidden = h;
  emb.vocab = cfg_.vocab_size;
  dev_.embedding(emb);

  auto gemm = [&](const void* x, int k, const void* w, int nout, void* y) {
    kernels::gemm_args g;
    g.x = x;
    g.ldx = k;
    g.x_type = at_t;
    g.w = w;
    g.ldw = k;
    g.w_type = wt;
    g.y = y;
    g.ldy = nout;
    g.y_type = at_t;
    g.m = n;
    g.n = nout;
    g.k = k;
    dev_.gemm(g);
  };
  auto norm = [&](const void* delta, const device_memory& w, void* out, int rows) {
    kernels::add_rms_norm_args a;
    a.residual = residual_.as<float>();
    a.delta = delta;
    a.weight = w.as<float>();
    a.out = out;
    a.act_type = at_t;
    a.num_tokens = rows;
    a.dim = h;
    a.eps = static_cast<float>(cfg_.rms_norm_eps);
    dev_.add_rms_norm(a);
  };
  auto lora = [&](lora_group g, int layer, const void* x, int ldx, int in, void* y, int ldy) {
    const int gi = static_cast<int>(g);
    run_lora(g, layer, x, ldx, in, y, ldy, n, at(o_mseg), static_cast<int>(main.begin.size()), at(o_mrows), main_rank[gi]);
    run_lora(g, layer, x, ldx, in, y, ldy, n, at(o_cseg), static_cast<int>(corr.begin.size()), at(o_crows), corr_rank[gi]);
  };

  kernels::paged_attention_args pa;
  pa.q = qkv_.get();
  pa.ld_q = ld_qkv;
  pa.block_tables = at(o_bt);
  pa.query_start = at(o_qs);
  pa.context_lens = at(o_ctx);
  pa.out = attn_.get();
  pa.act_type = at_t;
  pa.kv_type = at_t;
  pa.num_seqs = plan.num_entries();
  pa.num_tokens = n;
  pa.num_heads = cfg_.num_heads;
  pa.num_kv_heads = cfg_.num_kv_heads;
  pa.head_dim = cfg_.head_dim;
  pa.page_size = opts_.page_size;
  pa.max_blocks_per_seq = plan.max_blocks_per_seq;
  pa.max_query_len = plan.max_query_len;
  pa.max_context_len = plan.max_context_len;
  pa.scale = 1.0f / std::sqrt(static_cast<float>(cfg_.head_dim));
  const std::size_t ws = dev_.attention_workspace_bytes(pa);
  if (ws > attn_ws_bytes_) {
    attn_ws_ = dev_.allocate(ws);
    attn_ws_bytes_ = ws;
  }
  pa.workspace = attn_ws_.get();

  for (int l = 0; l < cfg_.num_layers; ++l) {
    const layer_weights& lw = weights_.layers[static_cast<std::size_t>(l)];
    norm(l == 0 ? nullptr : delta_.get(), lw.input_norm, x_.get(), n);
    gemm(x_.get(), h, lw.qkv.get(), ld_qkv, qkv_.get());
    lora(lora_group::qkv, l, x_.get(), h, h, qkv_.get(), ld_qkv);

    kernels::rope_kv_write_args rk;
    rk.qkv = qkv_.get();
    rk.ld_qkv = ld_qkv;
    rk.positions = at(o_pos);
    rk.slots = at(o_slots);
    rk.k_cache = k_cache_[static_cast<std::size_t>(l)].get();
    rk.v_cache = v_cache_[static_cast<std::size_t>(l)].get();
    rk.act_type = at_t;
    rk.kv_type = at_t;
    rk.inv_freq = inv_freq_.as<float>();
    rk.attention_scaling = model::rope_attention_scaling(cfg_);
    rk.num_tokens = n;
    rk.num_heads = cfg_.num_heads;
    rk.num_kv_heads = cfg_.num_kv_heads;
    rk.head_dim = cfg_.head_dim;
    rk.page_size = opts_.page_size;
    dev_.rope_kv_write(rk);

    pa.k_cache = k_cache_[static_cast<std::size_t>(l)].get();
    pa.v_cache = v_cache_[static_cast<std::size_t>(l)].get();
    dev_.paged_attention(pa);

    gemm(attn_.get(), q, lw.o.get(), h, delta_.get());
    lora(lora_group::o, l, attn_.get(), q, q, delta_.get(), h);
    norm(delta_.get(), lw.post_norm, x_.get(), n);

    gemm(x_.get(), h, lw.gate_up.get(), 2 * inter, gate_up_.get());
    lora(lora_group::gate_up, l, x_.get(), h, h, gate_up_.get(), 2 * inter);
    kernels::silu_mul_args sm;
    sm.gate_up = gate_up_.get();
    sm.out = act_.get();
    sm.act_type = at_t;
    sm.num_tokens = n;
    sm.inter = inter;
    dev_.silu_mul(sm);
    gemm(act_.get(), inter, lw.down.get(), h, delta_.get());
    lora(lora_group::down, l, act_.get(), inter, inter, delta_.get(), h);
  }
  norm(delta_.get(), weights_.final_norm, x_.get(), n);

  step_result out;
  out.sampled.assign(plan.entries.size(), -1);
  if (num_logits == 0) {
    dev_.synchronize();
    return out;
  }
  kernels::gather_rows_args gr;
  gr.src = x_.get();
  gr.dst = xg_.get();
  gr.rows = at(o_lrows);
  gr.type = at_t;
  gr.num_rows = num_logits;
  gr.width = h;
  dev_.gather_rows(gr);
  kernels::gemm_args lm;
  lm.x = xg_.get();
  lm.ldx = h;
  lm.x_type = at_t;
  lm.w = weights_.lm_head_ptr();
  lm.ldw = h;
  lm.w_type = wt;
  lm.y = logits_.get();
  lm.ldy = cfg_.vocab_size;
  lm.y_type = dtype::f32;
  lm.m = num_logits;
  lm.n = cfg_.vocab_size;
  lm.k = h;
  dev_.gemm(lm);

  kernels::sample_args sa;
  sa.logits = logits_.as<float>();
  sa.num_rows = num_logits;
  sa.vocab = cfg_.vocab_size;
  sa.temperature = reinterpret_cast<const float*>(at(o_temp));
  sa.top_k = at(o_topk);
  sa.top_p = reinterpret_cast<const float*>(at(o_topp));
  sa.seed = reinterpret_cast<const std::uint64_t*>(at(o_seed));
  sa.step = at(o_draw);
  sa.out = sampled_.as<std::int32_t>();
  sa.workspace = sample_ws_.get();
  dev_.sample(sa);

  std::vector<std::int32_t> drawn(static_cast<std::size_t>(num_logits));
  dev_.download(drawn.data(), sampled_.get(), drawn.size() * sizeof(std::int32_t));
  for (std::size_t i = 0; i < plan.entries.size(); ++i) {
    const auto& e = plan.entries[i];
    if (e.sample) out.sampled[i] = drawn[static_cast<std::size_t>(e.logits_begin + e.num_logits - 1)];
  }
  if (want_logits) {
    out.logits.resize(static_cast<std::size_t>(num_logits) * cfg_.vocab_size);
    dev_.download(out.logits.data(), logits_.get(), out.logits.size() * sizeof(float));
  }
  return out;
}

}  // namespace loraplex::gpu
