// CUDA sampling against the CPU reference: greedy argmax, seeded temperature / top-k / top-p draws for the
// same (seed, step), top-k = 1 equal to greedy, and the distribution of many draws.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "cuda_ops_test_util.hpp"
#include "kernels/cuda/ops.hpp"

namespace k = loraplex::kernels;
namespace kc = loraplex::kernels::cuda;
using loraplex::cuda_buffer;
using namespace loraplex::test;

namespace {

struct sample_batch {
  int vocab = 0;
  std::vector<float> logits;  // [rows, vocab]
  std::vector<float> temperature, top_p;
  std::vector<std::int32_t> top_k, step;
  std::vector<std::uint64_t> seed;
  [[nodiscard]] int rows() const { return static_cast<int>(temperature.size()); }
  void add_row(const std::vector<float>& l, float t, int tk, float tp, std::uint64_t s, std::int32_t st) {
    logits.insert(logits.end(), l.begin(), l.end());
    temperature.push_back(t);
    top_k.push_back(tk);
    top_p.push_back(tp);
    seed.push_back(s);
    step.push_back(st);
  }
};

std::vector<std::int32_t> run_gpu(const sample_batch& b, loraplex::cuda_stream& stream, double* ms = nullptr) {
  const cuda_buffer d_l = upload_vec(b.logits), d_t = upload_vec(b.temperature), d_k = upload_vec(b.top_k),
                    d_p = upload_vec(b.top_p), d_s = upload_vec(b.seed), d_st = upload_vec(b.step);
  cuda_buffer d_out = poisoned(b.rows() * 4);
  cuda_buffer d_ws = poisoned(kc::sample_workspace_bytes(b.rows(), b.vocab));
  k::sample_args a;
  a.logits = d_l.as<float>();
  a.num_rows = b.rows();
  a.vocab = b.vocab;
  a.temperature = d_t.as<float>();
  a.top_k = d_k.as<std::int32_t>();
  a.top_p = d_p.as<float>();
  a.seed = d_s.as<std::uint64_t>();
  a.step = d_st.as<std::int32_t>();
  a.out = d_out.as<std::int32_t>();
  a.workspace = d_ws.get();
  loraplex::cuda_event e0, e1;
  e0.record(stream.get());
  kc::sample(a, stream.get());
  e1.record(stream.get());
  stream.synchronize();
  if (ms != nullptr) *ms = e1.elapsed_ms_since(e0);
  return d_out.to_vector<std::int32_t>(b.rows());
}

std::vector<std::int32_t> run_cpu(const sample_batch& b) {
  std::vector<std::int32_t> out(b.rows());
  k::sample_args a;
  a.logits = b.logits.data();
  a.num_rows = b.rows();
  a.vocab = b.vocab;
  a.temperature = b.temperature.data();
  a.top_k = b.top_k.data();
  a.top_p = b.top_p.data();
  a.seed = b.seed.data();
  a.step = b.step.data();
  a.out = out.data();
  k::cpu::sample(a);
  return out;
}

/// Whether the rule's outcome for a row is within `delta` (relative) of a decision boundary: the top-p cut or
/// the interval of u. The reference sums up to 152k probabilities in sequence in f32 (relative rounding of the
/// order of √n·ε ≈ 2e-5), the device sums exact fixed-point values, so draws that close to a boundary may
/// legitimately differ. Computed in double from the same f32 quotients l / T the backends use.
bool near_boundary(const float* l, int vocab, float temp, int top_k, float top_p, float u, double delta) {
  std::vector<int> idx(vocab);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int x, int y) { return l[x] > l[y]; });
  const int keep = top_k > 0 && top_k < vocab ? top_k : vocab;
  const double mx = l[idx[0]] / temp;
  std::vector<double> w(keep);
  double total = 0.0;
  for (int i = 0; i < keep; ++i) total += w[i] = std::exp(static_cast<double>(l[idx[i]] / temp) - mx);
  int n = keep;
  bool near = false;
  if (top_p < 1.0f) {
    const double target = static_cast<double>(top_p) * total;
    double cum = 0.0;
    for (int i = 0; i < keep; ++i) {
      const double prev = cum;
      cum += w[i];
      if (cum >= target) {
        n = i + 1;
        near |= (i > 0 && target - prev < delta * total) || cum - target < delta * total;
        break;
      }
    }
  }
  double wp = 0.0;
  for (int i = 0; i < n; ++i) wp += w[i];
  const double target = static_cast<double>(u) * wp;
  double cum = 0.0;
  for (int i = 0; i < n; ++i) {
    const double prev = cum;
    cum += w[i];
    if (cum > target) {
      near |= (i > 0 && target - prev < delta * wp) || cum - target < delta * wp;
      break;
    }
  }
  return near;
}

std::vector<float> random_logits(std::mt19937_64& rng, int vocab, int boosted, float sigma) {
  std::vector<float> l(vocab);
  std::normal_distribution<float> n(0.0f, sigma);
  for (auto& v : l) v = n(rng);
  std::uniform_int_distribution<int> any(0, vocab - 1);
  std::uniform_real_distribution<float> boost(4.0f, 12.0f);
  for (int i = 0; i < boosted; ++i) l[any(rng)] += boost(rng);
  return l;
}

}  // namespace

BOOST_AUTO_TEST_CASE(greedy_matches_cpu) {
  auto rng = make_rng("sample greedy");
  loraplex::cuda_stream stream;
  for (const int vocab : {1, 2, 7, 1000, 32000, 151936}) {
    sample_batch b;
    b.vocab = vocab;
    for (int r = 0; r < 9; ++r) b.add_row(random_logits(rng, vocab, r % 3, 2.0f), r % 2 ? 0.0f : -1.0f, 0, 1.0f, r, 0);
    std::vector<float> flat(vocab, 0.5f);  // every logit equal: index 0
    b.add_row(flat, 0.0f, 0, 1.0f, 0, 0);
    if (vocab > 9) {  // two equal maxima: the lower index
      std::vector<float> two = random_logits(rng, vocab, 0, 1.0f);
      two[vocab - 1] = 50.0f;
      two[vocab / 2] = 50.0f;
      b.add_row(two, 0.0f, 0, 1.0f, 0, 0);
    }
    const auto gpu = run_gpu(b, stream);
    const auto cpu = run_cpu(b);
    BOOST_TEST(gpu == cpu, "greedy vocab " << vocab);
  }
}

BOOST_AUTO_TEST_CASE(seeded_sampling_matches_cpu) {
  auto rng = make_rng("sample seeded");
  loraplex::cuda_stream stream;
  int compared = 0, near = 0, rows_total = 0;
  for (const int vocab : {7, 1000, 32000, 151936}) {
    sample_batch b;
    b.vocab = vocab;
    const int rows = vocab > 100000 ? 48 : 96;
    std::uniform_real_distribution<float> temp(0.3f, 1.5f);
    const int top_ks[] = {0, 1, 5, 50, 1000, vocab, vocab + 10, -1};
    const float top_ps[] = {1.0f, 0.95f, 0.9f, 0.5f, 0.0f, 1.5f};
    for (int r = 0; r < rows; ++r) {
      std::vector<float> l = random_logits(rng, vocab, 1 + r % 20, r % 4 == 0 ? 0.5f : 1.0f);
      if (r % 5 == 0)  // logits rounded to bf16: many exact ties, ordered by index
        for (auto& v : l) v = loraplex::bf16_to_f32(loraplex::f32_to_bf16(v));
      const float t = r % 11 == 0 ? 0.0f : temp(rng);  // greedy rows mixed in
      b.add_row(l, t, top_ks[r % 8], top_ps[(r / 8) % 6], rng(), static_cast<std::int32_t>(rng() % 5000));
    }
    const auto gpu = run_gpu(b, stream);
    const auto cpu = run_cpu(b);
    for (int r = 0; r < b.rows(); ++r) {
      ++rows_total;
      const float u = k::sample_uniform(b.seed[r], b.step[r]);
      if (b.temperature[r] > 0.0f &&
          near_boundary(b.logits.data() + static_cast<std::size_t>(r) * vocab, vocab, b.temperature[r], b.top_k[r],
                        b.top_p[r], u, 1e-4)) {
        ++near;
        continue;
      }
      ++compared;
      BOOST_TEST(gpu[r] == cpu[r], "vocab " << vocab << " row " << r << " T " << b.temperature[r] << " top_k "
                                            << b.top_k[r] << " top_p " << b.top_p[r] << ": gpu " << gpu[r] << " cpu "
                                            << cpu[r]);
    }
  }
  BOOST_TEST_MESSAGE("seeded sampling: " << compared << " rows equal to the CPU, " << near
                                         << " skipped within 1e-4 of a boundary, of " << rows_total);
  // About 10% of these rows fall within 1e-4 of a boundary (flat tails of large vocabularies).
  BOOST_TEST(near * 4 <= rows_total, "too many rows near a boundary for the check to mean much");
}

BOOST_AUTO_TEST_CASE(top_k_one_is_greedy) {
  auto rng = make_rng("sample top1");
  loraplex::cuda_stream stream;
  sample_batch b;
  b.vocab = 32000;
  for (int r = 0; r < 32; ++r) b.add_row(random_logits(rng, b.vocab, r % 4, 2.0f), 0.2f + 0.1f * r, 1, r % 2 ? 1.0f : 0.5f, rng(), r);
  const auto gpu = run_gpu(b, stream);
  for (int r = 0; r < b.rows(); ++r) {
    const float* l = b.logits.data() + static_cast<std::size_t>(r) * b.vocab;
    const int best = static_cast<int>(std::max_element(l, l + b.vocab) - l);
    BOOST_TEST(gpu[r] == best);
  }
}

BOOST_AUTO_TEST_CASE(sampling_distribution) {
  auto rng = make_rng("sample distribution");
  loraplex::cuda_stream stream;
  const std::vector<float> logits = {1.0f, 2.5f, 0.0f, 2.5f, -1.0f, 3.0f, 0.5f, -3.0f, 1.5f, 2.0f};
  const int vocab = static_cast<int>(logits.size());
  struct cfg {
    float t;
    int top_k;
    float top_p;
  };
  for (const cfg c : {cfg{1.0f, 0, 1.0f}, cfg{0.7f, 4, 1.0f}, cfg{1.3f, 0, 0.8f}, cfg{1.0f, 6, 0.9f}}) {
    const int draws = 40000;
    sample_batch b;
    b.vocab = vocab;
    const std::uint64_t base_seed = rng();
    for (int r = 0; r < draws; ++r) b.add_row(logits, c.t, c.top_k, c.top_p, base_seed + static_cast<std::uint64_t>(r / 8), r % 8);
    const auto gpu = run_gpu(b, stream);
    // Expected probabilities by the rule, in double.
    std::vector<int> idx(vocab);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int x, int y) { return logits[x] > logits[y]; });
    int keep = c.top_k > 0 && c.top_k < vocab ? c.top_k : vocab;
    std::vector<double> p(keep);
    double sum = 0.0;
    for (int i = 0; i < keep; ++i) sum += p[i] = std::exp((logits[idx[i]] - logits[idx[0]]) / c.t);
    for (auto& v : p) v /= sum;
    if (c.top_p < 1.0f) {
      double cum = 0.0;
      int n = 0;
      while (n < keep) {
        cum += p[n++];
        if (cum >= c.top_p) break;
      }
      keep = n;
      double s2 = 0.0;
      for (int i = 0; i < keep; ++i) s2 += p[i];
      for (int i = 0; i < keep; ++i) p[i] /= s2;
    }
    std::vector<double> expected(vocab, 0.0);
    for (int i = 0; i < keep; ++i) expected[idx[i]] = p[i];
    std::vector<int> counts(vocab, 0);
    for (const int g : gpu) {
      BOOST_REQUIRE(g >= 0 && g < vocab);
      ++counts[g];
    }
    double worst = 0.0;
    for (int i = 0; i < vocab; ++i) {
      const double f = static_cast<double>(counts[i]) / draws;
      const double sigma = std::sqrt(expected[i] * (1.0 - expected[i]) / draws);
      worst = std::max(worst, sigma > 0 ? std::fabs(f - expected[i]) / sigma : 0.0);
      if (expected[i] == 0.0) {
        BOOST_TEST(counts[i] == 0, "token " << i << " outside top-k/top-p was drawn " << counts[i] << " times");
      } else {
        // 5 sigma: a false alarm about once in 1.7 million checks.
        BOOST_TEST(std::fabs(f - expected[i]) <= 5.0 * sigma, "token " << i << ": frequency " << f << ", expected "
                                                                         << expected[i] << " (T " << c.t << " top_k "
                                                                         << c.top_k << " top_p " << c.top_p << ")");
      }
    }
    BOOST_TEST_MESSAGE("distribution T " << c.t << " top_k " << c.top_k << " top_p " << c.top_p << ": " << draws
                                         << " draws, worst deviation " << worst << " sigma");
  }
}

BOOST_AUTO_TEST_CASE(sampling_speed_report) {
  auto rng = make_rng("sample speed");
  loraplex::cuda_stream stream;
  for (const float top_p : {1.0f, 0.9f}) {
    sample_batch b;
    b.vocab = 151936;
    for (int r = 0; r < 64; ++r) b.add_row(random_logits(rng, b.vocab, 10, 2.0f), 0.8f, r % 2 ? 50 : 0, top_p, rng(), r);
    run_gpu(b, stream);  // warm-up
    double ms = 0.0;
    run_gpu(b, stream, &ms);
    BOOST_TEST_MESSAGE("sample 64 rows x 151936 (T 0.8, top_k 0/50, top_p " << top_p << "): " << ms * 1e3 << " us");
  }
}
