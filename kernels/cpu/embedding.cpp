#include "kernels/embedding.hpp"

#include <cstddef>
#include <stdexcept>
#include <string>

namespace loraplex::kernels::cpu {

void embedding(const embedding_args& a) {
  for (int t = 0; t < a.num_tokens; ++t) {
    const int id = a.ids[t];
    if (id < 0 || id >= a.vocab) throw std::out_of_range("embedding: token id " + std::to_string(id) + " outside the vocabulary");
    const std::size_t row = static_cast<std::size_t>(id) * a.hidden;
    float* out = a.out + static_cast<std::size_t>(t) * a.hidden;
    for (int i = 0; i < a.hidden; ++i) out[i] = load_as_f32(a.table, a.table_type, row + i);
  }
}

}  // namespace loraplex::kernels::cpu
