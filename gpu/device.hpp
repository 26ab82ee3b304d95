#pragma once
/// A compute device: memory and the kernels/ ops. The model runner is written once against this interface;
/// the CPU device runs the reference kernels, the CUDA device runs kernels/cuda on a stream. Pointers handed
/// to ops are this device's memory (host memory for the CPU device).

#include <cstddef>
#include <memory>
#include <string>

#include "kernels/activation.hpp"
#include "kernels/attention.hpp"
#include "kernels/dtype.hpp"
#include "kernels/embedding.hpp"
#include "kernels/gather.hpp"
#include "kernels/gemm.hpp"
#include "kernels/lora.hpp"
#include "kernels/merge.hpp"
#include "kernels/rms_norm.hpp"
#include "kernels/rope.hpp"
#include "kernels/sampling.hpp"

namespace loraplex::gpu {

class device;

/// Memory on a device; freed by its owner's device when destroyed. Move-only.
class device_memory {
 public:
  device_memory() = default;
  device_memory(device* owner, void* ptr, std::size_t bytes) noexcept : owner_(owner), ptr_(ptr), bytes_(bytes) {}
  device_memory(device_memory&& o) noexcept;
  device_memory& operator=(device_memory&& o) noexcept;
  device_memory(const device_memory&) = delete;
  device_memory& operator=(const device_memory&) = delete;
  ~device_memory();

  [[nodiscard]] void* get() const noexcept { return ptr_; }
  template <typename T>
  [[nodiscard]] T* as() const noexcept {
    return static_cast<T*>(ptr_);
  }
  [[nodiscard]] std::size_t bytes() const noexcept { return bytes_; }

 private:
  void release() noexcept;
  device* owner_ = nullptr;
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

class device {
 public:
  virtual ~device() = default;

  /// "cpu" or "cuda:0 (NVIDIA H100 80GB HBM3)".
  [[nodiscard]] virtual std::string name() const = 0;
  /// The activation types this device computes in (the CPU: f32 only).
  [[nodiscard]] virtual bool supports_activation(dtype t) const = 0;

  // --- memory ----------------------------------------------------------------------------------------------
  /// Zero-filled. Throws std::bad_alloc (CPU) or cuda_error (CUDA) naming the size when out of memory.
  [[nodiscard]] virtual device_memory allocate(std::size_t bytes) = 0;
  /// Host → device. The host buffer may be reused as soon as the call returns.
  virtual void upload(void* dst, const void* src, std::size_t bytes) = 0;
  /// Device → host; waits for the device's queued work first.
  virtual void download(void* dst, const void* src, std::size_t bytes) = 0;
  /// Device → device, in stream order.
  virtual void copy(void* dst, const void* src, std::size_t bytes) = 0;
  /// Waits for every queued op.
  virtual void synchronize() = 0;

  // --- ops (kernels/*.hpp) ---------------------------------------------------------------------------------
  virtual void embedding(const kernels::embedding_args& a) = 0;
  virtual void gather_rows(const kernels::gather_rows_args& a) = 0;
  virtual void add_rms_norm(const kernels::add_rms_norm_args& a) = 0;
  virtual void gemm(const kernels::gemm_args& a) = 0;
  virtual void rope_kv_write(const kernels::rope_kv_write_args& a) = 0;
  [[nodiscard]] virtual std::size_t attention_workspace_bytes(const kernels::paged_attention_args& a) = 0;
  virtual void paged_attention(const kernels::paged_attention_args& a) = 0;
  virtual void silu_mul(const kernels::silu_mul_args& a) = 0;
  virtual void lora_shrink(const kernels::lora_args& a) = 0;
  virtual void lora_expand(const kernels::lora_args& a) = 0;
  virtual void lora_merge(const kernels::lora_merge_args& a) = 0;
  [[nodiscard]] virtual std::size_t sample_workspace_bytes(int num_rows, int vocab) = 0;
  virtual void sample(const kernels::sample_args& a) = 0;
  /// n elements from src_type to dst_type (weight upload to a storage type).
  virtual void convert(const void* src, dtype src_type, void* dst, dtype dst_type, std::size_t n) = 0;

 protected:
  friend class device_memory;
  virtual void free(void* ptr) noexcept = 0;
};

}  // namespace loraplex::gpu
