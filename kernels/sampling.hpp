#pragma once
/// Token sampling from logits: greedy (temperature 0: argmax, lowest index on ties) or temperature / top-k /
/// top-p with a per-row seed. The random draw is counter-based, u = uniform(seed, step), so a request gives the
/// same tokens whatever else shares its batch, and the CPU and CUDA backends draw the same u.
///
/// Sampling rule (both backends): z = logits / T; keep the top_k largest (top_k <= 0: all); p = softmax(z) over
/// the kept; sort by p descending (ties: lower index first); keep the shortest prefix whose cumulative p reaches
/// top_p (always at least one token); renormalise; return the first token whose cumulative p exceeds u.

#include <cstdint>

namespace loraplex::kernels {

struct sample_args {
  const float* logits = nullptr;  // [num_rows, vocab] f32
  int num_rows = 0;
  int vocab = 0;
  const float* temperature = nullptr;  // [num_rows], <= 0 means greedy
  const std::int32_t* top_k = nullptr;  // [num_rows], <= 0 means no limit
  const float* top_p = nullptr;         // [num_rows], >= 1 means no limit
  const std::uint64_t* seed = nullptr;  // [num_rows]
  const std::int32_t* step = nullptr;   // [num_rows] index of the token being drawn (0 = first)
  std::int32_t* out = nullptr;          // [num_rows]
  void* workspace = nullptr;            // backend scratch; unused on the CPU
};

/// The uniform draw in [0, 1) for (seed, step): splitmix64 of both, top 24 bits. Host and device agree.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline float sample_uniform(std::uint64_t seed, std::int32_t step) {
  std::uint64_t z = seed ^ (0x9e3779b97f4a7c15ull * (static_cast<std::uint64_t>(static_cast<std::uint32_t>(step)) + 1));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z = z ^ (z >> 31);
  return static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
}

namespace cpu {
void sample(const sample_args& a);
}

}  // namespace loraplex::kernels
