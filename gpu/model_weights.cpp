#include "gpu/model_weights.hpp"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace loraplex::gpu {

namespace {

const model::tensor_view& checked(const model::safetensors_checkpoint& ckpt, const std::string& name,
                                  std::vector<std::int64_t> shape) {
  const model::tensor_view& t = ckpt.get(name);
  if (t.shape != shape) {
    model::tensor_view want;
    want.shape = shape;
    throw model::format_error(ckpt.source().string() + ": tensor '" + name + "' has shape " + t.shape_string() +
                              ", the model's config.json needs " + want.shape_string());
  }
  return t;
}

/// Converts a tensor to `type` on the host and uploads it at byte offset `offset` of `dst`.
void put(device& dev, const model::tensor_view& t, dtype type, device_memory& dst, std::size_t offset) {
  const std::size_t n = static_cast<std::size_t>(t.numel());
  if (t.type == type) {
    dev.upload(static_cast<char*>(dst.get()) + offset, t.data, t.bytes);
    return;
  }
  std::vector<std::byte> tmp(n * dtype_size(type));
  convert(t.data, t.type, tmp.data(), type, n);
  dev.upload(static_cast<char*>(dst.get()) + offset, tmp.data(), tmp.size());
}

device_memory upload_one(device& dev, const model::tensor_view& t, dtype type) {
  device_memory m = dev.allocate(static_cast<std::size_t>(t.numel()) * dtype_size(type));
  put(dev, t, type, m, 0);
  return m;
}

}  // namespace

model_weights upload_weights(device& dev, const model::model_config& c, const model::safetensors_checkpoint& ckpt,
                             dtype type, const progress_fn& progress) {
  const std::int64_t h = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), inter = c.intermediate_size;
  const std::size_t es = dtype_size(type);
  model_weights w;
  w.type = type;
  w.embed = upload_one(dev, checked(ckpt, "model.embed_tokens.weight", {c.vocab_size, h}), type);
  if (!c.tie_word_embeddings) w.lm_head = upload_one(dev, checked(ckpt, "lm_head.weight", {c.vocab_size, h}), type);
  w.final_norm = upload_one(dev, checked(ckpt, "model.norm.weight", {h}), dtype::f32);
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    layer_weights lw;
    lw.qkv = dev.allocate(static_cast<std::size_t>((q + 2 * kv) * h) * es);
    put(dev, checked(ckpt, p + "self_attn.q_proj.weight", {q, h}), type, lw.qkv, 0);
    put(dev, checked(ckpt, p + "self_attn.k_proj.weight", {kv, h}), type, lw.qkv, static_cast<std::size_t>(q * h) * es);
    put(dev, checked(ckpt, p + "self_attn.v_proj.weight", {kv, h}), type, lw.qkv, static_cast<std::size_t>((q + kv) * h) * es);
    lw.o = upload_one(dev, checked(ckpt, p + "self_attn.o_proj.weight", {h, q}), type);
    lw.gate_up = dev.allocate(static_cast<std::size_t>(2 * inter * h) * es);
    put(dev, checked(ckpt, p + "mlp.gate_proj.weight", {inter, h}), type, lw.gate_up, 0);
    put(dev, checked(ckpt, p + "mlp.up_proj.weight", {inter, h}), type, lw.gate_up, static_cast<std::size_t>(inter * h) * es);
    lw.down = upload_one(dev, checked(ckpt, p + "mlp.down_proj.weight", {h, inter}), type);
    lw.input_norm = upload_one(dev, checked(ckpt, p + "input_layernorm.weight", {h}), dtype::f32);
    lw.post_norm = upload_one(dev, checked(ckpt, p + "post_attention_layernorm.weight", {h}), dtype::f32);
    w.layers.push_back(std::move(lw));
    if (progress) progress(l + 1, c.num_layers);
  }
  return w;
}

}  // namespace loraplex::gpu
