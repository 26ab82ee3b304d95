// CUDA ops against the CPU reference: embedding, add_rms_norm, silu_mul, gemm, convert, and the argument
// checks. Attention and RoPE are in test_cuda_attention.cpp, sampling in test_cuda_sampling.cpp.
#define BOOST_TEST_MODULE cuda_ops
#include <boost/test/unit_test.hpp>

#include <cublas_v2.h>

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_ops_test_util.hpp"
#include "kernels/cuda/ops.hpp"

namespace k = loraplex::kernels;
namespace kc = loraplex::kernels::cuda;
using loraplex::cuda_buffer;
using loraplex::dtype;
using loraplex::dtype_name;
using loraplex::dtype_size;
using namespace loraplex::test;

namespace {

constexpr dtype all_types[] = {dtype::bf16, dtype::f16, dtype::f32};
constexpr int odd_counts[] = {1, 2, 3, 7, 133};

std::string name_of(dtype t) { return std::string(dtype_name(t)); }

struct cublas_owner {
  cublasHandle_t h = nullptr;
  cublas_owner() {
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cublasCreate failed");
  }
  ~cublas_owner() { cublasDestroy(h); }
  cublas_owner(const cublas_owner&) = delete;
  cublas_owner& operator=(const cublas_owner&) = delete;
};

}  // namespace

BOOST_AUTO_TEST_CASE(embedding_matches_cpu) {
  auto rng = make_rng("embedding");
  max_tracker track("embedding");
  loraplex::cuda_stream stream;
  const int vocab = 1000;
  for (const dtype t : all_types) {
    for (const int hidden : {64, 100, 4096}) {  // 100: not a multiple of the 16-byte vector (scalar path)
      host_tensor table(t, static_cast<std::size_t>(vocab) * hidden);
      table.fill_uniform(rng, -2.0f, 2.0f);
      const cuda_buffer d_table = table.upload();
      for (const int n : odd_counts) {
        std::vector<std::int32_t> ids(n);
        std::uniform_int_distribution<int> pick(0, vocab - 1);
        for (auto& id : ids) id = pick(rng);
        ids[0] = vocab - 1;
        const cuda_buffer d_ids = upload_vec(ids);
        cuda_buffer d_out = poisoned(static_cast<std::size_t>(n) * hidden * 4);
        k::embedding_args a;
        a.table = d_table.get();
        a.table_type = t;
        a.ids = d_ids.as<std::int32_t>();
        a.out = d_out.as<float>();
        a.num_tokens = n;
        a.hidden = hidden;
        a.vocab = vocab;
        kc::embedding(a, stream.get());
        stream.synchronize();
        std::vector<float> ref(static_cast<std::size_t>(n) * hidden);
        std::vector<float> got = d_out.to_vector<float>(ref.size());
        a.table = table.data();
        a.ids = ids.data();
        a.out = ref.data();
        k::cpu::embedding(a);
        // A copy after exact widening: bitwise equal.
        const error_report r = compare(ref.size(), [&](std::size_t i) { return got[i]; }, [&](std::size_t i) { return ref[i]; });
        check_error(r, 0.0, "embedding " + name_of(t) + " hidden " + std::to_string(hidden) + " n " + std::to_string(n), track, t);
      }
    }
  }
  // An id outside the vocabulary gives a row of NaN (a kernel cannot throw); the other rows are still right.
  host_tensor table(dtype::f32, static_cast<std::size_t>(vocab) * 64);
  table.fill_uniform(rng, -1.0f, 1.0f);
  const cuda_buffer d_table = table.upload();
  const std::vector<std::int32_t> ids = {5, vocab, -1, 7};
  const cuda_buffer d_ids = upload_vec(ids);
  cuda_buffer d_out = poisoned(4 * 64 * 4);
  LORAPLEX_CUDA_CALL(cudaMemset(d_out.get(), 0, 4 * 64 * 4));
  k::embedding_args a;
  a.table = d_table.get();
  a.ids = d_ids.as<std::int32_t>();
  a.out = d_out.as<float>();
  a.num_tokens = 4;
  a.hidden = 64;
  a.vocab = vocab;
  kc::embedding(a, stream.get());
  stream.synchronize();
  const std::vector<float> got = d_out.to_vector<float>(4 * 64);
  for (int i = 0; i < 64; ++i) {
    BOOST_TEST(got[i] == table.get(5 * 64 + i));
    BOOST_TEST(std::isnan(got[64 + i]));
    BOOST_TEST(std::isnan(got[128 + i]));
    BOOST_TEST(got[192 + i] == table.get(7 * 64 + i));
  }
}

BOOST_AUTO_TEST_CASE(add_rms_norm_matches_cpu) {
  auto rng = make_rng("add_rms_norm");
  max_tracker track("add_rms_norm");
  loraplex::cuda_stream stream;
  for (const dtype t : all_types) {
    for (const int dim : {64, 130, 4096, 5120}) {  // 130: not a multiple of 4 (scalar path)
      for (const int n : odd_counts) {
        for (const bool with_delta : {true, false}) {
          const std::size_t count = static_cast<std::size_t>(n) * dim;
          std::vector<float> residual(count), weight(dim);
          std::uniform_real_distribution<float> d(-3.0f, 3.0f);
          for (auto& v : residual) v = d(rng);
          for (auto& v : weight) v = d(rng) * 0.5f;
          host_tensor delta(t, count);
          delta.fill_uniform(rng, -1.0f, 1.0f);
          cuda_buffer d_res = upload_vec(residual);
          const cuda_buffer d_w = upload_vec(weight);
          const cuda_buffer d_delta = delta.upload();
          cuda_buffer d_out = poisoned(count * dtype_size(t));
          k::add_rms_norm_args a;
          a.residual = d_res.as<float>();
          a.delta = with_delta ? d_delta.get() : nullptr;
          a.weight = d_w.as<float>();
          a.out = d_out.get();
          a.act_type = t;
          a.num_tokens = n;
          a.dim = dim;
          a.eps = 1e-5f;
          kc::add_rms_norm(a, stream.get());
          stream.synchronize();
          host_tensor got(t, count), ref(t, count);
          got.download(d_out);
          const std::vector<float> got_res = d_res.to_vector<float>(count);
          a.residual = residual.data();
          a.delta = with_delta ? delta.data() : nullptr;
          a.weight = weight.data();
          a.out = ref.data();
          k::cpu::add_rms_norm(a);
          const std::string what = "add_rms_norm " + name_of(t) + " dim " + std::to_string(dim) + " n " + std::to_string(n) +
                                   (with_delta ? " +delta" : "");
          // The residual add is the same single f32 addition on both sides: bitwise equal.
          std::size_t res_diff = 0;
          for (std::size_t i = 0; i < count; ++i) res_diff += std::memcmp(&got_res[i], &residual[i], 4) != 0;
          BOOST_TEST(res_diff == 0u, what << ": residual differs in " << res_diff << " values");
          check_error(compare(got, ref), tolerance(t), what, track, t);
        }
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(silu_mul_matches_cpu) {
  auto rng = make_rng("silu_mul");
  max_tracker track("silu_mul");
  loraplex::cuda_stream stream;
  for (const dtype t : all_types) {
    for (const int inter : {1, 7, 64, 100, 1376}) {
      for (const int n : odd_counts) {
        const std::size_t count = static_cast<std::size_t>(n) * inter;
        host_tensor gu(t, 2 * count);
        gu.fill_uniform(rng, -6.0f, 6.0f);
        const cuda_buffer d_gu = gu.upload();
        cuda_buffer d_out = poisoned(count * dtype_size(t));
        k::silu_mul_args a;
        a.gate_up = d_gu.get();
        a.out = d_out.get();
        a.act_type = t;
        a.num_tokens = n;
        a.inter = inter;
        kc::silu_mul(a, stream.get());
        stream.synchronize();
        host_tensor got(t, count), ref(t, count);
        got.download(d_out);
        a.gate_up = gu.data();
        a.out = ref.data();
        k::cpu::silu_mul(a);
        check_error(compare(got, ref), tolerance(t),
                    "silu_mul " + name_of(t) + " inter " + std::to_string(inter) + " n " + std::to_string(n), track, t);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(gemm_matches_cpu) {
  auto rng = make_rng("gemm");
  max_tracker track("gemm");
  loraplex::cuda_stream stream;
  cublas_owner cublas;
  struct shape {
    int m, n, k;
  };
  const shape shapes[] = {{1, 64, 32}, {2, 100, 77}, {3, 33, 130}, {7, 257, 96}, {133, 320, 512}, {5, 17, 0}};
  struct types {
    dtype x, y;
  };
  const types combos[] = {{dtype::f32, dtype::f32},  {dtype::bf16, dtype::bf16}, {dtype::bf16, dtype::f32},
                          {dtype::f16, dtype::f16}, {dtype::f16, dtype::f32}};
  for (const auto [xt, yt] : combos) {
    for (const shape s : shapes) {
      for (const bool acc : {false, true}) {
        const int ldx = s.k + 3, ldw = s.k + 5, ldy = s.n + 2;  // padded rows: the leading dimensions matter
        host_tensor x(xt, static_cast<std::size_t>(s.m) * ldx), w(xt, static_cast<std::size_t>(s.n) * ldw);
        host_tensor y0(yt, static_cast<std::size_t>(s.m) * ldy);
        x.fill_uniform(rng, -1.0f, 1.0f);
        w.fill_uniform(rng, -1.0f, 1.0f);
        y0.fill_uniform(rng, -4.0f, 4.0f);
        const cuda_buffer d_x = x.upload(), d_w = w.upload();
        cuda_buffer d_y = acc ? y0.upload() : poisoned(y0.bytes());
        k::gemm_args a;
        a.x = d_x.get();
        a.ldx = ldx;
        a.x_type = xt;
        a.w = d_w.get();
        a.ldw = ldw;
        a.w_type = xt;
        a.y = d_y.get();
        a.ldy = ldy;
        a.y_type = yt;
        a.m = s.m;
        a.n = s.n;
        a.k = s.k;
        a.accumulate = acc;
        kc::gemm(a, cublas.h, stream.get());
        stream.synchronize();
        host_tensor got(yt, y0.size());
        got.download(d_y);
        // CPU: x and y in f32 (values already rounded to their types), W in its own type.
        std::vector<float> xf(x.size()), yf(y0.size());
        for (std::size_t i = 0; i < xf.size(); ++i) xf[i] = x.get(i);
        for (std::size_t i = 0; i < yf.size(); ++i) yf[i] = y0.get(i);
        k::gemm_args c = a;
        c.x = xf.data();
        c.x_type = dtype::f32;
        c.w = w.data();
        c.y = yf.data();
        c.y_type = dtype::f32;
        k::cpu::gemm(c);
        const auto idx = [&](std::size_t i) { return (i / s.n) * ldy + i % s.n; };
        const error_report r = compare(static_cast<std::size_t>(s.m) * s.n, [&](std::size_t i) { return got.get(idx(i)); },
                                       [&](std::size_t i) { return yf[idx(i)]; });
        check_error(r, tolerance(yt, tol_kind::reduction),
                    "gemm x " + name_of(xt) + " y " + name_of(yt) + " m " + std::to_string(s.m) + " n " +
                        std::to_string(s.n) + " k " + std::to_string(s.k) + (acc ? " +=" : ""),
                    track, yt);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(convert_matches_host) {
  auto rng = make_rng("convert");
  loraplex::cuda_stream stream;
  for (const dtype st : all_types) {
    for (const dtype dt : all_types) {
      for (const std::size_t n : {std::size_t{1}, std::size_t{7}, std::size_t{100003}}) {
        host_tensor src(st, n);
        std::normal_distribution<float> d(0.0f, 1.0f);
        for (std::size_t i = 0; i < n; ++i) {
          float v = d(rng) * std::ldexp(1.0f, static_cast<int>(i % 41) - 24);  // 2^-24 .. 2^16: subnormals, overflow
          src.set(i, v);
        }
        const cuda_buffer d_src = src.upload();
        cuda_buffer d_dst = poisoned(n * dtype_size(dt));
        kc::convert(d_src.get(), st, d_dst.get(), dt, n, stream.get());
        stream.synchronize();
        host_tensor got(dt, n), ref(dt, n);
        got.download(d_dst);
        loraplex::convert(src.data(), st, ref.data(), dt, n);
        std::size_t diff = 0;
        for (std::size_t i = 0; i < n; ++i) {
          const float g = got.get(i), r = ref.get(i);
          diff += !(g == r || (std::isnan(g) && std::isnan(r)));
        }
        BOOST_TEST(diff == 0u, "convert " << name_of(st) << " -> " << name_of(dt) << " n " << n << ": " << diff
                                          << " values differ from the host conversion");
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(ops_reject_bad_arguments) {
  loraplex::cuda_stream stream;
  const auto message_has = [](const std::string& needle) {
    return [needle](const std::invalid_argument& e) { return std::string(e.what()).find(needle) != std::string::npos; };
  };
  k::paged_attention_args pa;
  pa.num_seqs = 1;
  pa.num_tokens = 1;
  pa.num_heads = 4;
  pa.num_kv_heads = 2;
  pa.head_dim = 96;
  pa.ld_q = 4 * 96;
  pa.page_size = 16;
  pa.max_blocks_per_seq = 4;
  pa.max_query_len = 1;
  pa.max_context_len = 8;
  BOOST_CHECK_EXCEPTION(kc::paged_attention(pa, stream.get()), std::invalid_argument, message_has("Unsupported head_dim: 96"));
  pa.head_dim = 64;
  pa.ld_q = 4 * 64;
  pa.num_kv_heads = 3;
  BOOST_CHECK_EXCEPTION(kc::paged_attention(pa, stream.get()), std::invalid_argument, message_has("num_kv_heads = 3"));

  cublas_owner cublas;
  k::gemm_args g;
  g.m = g.n = g.k = 4;
  g.ldx = g.ldw = g.ldy = 4;
  g.x_type = dtype::bf16;
  g.w_type = dtype::f16;
  BOOST_CHECK_EXCEPTION(kc::gemm(g, cublas.h, stream.get()), std::invalid_argument, message_has("w_type f16"));
  g.w_type = dtype::bf16;
  g.y_type = dtype::f16;
  BOOST_CHECK_EXCEPTION(kc::gemm(g, cublas.h, stream.get()), std::invalid_argument, message_has("y_type f16"));

  k::add_rms_norm_args r;
  r.num_tokens = 2;
  r.dim = 0;
  BOOST_CHECK_EXCEPTION(kc::add_rms_norm(r, stream.get()), std::invalid_argument, message_has("dim = 0"));

  k::rope_kv_write_args rp;
  rp.num_tokens = 1;
  rp.num_heads = 2;
  rp.num_kv_heads = 1;
  rp.head_dim = 33;
  rp.page_size = 1;
  rp.ld_qkv = 4 * 33;
  BOOST_CHECK_EXCEPTION(kc::rope_kv_write(rp, stream.get()), std::invalid_argument, message_has("head_dim = 33"));

  k::sample_args s;
  s.num_rows = 1;
  s.vocab = 0;
  BOOST_CHECK_EXCEPTION(kc::sample(s, stream.get()), std::invalid_argument, message_has("vocab = 0"));
}
