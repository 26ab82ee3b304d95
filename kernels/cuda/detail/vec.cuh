#pragma once
// Vector loads and stores between bf16/f16/f32 memory and f32 registers (8 or 16 bytes at a time), and
// element loads and stores whose dtype is known only at run time (used where the access is rare: a query row,
// an output row).

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/common.cuh"

namespace loraplex::kernels::cuda::detail {

/// Elements of T in 16 bytes.
template <typename T>
inline constexpr int vec16 = static_cast<int>(16 / sizeof(T));

/// Loads N elements (N * sizeof(T) is 8 or 16 bytes, p aligned to that) as f32.
template <typename T, int N>
__device__ __forceinline__ void load_vec(const T* p, float (&f)[N]) {
  static_assert(N * sizeof(T) == 16 || N * sizeof(T) == 8, "load_vec moves 8 or 16 bytes");
  if constexpr (N * sizeof(T) == 16) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < N; ++i) f[i] = to_f32<T>(e[i]);
  } else {
    const uint2 raw = *reinterpret_cast<const uint2*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < N; ++i) f[i] = to_f32<T>(e[i]);
  }
}

/// Stores N f32 values rounded to T (8 or 16 bytes, p aligned to that).
template <typename T, int N>
__device__ __forceinline__ void store_vec(T* p, const float (&f)[N]) {
  static_assert(N * sizeof(T) == 16 || N * sizeof(T) == 8, "store_vec moves 8 or 16 bytes");
  if constexpr (N * sizeof(T) == 16) {
    uint4 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int i = 0; i < N; ++i) e[i] = from_f32<T>(f[i]);
    *reinterpret_cast<uint4*>(p) = raw;
  } else {
    uint2 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int i = 0; i < N; ++i) e[i] = from_f32<T>(f[i]);
    *reinterpret_cast<uint2*>(p) = raw;
  }
}

/// Widens 16 bytes of T held in registers (a raw vector load) to f32.
template <typename T>
__device__ __forceinline__ void unpack16(const uint4& raw, float (&f)[vec16<T>]) {
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < vec16<T>; ++i) f[i] = to_f32<T>(e[i]);
}

/// Element i of a buffer whose dtype is a run-time value.
__device__ __forceinline__ float load_dyn(const void* p, dtype t, std::size_t i) {
  switch (t) {
    case dtype::f32: return static_cast<const float*>(p)[i];
    case dtype::f16: return __half2float(static_cast<const __half*>(p)[i]);
    case dtype::bf16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  }
  return 0.0f;
}

__device__ __forceinline__ void store_dyn(void* p, dtype t, std::size_t i, float v) {
  switch (t) {
    case dtype::f32: static_cast<float*>(p)[i] = v; return;
    case dtype::f16: static_cast<__half*>(p)[i] = __float2half_rn(v); return;
    case dtype::bf16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); return;
  }
}

[[nodiscard]] inline bool aligned_to(const void* p, std::size_t bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

}  // namespace loraplex::kernels::cuda::detail
