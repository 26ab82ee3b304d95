#include "kernels/attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

namespace loraplex::kernels::cpu {

void paged_attention(const paged_attention_args& a) {
  const int group = a.num_heads / a.num_kv_heads;
  const std::size_t kv_row = static_cast<std::size_t>(a.num_kv_heads) * a.head_dim;
  std::vector<float> scores, acc(a.head_dim), qv(a.head_dim);
  for (int s = 0; s < a.num_seqs; ++s) {
    const int q0 = a.query_start[s];
    const int q_len = a.query_start[s + 1] - q0;
    const int ctx = a.context_lens[s];
    const std::int32_t* blocks = a.block_tables + static_cast<std::size_t>(s) * a.max_blocks_per_seq;
    scores.resize(ctx);
    for (int i = 0; i < q_len; ++i) {
      const int t = q0 + i;
      const int last = ctx - q_len + i;  // the query's own position: keys 0..last are visible
      for (int h = 0; h < a.num_heads; ++h) {
        const int kvh = h / group;
        const std::size_t qoff = static_cast<std::size_t>(t) * a.ld_q + static_cast<std::size_t>(h) * a.head_dim;
        for (int d = 0; d < a.head_dim; ++d) qv[d] = load_as_f32(a.q, a.act_type, qoff + d);
        float mx = -std::numeric_limits<float>::infinity();
        for (int p = 0; p <= last; ++p) {
          const std::size_t slot = static_cast<std::size_t>(blocks[p / a.page_size]) * a.page_size + p % a.page_size;
          const std::size_t koff = slot * kv_row + static_cast<std::size_t>(kvh) * a.head_dim;
          float dot = 0.0f;
          for (int d = 0; d < a.head_dim; ++d) dot += qv[d] * load_as_f32(a.k_cache, a.kv_type, koff + d);
          scores[p] = dot * a.scale;
          mx = std::max(mx, scores[p]);
        }
        float sum = 0.0f;
        for (int p = 0; p <= last; ++p) {
          scores[p] = std::exp(scores[p] - mx);
          sum += scores[p];
        }
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int p = 0; p <= last; ++p) {
          const std::size_t slot = static_cast<std::size_t>(blocks[p / a.page_size]) * a.page_size + p % a.page_size;
          const std::size_t voff = slot * kv_row + static_cast<std::size_t>(kvh) * a.head_dim;
          const float w = scores[p] / sum;
          for (int d = 0; d < a.head_dim; ++d) acc[d] += w * load_as_f32(a.v_cache, a.kv_type, voff + d);
        }
        const std::size_t ooff = static_cast<std::size_t>(t) * a.num_heads * a.head_dim + static_cast<std::size_t>(h) * a.head_dim;
        for (int d = 0; d < a.head_dim; ++d) store_from_f32(a.out, a.act_type, ooff + d, acc[d]);
      }
    }
  }
}

}  // namespace loraplex::kernels::cpu
