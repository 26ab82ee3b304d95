#include "kernels/sampling.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numeric>
#include <vector>

namespace loraplex::kernels::cpu {

namespace {
int argmax(const float* l, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (l[i] > l[best]) best = i;  // strict: the lowest index wins ties
  return best;
}
}  // namespace

void sample(const sample_args& a) {
  std::vector<int> idx;
  std::vector<float> p;
  for (int r = 0; r < a.num_rows; ++r) {
    const float* l = a.logits + static_cast<std::size_t>(r) * a.vocab;
    const float temp = a.temperature[r];
    if (!(temp > 0.0f)) {
      a.out[r] = argmax(l, a.vocab);
      continue;
    }
    idx.resize(a.vocab);
    std::iota(idx.begin(), idx.end(), 0);
    // Descending by logit, ties by lower index: the order both backends use.
    std::stable_sort(idx.begin(), idx.end(), [&](int x, int y) { return l[x] > l[y]; });
    int keep = a.vocab;
    if (a.top_k[r] > 0 && a.top_k[r] < keep) keep = a.top_k[r];
    p.resize(keep);
    const float mx = l[idx[0]] / temp;
    float sum = 0.0f;
    for (int i = 0; i < keep; ++i) {
      p[i] = std::exp(l[idx[i]] / temp - mx);
      sum += p[i];
    }
    for (int i = 0; i < keep; ++i) p[i] /= sum;
    if (a.top_p[r] < 1.0f) {
      float cum = 0.0f;
      int n = 0;
      while (n < keep) {
        cum += p[n++];
        if (cum >= a.top_p[r]) break;
      }
      keep = std::max(n, 1);
      float s2 = 0.0f;
      for (int i = 0; i < keep; ++i) s2 += p[i];
      for (int i = 0; i < keep; ++i) p[i] /= s2;
    }
    const float u = sample_uniform(a.seed[r], a.step[r]);
    float cum = 0.0f;
    int chosen = idx[keep - 1];  // rounding can leave cum just under u: the last kept token then
    for (int i = 0; i < keep; ++i) {
      cum += p[i];
      if (u < cum) {
        chosen = idx[i];
        break;
      }
    }
    a.out[r] = chosen;
  }
}

}  // namespace loraplex::kernels::cpu
