#include "gpu/cuda_device.hpp"

#include <cublas_v2.h>

#include <cstdio>

#include "gpu/cuda_buffer.hpp"
#include "kernels/cuda/detail/lora_tuning.hpp"
#include "kernels/cuda/gather.hpp"
#include "kernels/cuda/ops.hpp"

namespace loraplex::gpu {

struct cuda_device::impl {
  int ordinal = 0;
  cuda_stream stream;
  cublasHandle_t blas = nullptr;
};

namespace {
[[noreturn]] void throw_blas(cublasStatus_t s, const char* what) {
  throw cuda_error(std::string(what) + ": cuBLAS status " + std::to_string(static_cast<int>(s)));
}
}  // namespace

cuda_device::cuda_device(int ordinal) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0)
    throw cuda_error("no CUDA device available (" + std::string(cudaGetErrorString(e)) + "); use --device cpu");
  if (ordinal < 0 || ordinal >= count)
    throw cuda_error("CUDA device " + std::to_string(ordinal) + " does not exist (" + std::to_string(count) + " found)");
  LORAPLEX_CUDA_CALL(cudaSetDevice(ordinal));
  impl_ = std::make_unique<impl>();
  impl_->ordinal = ordinal;
  const cublasStatus_t s = cublasCreate(&impl_->blas);
  if (s != CUBLAS_STATUS_SUCCESS) throw_blas(s, "cublasCreate");
  cudaDeviceProp prop{};
  LORAPLEX_CUDA_CALL(cudaGetDeviceProperties(&prop, ordinal));
  name_ = "cuda:" + std::to_string(ordinal) + " (" + prop.name + ")";
  // NOTE: the LoRA kernels' fastest launch mode reads the adapter table, the segment arrays and the adapter
  // weights before waiting on the kernel ahead of them. Its precondition holds for everything this device runs:
  // those are written only by host uploads (the step's index arrays, adapter load, the negated merged copy),
  // never by a kernel of the step. Measured on an H100 (2026-11-21): the Llama-2-7B decode step's LoRA work
  // 0.90 ms → 0.70 ms (plain stream). Process-wide, like every lora_tuning knob.
  kernels::cuda::lora_tuning::set_pdl(kernels::cuda::lora_tuning::pdl::prefetch);
}

cuda_device::~cuda_device() {
  if (impl_ && impl_->blas != nullptr) cublasDestroy(impl_->blas);
}

device_memory cuda_device::allocate(std::size_t bytes) {
  if (bytes == 0) return {};
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free allocation error
    throw cuda_error("out of GPU memory on " + name_ + ": could not allocate " + std::to_string(bytes >> 20) + " MiB (" +
                     cudaGetErrorString(e) + ")");
  }
  LORAPLEX_CUDA_CALL(cudaMemsetAsync(p, 0, bytes, impl_->stream.get()));
  return device_memory(this, p, bytes);
}

void cuda_device::free(void* ptr) noexcept {
  const cudaError_t e = cudaFree(ptr);
  if (e != cudaSuccess) std::fprintf(stderr, "loraplex: cudaFree failed: %s\n", cudaGetErrorString(e));
}

void cuda_device::upload(void* dst, const void* src, std::size_t bytes) {
  // Pageable source: the copy is staged before the call returns, so the caller may reuse its buffer.
  LORAPLEX_CUDA_CALL(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, impl_->stream.get()));
}

void cuda_device::download(void* dst, const void* src, std::size_t bytes) {
  LORAPLEX_CUDA_CALL(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, impl_->stream.get()));
  impl_->stream.synchronize();
}

void cuda_device::copy(void* dst, const void* src, std::size_t bytes) {
  LORAPLEX_CUDA_CALL(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, impl_->stream.get()));
}

void cuda_device::synchronize() { impl_->stream.synchronize(); }

void cuda_device::embedding(const kernels::embedding_args& a) { kernels::cuda::embedding(a, impl_->stream.get()); }
void cuda_device::gather_rows(const kernels::gather_rows_args& a) { kernels::cuda::gather_rows(a, impl_->stream.get()); }
void cuda_device::add_rms_norm(const kernels::add_rms_norm_args& a) { kernels::cuda::add_rms_norm(a, impl_->stream.get()); }
void cuda_device::gemm(const kernels::gemm_args& a) { kernels::cuda::gemm(a, impl_->blas, impl_->stream.get()); }
void cuda_device::rope_kv_write(const kernels::rope_kv_write_args& a) { kernels::cuda::rope_kv_write(a, impl_->stream.get()); }
std::size_t cuda_device::attention_workspace_bytes(const kernels::paged_attention_args& a) {
  return kernels::cuda::paged_attention_workspace_bytes(a);
}
void cuda_device::paged_attention(const kernels::paged_attention_args& a) { kernels::cuda::paged_attention(a, impl_->stream.get()); }
void cuda_device::silu_mul(const kernels::silu_mul_args& a) { kernels::cuda::silu_mul(a, impl_->stream.get()); }
void cuda_device::lora_shrink(const kernels::lora_args& a) { kernels::cuda::lora_shrink(a, impl_->stream.get()); }
void cuda_device::lora_expand(const kernels::lora_args& a) { kernels::cuda::lora_expand(a, impl_->stream.get()); }
void cuda_device::lora_merge(const kernels::lora_merge_args& a) { kernels::cuda::lora_merge(a, impl_->stream.get()); }
std::size_t cuda_device::sample_workspace_bytes(int num_rows, int vocab) {
  return kernels::cuda::sample_workspace_bytes(num_rows, vocab);
}
void cuda_device::sample(const kernels::sample_args& a) { kernels::cuda::sample(a, impl_->stream.get()); }
void cuda_device::convert(const void* src, dtype src_type, void* dst, dtype dst_type, std::size_t n) {
  kernels::cuda::convert(src, src_type, dst, dst_type, n, impl_->stream.get());
}

}  // namespace loraplex::gpu
