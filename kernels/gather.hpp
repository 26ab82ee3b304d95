#pragma once
/// Row gather: dst[i] = src[rows[i]] (the rows whose logits a step computes).

#include <cstdint>

#include "kernels/dtype.hpp"

namespace loraplex::kernels {

struct gather_rows_args {
  const void* src = nullptr;           // [*, width] type
  void* dst = nullptr;                 // [num_rows, width] type
  const std::int32_t* rows = nullptr;  // [num_rows]
  dtype type = dtype::f32;
  int num_rows = 0;
  int width = 0;
};

namespace cpu {
void gather_rows(const gather_rows_args& a);
}

}  // namespace loraplex::kernels
