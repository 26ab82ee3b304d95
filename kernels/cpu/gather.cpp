#include "kernels/gather.hpp"

#include <cstddef>
#include <cstring>

namespace loraplex::kernels::cpu {

void gather_rows(const gather_rows_args& a) {
  const std::size_t row_bytes = static_cast<std::size_t>(a.width) * dtype_size(a.type);
  for (int i = 0; i < a.num_rows; ++i)
    std::memcpy(static_cast<char*>(a.dst) + static_cast<std::size_t>(i) * row_bytes,
                static_cast<const char*>(a.src) + static_cast<std::size_t>(a.rows[i]) * row_bytes, row_bytes);
}

}  // namespace loraplex::kernels::cpu
