// CUDA RoPE + paged KV write and paged attention (decode and prefill paths) against the CPU reference, plus
// a speed report (logged, never asserted: speed belongs to loraplex-bench).
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
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

std::string name_of(dtype t) { return std::string(dtype_name(t)); }

struct type_pair {
  dtype act, kv;
};
constexpr type_pair same_types[] = {{dtype::bf16, dtype::bf16}, {dtype::f16, dtype::f16}, {dtype::f32, dtype::f32}};
constexpr type_pair mixed_types[] = {{dtype::bf16, dtype::f32}, {dtype::f32, dtype::f16}};

// ---- RoPE + KV write ------------------------------------------------------------------------------------

struct rope_case {
  int num_heads, num_kv_heads, head_dim, page_size;
};

void run_rope_case(const rope_case& rc, int n, type_pair tp, std::mt19937_64& rng, loraplex::cuda_stream& stream,
                   max_tracker& track_q, max_tracker& track_kv) {
  const int D = rc.head_dim;
  const int ld = (rc.num_heads + 2 * rc.num_kv_heads) * D + 3;
  const int num_pages = (n + rc.page_size - 1) / rc.page_size + 2;
  const std::size_t kv_row = static_cast<std::size_t>(rc.num_kv_heads) * D;
  const std::size_t cache_elems = static_cast<std::size_t>(num_pages) * rc.page_size * kv_row;

  host_tensor qkv(tp.act, static_cast<std::size_t>(n) * ld);
  qkv.fill_uniform(rng, -2.0f, 2.0f);
  std::vector<std::int32_t> positions(n), slots(num_pages * rc.page_size);
  std::uniform_int_distribution<int> pos(0, 131072);
  for (auto& p : positions) p = pos(rng);
  positions[0] = 0;
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);  // distinct slots in random pages and offsets
  slots.resize(n);
  std::vector<float> inv_freq(D / 2);
  const float factor = std::uniform_real_distribution<float>(1.0f, 8.0f)(rng);  // a scaling folded in
  for (int i = 0; i < D / 2; ++i) inv_freq[i] = std::pow(500000.0f, -2.0f * i / D) / factor;
  const float attention_scaling = std::uniform_real_distribution<float>(0.8f, 1.3f)(rng);

  host_tensor k_ref(tp.kv, cache_elems), v_ref(tp.kv, cache_elems);
  k_ref.fill_nan();
  v_ref.fill_nan();
  const cuda_buffer d_qkv = qkv.upload();
  const cuda_buffer d_pos = upload_vec(positions), d_slots = upload_vec(slots), d_inv = upload_vec(inv_freq);
  cuda_buffer d_k = poisoned(k_ref.bytes()), d_v = poisoned(v_ref.bytes());

  k::rope_kv_write_args a;
  a.qkv = d_qkv.get();
  a.ld_qkv = ld;
  a.positions = d_pos.as<std::int32_t>();
  a.slots = d_slots.as<std::int32_t>();
  a.k_cache = d_k.get();
  a.v_cache = d_v.get();
  a.act_type = tp.act;
  a.kv_type = tp.kv;
  a.inv_freq = d_inv.as<float>();
  a.attention_scaling = attention_scaling;
  a.num_tokens = n;
  a.num_heads = rc.num_heads;
  a.num_kv_heads = rc.num_kv_heads;
  a.head_dim = D;
  a.page_size = rc.page_size;
  kc::rope_kv_write(a, stream.get());
  stream.synchronize();
  host_tensor got_qkv(tp.act, qkv.size()), got_k(tp.kv, cache_elems), got_v(tp.kv, cache_elems);
  got_qkv.download(d_qkv);
  got_k.download(d_k);
  got_v.download(d_v);

  host_tensor ref_qkv = qkv;
  a.qkv = ref_qkv.data();
  a.positions = positions.data();
  a.slots = slots.data();
  a.k_cache = k_ref.data();
  a.v_cache = v_ref.data();
  a.inv_freq = inv_freq.data();
  k::cpu::rope_kv_write(a);

  const std::string what = "rope " + name_of(tp.act) + "/" + name_of(tp.kv) + " heads " + std::to_string(rc.num_heads) +
                           "/" + std::to_string(rc.num_kv_heads) + " d " + std::to_string(D) + " page " +
                           std::to_string(rc.page_size) + " n " + std::to_string(n);
  check_error(compare(got_qkv, ref_qkv), tolerance(tp.act), what + " qkv", track_q, tp.act);
  // Unwritten slots stay NaN on both sides; compare() flags any slot written on one side only.
  const dtype kv_bound = coarser(tp.act, tp.kv);
  check_error(compare(got_k, k_ref), tolerance(kv_bound), what + " k_cache", track_kv, kv_bound);
  check_error(compare(got_v, v_ref), tolerance(kv_bound), what + " v_cache", track_kv, kv_bound);
}

// ---- paged attention ------------------------------------------------------------------------------------

struct attn_case {
  int num_heads, num_kv_heads, head_dim, page_size;
  std::vector<int> q_lens, ctx_lens;
};

/// Builds a random paged cache (shuffled, non-contiguous pages; slots outside every context hold NaN, so a
/// read past a context shows), runs both backends and compares.
void run_attention_case(const attn_case& ac, type_pair tp, std::mt19937_64& rng, loraplex::cuda_stream& stream,
                        max_tracker& track, const std::string& label) {
  const int S = static_cast<int>(ac.q_lens.size());
  const int D = ac.head_dim;
  std::vector<std::int32_t> query_start(S + 1, 0), ctx(ac.ctx_lens.begin(), ac.ctx_lens.end());
  int max_q = 0, max_ctx = 0, max_blocks = 1, total_blocks = 0;
  for (int s = 0; s < S; ++s) {
    query_start[s + 1] = query_start[s] + ac.q_lens[s];
    max_q = std::max(max_q, ac.q_lens[s]);
    max_ctx = std::max(max_ctx, ctx[s]);
    const int blocks = (ctx[s] + ac.page_size - 1) / ac.page_size;
    max_blocks = std::max(max_blocks, blocks + 1);
    total_blocks += blocks;
  }
  const int T = query_start[S];
  const int num_pages = total_blocks + 3;
  std::vector<std::int32_t> pages(num_pages);
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), rng);
  std::vector<std::int32_t> tables(static_cast<std::size_t>(S) * max_blocks);
  std::uniform_int_distribution<int> any_page(0, num_pages - 1);
  for (auto& t : tables) t = any_page(rng);  // unused entries: valid but foreign pages
  int next = 0;
  for (int s = 0; s < S; ++s)
    for (int b = 0; b < (ctx[s] + ac.page_size - 1) / ac.page_size; ++b) tables[static_cast<std::size_t>(s) * max_blocks + b] = pages[next++];

  const std::size_t kv_row = static_cast<std::size_t>(ac.num_kv_heads) * D;
  const std::size_t cache_elems = static_cast<std::size_t>(num_pages) * ac.page_size * kv_row;
  host_tensor kc_h(tp.kv, cache_elems), vc_h(tp.kv, cache_elems);
  kc_h.fill_nan();
  vc_h.fill_nan();
  std::uniform_real_distribution<float> val(-1.0f, 1.0f);
  for (int s = 0; s < S; ++s)
    for (int p = 0; p < ctx[s]; ++p) {
      const std::size_t slot =
          static_cast<std::size_t>(tables[static_cast<std::size_t>(s) * max_blocks + p / ac.page_size]) * ac.page_size + p % ac.page_size;
      for (std::size_t e = 0; e < kv_row; ++e) {
        kc_h.set(slot * kv_row + e, val(rng));
        vc_h.set(slot * kv_row + e, val(rng));
      }
    }
  const int ld_q = ac.num_heads * D + 5;
  host_tensor q(tp.act, static_cast<std::size_t>(T) * ld_q);
  q.fill_nan();  // the padding columns stay NaN
  const float q_range = std::uniform_real_distribution<float>(0.5f, 3.0f)(rng);  // flat to peaked softmax
  for (int t = 0; t < T; ++t)
    for (int c = 0; c < ac.num_heads * D; ++c) q.set(static_cast<std::size_t>(t) * ld_q + c, val(rng) * q_range);

  const std::size_t out_elems = static_cast<std::size_t>(T) * ac.num_heads * D;
  const cuda_buffer d_q = q.upload(), d_k = kc_h.upload(), d_v = vc_h.upload();
  const cuda_buffer d_tables = upload_vec(tables), d_qs = upload_vec(query_start), d_ctx = upload_vec(ctx);
  cuda_buffer d_out = poisoned(out_elems * dtype_size(tp.act));

  k::paged_attention_args a;
  a.q = d_q.get();
  a.ld_q = ld_q;
  a.k_cache = d_k.get();
  a.v_cache = d_v.get();
  a.block_tables = d_tables.as<std::int32_t>();
  a.query_start = d_qs.as<std::int32_t>();
  a.context_lens = d_ctx.as<std::int32_t>();
  a.out = d_out.get();
  a.act_type = tp.act;
  a.kv_type = tp.kv;
  a.num_seqs = S;
  a.num_tokens = T;
  a.num_heads = ac.num_heads;
  a.num_kv_heads = ac.num_kv_heads;
  a.head_dim = D;
  a.page_size = ac.page_size;
  a.max_blocks_per_seq = max_blocks;
  a.max_query_len = max_q;
  a.max_context_len = max_ctx;
  a.scale = 1.0f / std::sqrt(static_cast<float>(D));
  cuda_buffer d_ws = poisoned(kc::paged_attention_workspace_bytes(a));
  a.workspace = d_ws.get();
  kc::paged_attention(a, stream.get());
  stream.synchronize();
  host_tensor got(tp.act, out_elems), ref(tp.act, out_elems);
  got.download(d_out);

  a.q = q.data();
  a.k_cache = kc_h.data();
  a.v_cache = vc_h.data();
  a.block_tables = tables.data();
  a.query_start = query_start.data();
  a.context_lens = ctx.data();
  a.out = ref.data();
  a.workspace = nullptr;
  k::cpu::paged_attention(a);

  const std::string what = label + " " + name_of(tp.act) + "/" + name_of(tp.kv) + " heads " + std::to_string(ac.num_heads) +
                           "/" + std::to_string(ac.num_kv_heads) + " d " + std::to_string(D) + " page " +
                           std::to_string(ac.page_size) + " seqs " + std::to_string(S) + " max_q " + std::to_string(max_q) +
                           " max_ctx " + std::to_string(max_ctx);
  check_error(compare(got, ref), tolerance(tp.act, tol_kind::reduction), what, track, tp.act);
}

}  // namespace

BOOST_AUTO_TEST_CASE(rope_kv_write_matches_cpu) {
  auto rng = make_rng("rope");
  max_tracker track_q("rope qkv"), track_kv("rope kv cache");
  loraplex::cuda_stream stream;
  const rope_case cases[] = {{4, 4, 32, 1}, {8, 2, 64, 3}, {28, 4, 128, 16}, {32, 8, 128, 16}, {12, 1, 64, 3}};
  for (const auto& rc : cases)
    for (const int n : {1, 2, 3, 7, 133})
      for (const auto tp : same_types) run_rope_case(rc, n, tp, rng, stream, track_q, track_kv);
  for (const auto tp : mixed_types) run_rope_case({8, 2, 64, 3}, 7, tp, rng, stream, track_q, track_kv);
}

BOOST_AUTO_TEST_CASE(paged_attention_decode_matches_cpu) {
  auto rng = make_rng("attention decode");
  max_tracker track("attention decode");
  loraplex::cuda_stream stream;
  std::vector<int> many_ctx(70);
  std::uniform_int_distribution<int> c512(1, 512);
  for (auto& c : many_ctx) c = c512(rng);
  std::vector<int> gqa_ctx(40);  // the tensor-core kernel with one partition per sequence (enough CTAs)
  std::uniform_int_distribution<int> c1500(1, 1500);
  for (auto& c : gqa_ctx) c = c1500(rng);
  std::vector<int> long_ctx = {3000, 2049, 2048, 1, 17, 16, 15, 33, 64, 65, 1024, 1500};  // group 8, page 1
  for (int i = 0; i < 12; ++i) long_ctx.push_back(c1500(rng));
  const std::vector<attn_case> cases = {
      {4, 4, 32, 1, {1, 1, 1, 1, 1}, {1, 2, 3, 7, 133}},
      {8, 4, 64, 3, {1, 1, 1, 1}, {133, 1, 2, 7}},
      {16, 4, 128, 16, {1, 1, 1, 1}, {2048, 1999, 517, 1}},  // several partitions per sequence
      {32, 4, 128, 16, {1, 1, 1, 1, 1, 1, 1}, {1500, 64, 65, 2000, 3, 800, 1024}},
      {28, 4, 64, 16, {1, 1}, {300, 1200}},  // group 7: a masked head tile
      {12, 1, 32, 3, {1, 1}, {100, 2000}},    // group 12: two head chunks per KV head
      {16, 8, 64, 16, std::vector<int>(70, 1), many_ctx},  // enough CTAs for one partition: the direct path
      {8, 8, 128, 1, {1}, {1}},
      {32, 8, 128, 16, std::vector<int>(40, 1), gqa_ctx},  // group 4, many CTAs: the direct path
      {64, 8, 64, 1, std::vector<int>(24, 1), long_ctx},    // group 8, contexts past the longest partition
      {16, 1, 32, 16, {1}, {4000}},                          // group 16: two head chunks of 8, many partitions
  };
  for (const auto& ac : cases)
    for (const auto tp : same_types) run_attention_case(ac, tp, rng, stream, track, "decode");
  for (const auto tp : mixed_types) run_attention_case(cases[2], tp, rng, stream, track, "decode");
}

BOOST_AUTO_TEST_CASE(paged_attention_prefill_matches_cpu) {
  auto rng = make_rng("attention prefill");
  max_tracker track("attention prefill");
  loraplex::cuda_stream stream;
  const std::vector<attn_case> cases = {
      {4, 4, 32, 1, {7}, {7}},
      {8, 4, 64, 3, {133}, {173}},                                // a chunk after earlier context
      {16, 4, 128, 16, {1, 5, 1, 33, 2}, {50, 5, 300, 100, 2}},  // prefill mixed with decode tokens
      {32, 4, 128, 16, {16, 1, 64}, {1016, 700, 128}},
      {2, 2, 64, 1, {3, 2}, {3, 9}},
      {28, 4, 64, 3, {2, 7, 1}, {2, 20, 45}},  // group 7
      {12, 1, 32, 16, {70}, {90}},             // group 12
      {8, 2, 128, 3, {3, 1, 133, 2}, {3, 2000, 140, 2}},
      // The tensor-core path (16-bit caches, head_dim 64/128): tiles of 128 (token, head) rows × 64 keys.
      {32, 8, 128, 16, {300}, {500}},                  // a long chunk after 200 tokens of context, group 4
      {8, 8, 64, 1, {77, 1, 130}, {77, 40, 300}},      // page 1, q_len not a multiple of the tile, a decode row
      {12, 4, 128, 3, {200, 1, 45, 129}, {250, 600, 45, 129}},  // group 3: a tile splits a token's heads
      {16, 2, 64, 16, {600, 2}, {700, 1000}},          // group 8, many row tiles
  };
  for (const auto& ac : cases)
    for (const auto tp : same_types) run_attention_case(ac, tp, rng, stream, track, "prefill");
  for (const auto tp : mixed_types) run_attention_case(cases[2], tp, rng, stream, track, "prefill");
}

// Speed report: decode bandwidth and prefill throughput on bf16, logged only. The cache holds a replicated
// random pattern (values do not matter for timing).
BOOST_AUTO_TEST_CASE(paged_attention_speed_report) {
  auto rng = make_rng("attention speed");
  loraplex::cuda_stream stream;
  cudaDeviceProp prop{};
  LORAPLEX_CUDA_CALL(cudaGetDeviceProperties(&prop, 0));
  BOOST_TEST_MESSAGE("device: " << prop.name << ", " << prop.multiProcessorCount << " SMs");

  const auto fill_random = [&](cuda_buffer& b) {
    std::vector<std::uint16_t> pattern(4u << 20);
    std::uniform_int_distribution<int> v(0, 0x3f7f);  // bf16 bit patterns of small positive/negative numbers
    for (auto& p : pattern) p = static_cast<std::uint16_t>(v(rng) | (v(rng) & 1 ? 0x8000 : 0)) & 0xbf7f;
    const std::size_t chunk = pattern.size() * 2;
    for (std::size_t off = 0; off < b.bytes(); off += chunk)
      LORAPLEX_CUDA_CALL(cudaMemcpy(static_cast<char*>(b.get()) + off, pattern.data(), std::min(chunk, b.bytes() - off),
                                    cudaMemcpyHostToDevice));
  };

  // Device-memory copy as the ceiling of this run (bytes read + written).
  {
    cuda_buffer src(1ull << 30), dst(1ull << 30);
    loraplex::cuda_event e0, e1;
    LORAPLEX_CUDA_CALL(cudaMemcpyAsync(dst.get(), src.get(), src.bytes(), cudaMemcpyDeviceToDevice, stream.get()));
    e0.record(stream.get());
    for (int i = 0; i < 5; ++i)
      LORAPLEX_CUDA_CALL(cudaMemcpyAsync(dst.get(), src.get(), src.bytes(), cudaMemcpyDeviceToDevice, stream.get()));
    e1.record(stream.get());
    e1.synchronize();
    const double ms = e1.elapsed_ms_since(e0) / 5;
    BOOST_TEST_MESSAGE("device copy: " << 2.0 * src.bytes() / ms / 1e6 << " GB/s (read + write)");
  }

  struct decode_cfg {
    int seqs, ctx, heads, kv_heads;
  };
  for (const decode_cfg c : {decode_cfg{64, 2048, 32, 8}, decode_cfg{16, 8192, 32, 8}, decode_cfg{1, 4096, 32, 8},
                             decode_cfg{256, 1024, 32, 8}, decode_cfg{32, 1024, 64, 8}, decode_cfg{64, 2048, 64, 8}}) {
    const int D = 128, page = 16;
    const int blocks = c.ctx / page;
    const int num_pages = c.seqs * blocks;
    std::vector<std::int32_t> pages(num_pages);
    std::iota(pages.begin(), pages.end(), 0);
    std::shuffle(pages.begin(), pages.end(), rng);
    std::vector<std::int32_t> qs(c.seqs + 1), ctx(c.seqs, c.ctx);
    std::iota(qs.begin(), qs.end(), 0);
    const std::size_t cache_bytes = static_cast<std::size_t>(num_pages) * page * c.kv_heads * D * 2;
    cuda_buffer d_k(cache_bytes), d_v(cache_bytes), d_q(static_cast<std::size_t>(c.seqs) * c.heads * D * 2),
        d_out(static_cast<std::size_t>(c.seqs) * c.heads * D * 2);
    fill_random(d_k);
    fill_random(d_v);
    fill_random(d_q);
    const cuda_buffer d_tables = upload_vec(pages), d_qs = upload_vec(qs), d_ctx = upload_vec(ctx);
    k::paged_attention_args a;
    a.q = d_q.get();
    a.ld_q = c.heads * D;
    a.k_cache = d_k.get();
    a.v_cache = d_v.get();
    a.block_tables = d_tables.as<std::int32_t>();
    a.query_start = d_qs.as<std::int32_t>();
    a.context_lens = d_ctx.as<std::int32_t>();
    a.out = d_out.get();
    a.act_type = dtype::bf16;
    a.kv_type = dtype::bf16;
    a.num_seqs = c.seqs;
    a.num_tokens = c.seqs;
    a.num_heads = c.heads;
    a.num_kv_heads = c.kv_heads;
    a.head_dim = D;
    a.page_size = page;
    a.max_blocks_per_seq = blocks;
    a.max_query_len = 1;
    a.max_context_len = c.ctx;
    a.scale = 1.0f / std::sqrt(128.0f);
    cuda_buffer d_ws(kc::paged_attention_workspace_bytes(a));
    a.workspace = d_ws.get();
    kc::paged_attention(a, stream.get());
    loraplex::cuda_event e0, e1;
    e0.record(stream.get());
    const int iters = 10;
    for (int i = 0; i < iters; ++i) kc::paged_attention(a, stream.get());
    e1.record(stream.get());
    e1.synchronize();
    const double ms = e1.elapsed_ms_since(e0) / iters;
    const double bytes = 2.0 * static_cast<double>(c.seqs) * c.ctx * c.kv_heads * D * 2;
    BOOST_TEST_MESSAGE("decode bf16 seqs " << c.seqs << " ctx " << c.ctx << " heads " << c.heads << "/" << c.kv_heads
                                           << " d 128: " << ms * 1e3 << " us, " << bytes / ms / 1e6 << " GB/s of K+V");
  }

  {  // prefill: one 2048-token chunk (causal), 32/8 heads, d 128
    const int T = 2048, heads = 32, kv_heads = 8, D = 128, page = 16;
    const int num_pages = T / page;
    std::vector<std::int32_t> pages(num_pages);
    std::iota(pages.begin(), pages.end(), 0);
    std::shuffle(pages.begin(), pages.end(), rng);
    const std::vector<std::int32_t> qs = {0, T}, ctx = {T};
    const std::size_t cache_bytes = static_cast<std::size_t>(T) * kv_heads * D * 2;
    cuda_buffer d_k(cache_bytes), d_v(cache_bytes), d_q(static_cast<std::size_t>(T) * heads * D * 2),
        d_out(static_cast<std::size_t>(T) * heads * D * 2);
    fill_random(d_k);
    fill_random(d_v);
    fill_random(d_q);
    const cuda_buffer d_tables = upload_vec(pages), d_qs = upload_vec(qs), d_ctx = upload_vec(ctx);
    k::paged_attention_args a;
    a.q = d_q.get();
    a.ld_q = heads * D;
    a.k_cache = d_k.get();
    a.v_cache = d_v.get();
    a.block_tables = d_tables.as<std::int32_t>();
    a.query_start = d_qs.as<std::int32_t>();
    a.context_lens = d_ctx.as<std::int32_t>();
    a.out = d_out.get();
    a.act_type = dtype::bf16;
    a.kv_type = dtype::bf16;
    a.num_seqs = 1;
    a.num_tokens = T;
    a.num_heads = heads;
    a.num_kv_heads = kv_heads;
    a.head_dim = D;
    a.page_size = page;
    a.max_blocks_per_seq = num_pages;
    a.max_query_len = T;
    a.max_context_len = T;
    a.scale = 1.0f / std::sqrt(128.0f);
    kc::paged_attention(a, stream.get());
    loraplex::cuda_event e0, e1;
    e0.record(stream.get());
    const int iters = 3;
    for (int i = 0; i < iters; ++i) kc::paged_attention(a, stream.get());
    e1.record(stream.get());
    e1.synchronize();
    const double ms = e1.elapsed_ms_since(e0) / iters;
    const double flops = 4.0 * heads * D * (static_cast<double>(T) * (T + 1) / 2);
    BOOST_TEST_MESSAGE("prefill bf16 2048 tokens heads 32/8 d 128: " << ms << " ms, " << flops / ms / 1e9 << " TFLOP/s");
  }
}
