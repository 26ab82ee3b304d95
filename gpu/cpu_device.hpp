#pragma once
/// The CPU device: host memory and the reference kernels (f32 activations; f32, bf16 or f16 weights).

#include "gpu/device.hpp"

namespace loraplex::gpu {

class cpu_device final : public device {
 public:
  [[nodiscard]] std::string name() const override { return "cpu"; }
  [[nodiscard]] bool supports_activation(dtype t) const override { return t == dtype::f32; }

  [[nodiscard]] device_memory allocate(std::size_t bytes) override;
  void upload(void* dst, const void* src, std::size_t bytes) override;
  void download(void* dst, const void* src, std::size_t bytes) override;
  void copy(void* dst, const void* src, std::size_t bytes) override;
  void synchronize() override {}

  void embedding(const kernels::embedding_args& a) override;
  void gather_rows(const kernels::gather_rows_args& a) override;
  void add_rms_norm(const kernels::add_rms_norm_args& a) override;
  void gemm(const kernels::gemm_args& a) override;
  void rope_kv_write(const kernels::rope_kv_write_args& a) override;
  [[nodiscard]] std::size_t attention_workspace_bytes(const kernels::paged_attention_args&) override { return 0; }
  void paged_attention(const kernels::paged_attention_args& a) override;
  void silu_mul(const kernels::silu_mul_args& a) override;
  void lora_shrink(const kernels::lora_args& a) override;
  void lora_expand(const kernels::lora_args& a) override;
  void lora_merge(const kernels::lora_merge_args& a) override;
  [[nodiscard]] std::size_t sample_workspace_bytes(int, int) override { return 0; }
  void sample(const kernels::sample_args& a) override;
  void convert(const void* src, dtype src_type, void* dst, dtype dst_type, std::size_t n) override;

 protected:
  void free(void* ptr) noexcept override;
};

}  // namespace loraplex::gpu
