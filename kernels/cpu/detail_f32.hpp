#pragma once
// Internal to kernels/cpu: views of weight matrices as f32, converting only when they are not f32 already.

#include <cstddef>
#include <vector>

#include "kernels/dtype.hpp"

namespace loraplex::kernels::cpu::detail {

/// rows × cols matrix with row stride ld, as contiguous-or-strided f32; *ld_out tells the stride to use.
inline const float* as_f32(const void* p, dtype t, int rows, int cols, int ld, std::vector<float>& scratch, int* ld_out) {
  if (t == dtype::f32) {
    *ld_out = ld;
    return static_cast<const float*>(p);
  }
  scratch.resize(static_cast<std::size_t>(rows) * cols);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c)
      scratch[static_cast<std::size_t>(r) * cols + c] = load_as_f32(p, t, static_cast<std::size_t>(r) * ld + c);
  *ld_out = cols;
  return scratch.data();
}

}  // namespace loraplex::kernels::cpu::detail
