#pragma once
/// Embedding gather: one row of the token table per token, into the float32 residual stream.

#include <cstdint>

#include "kernels/dtype.hpp"

namespace loraplex::kernels {

struct embedding_args {
  const void* table = nullptr;       // [vocab, hidden] table_type
  dtype table_type = dtype::f32;
  const std::int32_t* ids = nullptr;  // [num_tokens], each in [0, vocab)
  float* out = nullptr;               // [num_tokens, hidden] f32 (the residual stream is always f32)
  int num_tokens = 0;
  int hidden = 0;
  int vocab = 0;
};

namespace cpu {
void embedding(const embedding_args& a);
}

}  // namespace loraplex::kernels
