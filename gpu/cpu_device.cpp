#include "gpu/cpu_device.hpp"

#include <cstdlib>
#include <cstring>
#include <new>

namespace loraplex::gpu {

device_memory cpu_device::allocate(std::size_t bytes) {
  if (bytes == 0) return {};
  const std::size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, 0, rounded);
  return device_memory(this, p, bytes);
}

void cpu_device::free(void* ptr) noexcept { std::free(ptr); }
void cpu_device::upload(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
void cpu_device::download(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
void cpu_device::copy(void* dst, const void* src, std::size_t bytes) { std::memmove(dst, src, bytes); }

void cpu_device::embedding(const kernels::embedding_args& a) { kernels::cpu::embedding(a); }
void cpu_device::gather_rows(const kernels::gather_rows_args& a) { kernels::cpu::gather_rows(a); }
void cpu_device::add_rms_norm(const kernels::add_rms_norm_args& a) { kernels::cpu::add_rms_norm(a); }
void cpu_device::gemm(const kernels::gemm_args& a) { kernels::cpu::gemm(a); }
void cpu_device::rope_kv_write(const kernels::rope_kv_write_args& a) { kernels::cpu::rope_kv_write(a); }
void cpu_device::paged_attention(const kernels::paged_attention_args& a) { kernels::cpu::paged_attention(a); }
void cpu_device::silu_mul(const kernels::silu_mul_args& a) { kernels::cpu::silu_mul(a); }
void cpu_device::lora_shrink(const kernels::lora_args& a) { kernels::cpu::lora_shrink(a); }
void cpu_device::lora_expand(const kernels::lora_args& a) { kernels::cpu::lora_expand(a); }
void cpu_device::lora_merge(const kernels::lora_merge_args& a) { kernels::cpu::lora_merge(a); }
void cpu_device::sample(const kernels::sample_args& a) { kernels::cpu::sample(a); }
void cpu_device::convert(const void* src, dtype src_type, void* dst, dtype dst_type, std::size_t n) {
  loraplex::convert(src, src_type, dst, dst_type, n);
}

}  // namespace loraplex::gpu
