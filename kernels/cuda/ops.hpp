#pragma once
/// The CUDA implementations of the kernels/ ops. Host-includable (no CUDA headers): the same argument structs
/// as the CPU reference, plus a stream; pointers in the args are device pointers (the adapter table and
/// index arrays included). Activations and weights are bf16 or f16 (f32 where an op says so), accumulation is
/// f32. Ops never allocate: an op that needs scratch says how much with *_workspace_bytes and takes it in
/// args.workspace. Each op checks its shapes and types (std::invalid_argument naming the op and the value)
/// and checks the launch (loraplex::cuda_error naming the op, device, file and line).

#include <cstddef>
#include <cstdint>

#include "kernels/activation.hpp"
#include "kernels/attention.hpp"
#include "kernels/embedding.hpp"
#include "kernels/gemm.hpp"
#include "kernels/lora.hpp"
#include "kernels/merge.hpp"
#include "kernels/rms_norm.hpp"
#include "kernels/rope.hpp"
#include "kernels/sampling.hpp"

struct CUstream_st;
struct cublasContext;

namespace loraplex::kernels::cuda {

using stream_t = CUstream_st*;          // cudaStream_t
using cublas_handle_t = cublasContext*;  // cublasHandle_t

// --- LoRA (kernels/cuda/lora_*.cu) -----------------------------------------------------------------------
/// Chooses per call between the decode path (BGMV: per-row adapter) and the prefill path (SGMV: segments).
void lora_shrink(const lora_args& a, stream_t stream);
void lora_expand(const lora_args& a, stream_t stream);
/// W rows += Btᵀ·A in f32, rounded once to w_type.
void lora_merge(const lora_merge_args& a, stream_t stream);

// --- the rest of the step (kernels/cuda/*.cu) ------------------------------------------------------------
void embedding(const embedding_args& a, stream_t stream);
void add_rms_norm(const add_rms_norm_args& a, stream_t stream);
void rope_kv_write(const rope_kv_write_args& a, stream_t stream);
[[nodiscard]] std::size_t paged_attention_workspace_bytes(const paged_attention_args& a);
void paged_attention(const paged_attention_args& a, stream_t stream);
void silu_mul(const silu_mul_args& a, stream_t stream);
/// cuBLAS(Lt) GEMM; x and w of one type (bf16, f16 or f32), y of that type or f32.
void gemm(const gemm_args& a, cublas_handle_t handle, stream_t stream);
[[nodiscard]] std::size_t sample_workspace_bytes(int num_rows, int vocab);
void sample(const sample_args& a, stream_t stream);

// --- conversions used by weight upload and tests ---------------------------------------------------------
/// dst[i] = convert(src[i]) for n elements on the device.
void convert(const void* src, dtype src_type, void* dst, dtype dst_type, std::size_t n, stream_t stream);

}  // namespace loraplex::kernels::cuda
