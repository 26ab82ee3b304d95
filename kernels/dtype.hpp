#pragma once
/// Element types of tensors and the host-side conversions between them. Header-only: every layer uses it.

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace loraplex {

/// Storage type of a tensor. Compute is always at least float32 accumulation.
enum class dtype : std::uint8_t { f32 = 0, f16 = 1, bf16 = 2 };

[[nodiscard]] constexpr std::size_t dtype_size(dtype t) noexcept { return t == dtype::f32 ? 4 : 2; }

[[nodiscard]] constexpr std::string_view dtype_name(dtype t) noexcept {
  switch (t) {
    case dtype::f32: return "f32";
    case dtype::f16: return "f16";
    case dtype::bf16: return "bf16";
  }
  return "?";
}

/// bfloat16 bits → float (exact).
[[nodiscard]] inline float bf16_to_f32(std::uint16_t h) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16);
}

/// float → bfloat16 bits, round to nearest even; NaN stays NaN.
[[nodiscard]] inline std::uint16_t f32_to_bf16(float f) noexcept {
  std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

/// IEEE half bits → float (exact, subnormals included).
[[nodiscard]] inline float f16_to_f32(std::uint16_t h) noexcept {
  const std::uint32_t sign = (h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  const std::uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    const float v = std::ldexp(static_cast<float>(man), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (man << 13));
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (man << 13));
}

/// float → IEEE half bits, round to nearest even, overflow to infinity.
[[nodiscard]] inline std::uint16_t f32_to_f16(float f) noexcept {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u);
  if (a >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (a < 0x38800000u) {                                                    // below 2^-14: subnormal half
    const float v = std::bit_cast<float>(a);
    const float scaled = v * 16777216.0f;  // 2^24: units of the smallest subnormal
    return static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>(std::nearbyint(scaled)));
  }
  std::uint32_t r = a + 0x0fffu + ((a >> 13) & 1u);
  return static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>((r - 0x38000000u) >> 13));
}

/// Reads element i of a buffer of type t as float.
[[nodiscard]] inline float load_as_f32(const void* p, dtype t, std::size_t i) noexcept {
  switch (t) {
    case dtype::f32: return static_cast<const float*>(p)[i];
    case dtype::f16: return f16_to_f32(static_cast<const std::uint16_t*>(p)[i]);
    case dtype::bf16: return bf16_to_f32(static_cast<const std::uint16_t*>(p)[i]);
  }
  return 0.0f;
}

/// Writes v rounded to type t into element i.
inline void store_from_f32(void* p, dtype t, std::size_t i, float v) noexcept {
  switch (t) {
    case dtype::f32: static_cast<float*>(p)[i] = v; return;
    case dtype::f16: static_cast<std::uint16_t*>(p)[i] = f32_to_f16(v); return;
    case dtype::bf16: static_cast<std::uint16_t*>(p)[i] = f32_to_bf16(v); return;
  }
}

/// Converts n elements between types (host).
inline void convert(const void* src, dtype st, void* dst, dtype dt, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) store_from_f32(dst, dt, i, load_as_f32(src, st, i));
}

}  // namespace loraplex
