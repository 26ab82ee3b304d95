#pragma once
/// The CUDA device: device memory, one compute stream, a cuBLAS handle, and the kernels/cuda ops. Activations
/// in bf16, f16 or f32; weights in the same type.

#include <memory>
#include <string>

#include "gpu/device.hpp"

namespace loraplex::gpu {

class cuda_device final : public device {
 public:
  /// Selects GPU `ordinal`; throws cuda_error when there is none.
  explicit cuda_device(int ordinal);
  ~cuda_device() override;
  cuda_device(const cuda_device&) = delete;
  cuda_device& operator=(const cuda_device&) = delete;

  [[nodiscard]] std::string name() const override { return name_; }
  [[nodiscard]] bool supports_activation(dtype) const override { return true; }

  [[nodiscard]] device_memory allocate(std::size_t bytes) override;
  void upload(void* dst, const void* src, std::size_t bytes) override;
  void download(void* dst, const void* src, std::size_t bytes) override;
  void copy(void* dst, const void* src, std::size_t bytes) override;
  void synchronize() override;

  void embedding(const kernels::embedding_args& a) override;
  void gather_rows(const kernels::gather_rows_args& a) override;
  void add_rms_norm(const kernels::add_rms_norm_args& a) override;
  void gemm(const kernels::gemm_args& a) override;
  void rope_kv_write(const kernels::rope_kv_write_args& a) override;
  [[nodiscard]] std::size_t attention_workspace_bytes(const kernels::paged_attention_args& a) override;
  void paged_attention(const kernels::paged_attention_args& a) override;
  void silu_mul(const kernels::silu_mul_args& a) override;
  void lora_shrink(const kernels::lora_args& a) override;
  void lora_expand(const kernels::lora_args& a) override;
  void lora_merge(const kernels::lora_merge_args& a) override;
  [[nodiscard]] std::size_t sample_workspace_bytes(int num_rows, int vocab) override;
  void sample(const kernels::sample_args& a) override;
  void convert(const void* src, dtype src_type, void* dst, dtype dst_type, std::size_t n) override;

 protected:
  void free(void* ptr) noexcept override;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
  std::string name_;
};

}  // namespace loraplex::gpu
