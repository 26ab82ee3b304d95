// LoRA shrink: shrink_out[j][t][0:r] = x[t] · A_{a,j}ᵀ for every token t of a segment with adapter a and every
// slice j the adapter targets (rank r > 0). Heterogeneous ranks 1..256 in one launch, no padding.
//
// Two kernels, chosen per call (detail::lora::make_plan):
//  * decode (BGMV): one block per (segment, slice, chunk of R rank rows). The block streams its R rows of A
//    with 16-byte loads, all 128 threads spread over in_features, and dots them with TG tokens of the segment
//    at a time (a segment of sorted rows reads its adapter's A once per TG tokens, not once per row); warp
//    shuffles and a shared-memory pass reduce. Memory bound: A is read once per token group.
//  * prefill (SGMV): tensor cores (mma.sync m16n8k16, f32 accumulation). A block computes a tile of BM tokens
//    of one segment × 64 columns of the adapter's concatenated rank rows (slice 0 rows, then slice 1, then 2:
//    small ranks of three slices share one tile and x is read once for all of them), looping over
//    in_features through a 4-stage cp.async pipeline. When tiles are too few to fill the GPU, in_features is
//    split over a cluster of up to 8 blocks whose partial tiles are summed through distributed shared memory
//    (deterministic; no atomics, no zeroing pass).

#include <cooperative_groups.h>

#include <algorithm>
#include <type_traits>

#include "kernels/cuda/detail/lora_common.cuh"
#include "kernels/cuda/ops.hpp"

namespace loraplex::kernels::cuda {

namespace {

namespace cg = cooperative_groups;
using namespace detail;
using namespace detail::lora;

constexpr int shrink_threads = 128;

// --- decode ------------------------------------------------------------------------------------------------

/// TX: activation type, TW: weight type, TG: tokens per pass, R: rank rows per block, V: elements per access,
/// U: accesses per thread in flight per row.
template <typename TX, typename TW, int TG, int R, int V, int U>
__global__ void __launch_bounds__(shrink_threads, 3) bgmv_shrink_kernel(const lora_args a, int prefetch) {
  __shared__ float red[shrink_threads / 32][TG * R];
  const int seg = blockIdx.x, j = blockIdx.y, k0 = blockIdx.z * R;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  if (!prefetch) grid_dep_wait();

  const int t_begin = a.seg_begin[seg], t_end = a.seg_end[seg];
  const int e = a.seg_adapter[seg] * a.num_slices + j;
  const int r = t_end > t_begin ? a.ranks[e] : 0;
  if (k0 >= r) return;
  const TW* __restrict__ A = static_cast<const TW*>(a.a_ptrs[e]);
  const int lda = a.lda[e];
  const int nrows = min(R, r - k0);
  const int nv = a.in_features / V;

  vec_t<TW, V> w[U][R];
  auto load_w = [&](int v0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int v = v0 + u * shrink_threads;
#pragma unroll
      for (int q = 0; q < R; ++q) {
        if (v < nv && q < nrows)
          w[u][q] = load_vec<TW, V>(A + static_cast<std::size_t>(k0 + q) * lda + static_cast<std::size_t>(v) * V);
        else
          zero_vec(w[u][q]);
      }
    }
  };
  // Prefetch mode: while the kernel before is still running, the first pass of A goes into registers and the
  // rest of this block's rows into L2; only x and the outputs wait for it.
  bool preloaded = false;
  if (prefetch) {
    if constexpr (V * sizeof(TW) == 16) {
      if (tid < nrows && nv > shrink_threads * U)
        prefetch_l2(A + static_cast<std::size_t>(k0 + tid) * lda,
                    static_cast<std::uint32_t>(a.in_features * sizeof(TW)));
    }
    load_w(tid);
    preloaded = true;
    grid_dep_wait();
  }
  grid_dep_launch();

  const TX* __restrict__ x = static_cast<const TX*>(a.x);
  float* __restrict__ out = a.shrink_out;

  for (int tg = t_begin; tg < t_end; tg += TG) {
    const int ntok = min(TG, t_end - tg);
    float acc[TG][R];
#pragma unroll
    for (int t = 0; t < TG; ++t)
#pragma unroll
      for (int q = 0; q < R; ++q) acc[t][q] = 0.0f;

    for (int v0 = tid; v0 < nv; v0 += shrink_threads * U) {
      if (!preloaded) load_w(v0);
      preloaded = false;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int v = v0 + u * shrink_threads;
        if (v >= nv) break;
        float xf[TG][V];
#pragma unroll
        for (int t = 0; t < TG; ++t) {
          if (t < ntok) {
            const vec_t<TX, V> xv =
                load_vec<TX, V>(x + static_cast<std::size_t>(tg + t) * a.ldx + static_cast<std::size_t>(v) * V);
            to_f32_vec(xv, xf[t]);
          } else {
#pragma unroll
            for (int i = 0; i < V; ++i) xf[t][i] = 0.0f;
          }
        }
#pragma unroll
        for (int q = 0; q < R; ++q) {
          float wf[V];
          to_f32_vec(w[u][q], wf);
#pragma unroll
          for (int t = 0; t < TG; ++t)
#pragma unroll
            for (int i = 0; i < V; ++i) acc[t][q] = fmaf(xf[t][i], wf[i], acc[t][q]);
        }
      }
    }

#pragma unroll
    for (int t = 0; t < TG; ++t)
#pragma unroll
      for (int q = 0; q < R; ++q) {
        const float sum = warp_sum(acc[t][q]);
        if (lane == 0) red[warp][t * R + q] = sum;
      }
    __syncthreads();
    if (tid < TG * R) {
      const int t = tid / R, q = tid % R;
      if (t < ntok && q < nrows) {
        float sum = 0.0f;
#pragma unroll
        for (int w8 = 0; w8 < shrink_threads / 32; ++w8) sum += red[w8][tid];
        out[(static_cast<std::size_t>(j) * a.num_tokens + tg + t) * a.max_rank + k0 + q] = sum;
      }
    }
    __syncthreads();
  }
}

// --- prefill -----------------------------------------------------------------------------------------------

constexpr int sgmv_bn = 64;      // columns (concatenated rank rows) per block
constexpr int sgmv_bk = 64;      // in_features per pipeline stage
constexpr int sgmv_stages = 4;
constexpr int sgmv_lds = sgmv_bk + 8;  // smem row pitch in elements: 144 bytes, ldmatrix conflict-free

template <int BM>
constexpr int sgmv_shrink_smem() {
  return sgmv_stages * (BM + sgmv_bn) * sgmv_lds * 2;
}

/// T: bf16 or f16 (activations and weights). BM = 16·WM tokens; 4 warps as WM (rows) × 4/WM (columns).
template <typename T, int WM>
__global__ void __launch_bounds__(shrink_threads) sgmv_shrink_kernel(const lora_args a) {
  constexpr int BM = 16 * WM, BN = sgmv_bn, BK = sgmv_bk, ST = sgmv_stages, LDS = sgmv_lds;
  constexpr int WN = 4 / WM, WCOLS = BN / WN, NB = WCOLS / 8;
  constexpr int XCH = BM * (BK / 8) / shrink_threads;  // 16-byte chunks of the x tile per thread
  constexpr int ACH = BN * (BK / 8) / shrink_threads;  // of the A tile
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* xs = reinterpret_cast<T*>(smem_raw);  // [ST][BM][LDS]
  T* as = xs + ST * BM * LDS;              // [ST][BN][LDS]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp % WM, wn = warp / WM;
  grid_dep_wait();
  grid_dep_launch();

  int seg = 0, t0 = 0, mrows = 0;
  if (!find_tile<BM>(a.seg_begin, a.seg_end, a.num_segments, blockIdx.y, seg, t0, mrows)) return;
  const int ns = a.num_slices;
  const int ad = a.seg_adapter[seg];
  const int rk0 = a.ranks[ad * ns];
  const int rk1 = ns > 1 ? a.ranks[ad * ns + 1] : 0;
  const int rk2 = ns > 2 ? a.ranks[ad * ns + 2] : 0;
  const int total = rk0 + rk1 + rk2;
  const int cbeg = blockIdx.x * BN;
  if (cbeg >= total) return;  // the whole cluster (same blockIdx.x, .y) returns together
  const int ncols = min(BN, total - cbeg);

  // The rows this thread copies: x rows tid/8 + 16·i, A rows (concatenated rank rows) likewise; columns
  // (tid % 8)·8 of each k-tile.
  const int cc = (tid % 8) * 8;
  const T* xrow[XCH];
  const T* arow[ACH];
  const T* xbase = static_cast<const T*>(a.x);
#pragma unroll
  for (int i = 0; i < XCH; ++i) {
    const int row = tid / 8 + 16 * i;
    xrow[i] = row < mrows ? xbase + static_cast<std::size_t>(t0 + row) * a.ldx : nullptr;
  }
#pragma unroll
  for (int i = 0; i < ACH; ++i) {
    const int row = tid / 8 + 16 * i;
    const int v = cbeg + row;
    arow[i] = nullptr;
    if (row < ncols) {
      const int j = v < rk0 ? 0 : (v < rk0 + rk1 ? 1 : 2);
      const int k = v - (j == 0 ? 0 : (j == 1 ? rk0 : rk0 + rk1));
      const int e = ad * ns + j;
      arow[i] = static_cast<const T*>(a.a_ptrs[e]) + static_cast<std::size_t>(k) * a.lda[e];
    }
  }

  const int KT = (a.in_features + BK - 1) / BK;
  const int splits = gridDim.z;
  const int per = (KT + splits - 1) / splits;
  const int kt0 = min(KT, static_cast<int>(blockIdx.z) * per);
  const int nkt = min(KT, kt0 + per) - kt0;

  auto load_tile = [&](int stage, int kt) {
    const int gk = kt * BK + cc;
    const bool kin = gk < a.in_features;
#pragma unroll
    for (int i = 0; i < XCH; ++i) {
      const int row = tid / 8 + 16 * i;
      const bool ok = kin && xrow[i] != nullptr;
      cp_async16(xs + (stage * BM + row) * LDS + cc, ok ? static_cast<const void*>(xrow[i] + gk) : a.x, ok ? 16 : 0);
    }
#pragma unroll
    for (int i = 0; i < ACH; ++i) {
      const int row = tid / 8 + 16 * i;
      const bool ok = kin && arow[i] != nullptr;
      cp_async16(as + (stage * BN + row) * LDS + cc, ok ? static_cast<const void*>(arow[i] + gk) : a.x, ok ? 16 : 0);
    }
  };

  float acc[NB][4];
#pragma unroll
  for (int n = 0; n < NB; ++n)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[n][c] = 0.0f;

#pragma unroll
  for (int s = 0; s < ST - 1; ++s) {
    if (s < nkt) load_tile(s, kt0 + s);
    cp_async_commit();
  }
  const bool rows_active = wm * 16 < mrows;
  for (int i = 0; i < nkt; ++i) {
    cp_async_wait<ST - 2>();
    __syncthreads();
    const int nxt = i + ST - 1;
    if (nxt < nkt) load_tile(nxt % ST, kt0 + nxt);
    cp_async_commit();
    const int st = i % ST;
    if (rows_active) {
#pragma unroll
      for (int ks = 0; ks < BK / 16; ++ks) {
        std::uint32_t af[4];
        ldmatrix_x4(af, xs + (st * BM + wm * 16 + (lane & 15)) * LDS + ks * 16 + (lane >> 4) * 8);
#pragma unroll
        for (int p = 0; p < NB / 2; ++p) {
          const int nbase = wn * WCOLS + p * 16;
          if (nbase < ncols) {
            std::uint32_t bf[4];
            ldmatrix_x4(bf, as + (st * BN + nbase + (lane >> 4) * 8 + (lane & 7)) * LDS + ks * 16 +
                                ((lane >> 3) & 1) * 8);
            mma16816<T>(acc[2 * p], af, bf[0], bf[1]);
            if (nbase + 8 < ncols) mma16816<T>(acc[2 * p + 1], af, bf[2], bf[3]);
          }
        }
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();

  if (splits > 1) {
    // Sum the partial tiles of the cluster's blocks (one per slice of in_features) into block rank 0.
    cg::cluster_group cluster = cg::this_cluster();
    float* part = reinterpret_cast<float*>(smem_raw);  // [NB·4][threads], the pipeline buffers are free now
    const unsigned rank = cluster.block_rank();
    if (rank != 0) {
#pragma unroll
      for (int n = 0; n < NB; ++n)
#pragma unroll
        for (int c = 0; c < 4; ++c) part[(n * 4 + c) * shrink_threads + tid] = acc[n][c];
    }
    cluster.sync();
    if (rank == 0) {
      for (unsigned rr = 1; rr < cluster.num_blocks(); ++rr) {
        const float* remote = cluster.map_shared_rank(part, rr);
#pragma unroll
        for (int n = 0; n < NB; ++n)
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[n][c] += remote[(n * 4 + c) * shrink_threads + tid];
      }
    }
    cluster.sync();
    if (rank != 0) return;
  }

  // acc[n]: rows g and g+8, columns 2q and 2q+1 of the warp's n-th 8-column block.
  const int g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int n = 0; n < NB; ++n)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int row = wm * 16 + g + (c >= 2 ? 8 : 0);
      const int col = wn * WCOLS + n * 8 + 2 * q + (c & 1);
      if (row < mrows && col < ncols) {
        const int v = cbeg + col;
        const int j = v < rk0 ? 0 : (v < rk0 + rk1 ? 1 : 2);
        const int k = v - (j == 0 ? 0 : (j == 1 ? rk0 : rk0 + rk1));
        a.shrink_out[(static_cast<std::size_t>(j) * a.num_tokens + t0 + row) * a.max_rank + k] = acc[n][c];
      }
    }
}

// --- host --------------------------------------------------------------------------------------------------

constexpr const char* op_name = "lora_shrink";

template <typename TX, typename TW, int TG, int R, int V>
void launch_bgmv(const lora_args& a, cudaStream_t stream) {
  // 16-byte loads in flight per thread: U·R (one pass over in_features = 4096 for bf16 with U = 4)
  constexpr int U = TG == 1 ? 4 : 2;
  const int prefetch = lora_tuning::get_pdl() == lora_tuning::pdl::prefetch ? 1 : 0;
  const dim3 grid(static_cast<unsigned>(a.num_segments), static_cast<unsigned>(a.num_slices),
                  static_cast<unsigned>((a.max_rank + R - 1) / R));
  launch(op_name, bgmv_shrink_kernel<TX, TW, TG, R, V, U>, grid, dim3(shrink_threads), 0, stream, 1, a, prefetch);
}

template <typename TX, typename TW, int V>
void dispatch_bgmv(const lora_args& a, const plan& p, cudaStream_t stream) {
  if constexpr (V == 1) {
    launch_bgmv<TX, TW, 1, 4, 1>(a, stream);  // unaligned shapes: correctness, not speed
  } else {
    // Few blocks: one rank row per block so more multiprocessors pull bytes.
    const long blocks4 = static_cast<long>(a.num_segments) * a.num_slices * ((a.max_rank + 3) / 4);
    const bool narrow = blocks4 < 2L * sm_count();
    switch (p.tokens_per_group) {
      case 1: return narrow ? launch_bgmv<TX, TW, 1, 1, V>(a, stream) : launch_bgmv<TX, TW, 1, 4, V>(a, stream);
      case 2: return narrow ? launch_bgmv<TX, TW, 2, 1, V>(a, stream) : launch_bgmv<TX, TW, 2, 4, V>(a, stream);
      default: return narrow ? launch_bgmv<TX, TW, 4, 1, V>(a, stream) : launch_bgmv<TX, TW, 4, 4, V>(a, stream);
    }
  }
}

template <typename T, int WM>
void launch_sgmv(const lora_args& a, cudaStream_t stream) {
  constexpr int BM = 16 * WM;
  constexpr int smem = sgmv_shrink_smem<BM>();
  constexpr auto kernel = sgmv_shrink_kernel<T, WM>;
  allow_smem<kernel>(smem);
  const int tiles = tile_bound(a, BM);
  const int chunks = (a.num_slices * a.max_rank + sgmv_bn - 1) / sgmv_bn;
  // Tiles that really hold tokens (about): split in_features over a cluster when they cannot fill the GPU.
  const long busy = static_cast<long>((a.num_tokens + BM - 1) / BM) * chunks;
  const int kt = (a.in_features + sgmv_bk - 1) / sgmv_bk;
  int splits = static_cast<int>((2L * sm_count() + busy - 1) / busy);
  splits = std::max(1, std::min({splits, 8, kt / 2}));
  if (tiles > 65535) unsupported(op_name, "token tiles " + std::to_string(tiles) + " (at most 65535)");
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(tiles), static_cast<unsigned>(splits));
  launch(op_name, kernel, grid, dim3(shrink_threads), smem, stream, splits, a);
}

template <typename TX, typename TW>
void run(const lora_args& a, cudaStream_t stream) {
  const int v = weight_vec(a.weight_type);
  const bool vec_ok = a.in_features % v == 0 && a.ldx % v == 0 && aligned16(a.x);
  constexpr bool tc_type = std::is_same_v<TX, TW> && !std::is_same_v<TX, float>;
  const plan p = make_plan(a, tc_type && vec_ok);
  if constexpr (tc_type) {
    if (p.prefill) {
      switch (p.bm) {
        case 16: return launch_sgmv<TX, 1>(a, stream);
        case 32: return launch_sgmv<TX, 2>(a, stream);
        default: return launch_sgmv<TX, 4>(a, stream);
      }
    }
  }
  constexpr int V = 16 / sizeof(TW);
  if (vec_ok)
    dispatch_bgmv<TX, TW, V>(a, p, stream);
  else
    dispatch_bgmv<TX, TW, 1>(a, p, stream);
}

}  // namespace

void lora_shrink(const lora_args& a, stream_t stream) {
  validate(a, op_name);
  if (a.num_tokens == 0 || a.num_segments == 0 || a.max_rank == 0) return;
  const dtype at = a.act_type, wt = a.weight_type;
  if (at == dtype::bf16 && wt == dtype::bf16) run<__nv_bfloat16, __nv_bfloat16>(a, stream);
  else if (at == dtype::f16 && wt == dtype::f16) run<__half, __half>(a, stream);
  else if (at == dtype::f32 && wt == dtype::f32) run<float, float>(a, stream);
  else if (at == dtype::f32 && wt == dtype::bf16) run<float, __nv_bfloat16>(a, stream);
  else if (at == dtype::f32 && wt == dtype::f16) run<float, __half>(a, stream);
  else unsupported(op_name, "act_type/weight_type");
  LORAPLEX_CHECK_LAUNCH(op_name);
}

}  // namespace loraplex::kernels::cuda
