// LoRA shrink: shrink_out[j][t][0:r] = x[t] · A_{a,j}ᵀ for every token t of a segment with adapter a and every
// slice j the adapter targets (rank r > 0). Heterogeneous ranks 1..256 in one launch, no padding.
//
// Two kernels, chosen per call (detail::lora::make_plan):
//  * decode (BGMV): one block per (segment, slice, chunk of R rank rows). The block streams its R rows of A
//    with 16-byte loads, all 128 threads spread over in_features, and dots them with TG tokens of the segment
//    at a time (a segment of sorted rows reads its adapter's A once per TG tokens, not once per row); warp
//    shuffles and a shared-memory pass reduce. Memory bound: A is read once per token group. The segment, then
//    all its table entries at once (two levels of dependent loads before the weights). Lean (the default, see
//    lora_tuning::variant_bits): 8 loads in flight per thread and 5 blocks per multiprocessor, so that the next
//    launch's blocks fit beside these. With pdl::prefetch (lora_tuning::bulk) the block's rank rows of A come
//    instead into shared memory by bulk copies (copy engine, mbarrier), issued before the wait.
//  * prefill (SGMV): tensor cores (mma.sync m16n8k16, f32 accumulation). A block computes a tile of BM tokens
//    of one segment × 64 columns of the adapter's concatenated rank rows (slice 0 rows, then slice 1, then 2:
//    small ranks of three slices share one tile and x is read once for all of them), looping over
//    in_features through a 4-stage cp.async pipeline. When tiles are too few to fill the GPU, in_features is
//    split over a cluster of up to 8 blocks whose partial tiles are summed through distributed shared memory
//    (deterministic; no atomics, no zeroing pass). 8 warps per block for tiles of 32 and 64 tokens.

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
/// U: accesses per thread in flight per row, MINB: blocks per multiprocessor the register budget must allow.
/// flags: flag_early / flag_l2_only (pdl::prefetch), flag_xbt (prefetch the expand's Bt rows into L2).
template <typename TX, typename TW, int TG, int R, int V, int U, int MINB>
__global__ void __launch_bounds__(shrink_threads, MINB) bgmv_shrink_kernel(const lora_args a, int flags) {
  __shared__ float red[shrink_threads / 32][TG * R];
  const int seg = blockIdx.x, j = blockIdx.y, k0 = blockIdx.z * R;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const bool early = (flags & flag_early) != 0, l2_only = (flags & flag_l2_only) != 0;
  const bool xbt = (flags & flag_xbt) != 0;
  if (!early) grid_dep_wait();

  // Two levels of dependent loads before the weights: the segment, then every table entry at once (nothing
  // waits on the rank before the pointers are requested).
  const int t_begin = a.seg_begin[seg], t_end = a.seg_end[seg];
  const int e = a.seg_adapter[seg] * a.num_slices + j;
  int r = 0, lda = 0, ldb = 0;
  const TW* __restrict__ A = nullptr;
  const TW* bt = nullptr;
  if (t_end > t_begin) {
    r = a.ranks[e];
    A = static_cast<const TW*>(a.a_ptrs[e]);
    lda = a.lda[e];
    if (xbt) {
      bt = static_cast<const TW*>(a.bt_ptrs[e]);
      ldb = a.ldb[e];
    }
  }
  if (k0 >= r) return;
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
  // Prefetch mode, while the kernel before is still running: this block's rows of A into L2 (all of them, or
  // those past the first pass, which goes into registers); only x and the outputs wait for it.
  if (early && tid < nrows && (l2_only || nv > shrink_threads * U))
    prefetch_l2_if_aligned(A + static_cast<std::size_t>(k0 + tid) * lda,
                           static_cast<std::uint32_t>(a.in_features * sizeof(TW)));
  if (!(early && l2_only)) load_w(tid);
  // The expand of this call reads the same adapters' Bt: start those bytes now, behind A's.
  if (xbt && tid < nrows) {
    const int width = j == 0 ? a.slice_width[0] : (j == 1 ? a.slice_width[1] : a.slice_width[2]);
    prefetch_l2_if_aligned(bt + static_cast<std::size_t>(k0 + tid) * ldb,
                           static_cast<std::uint32_t>(width * sizeof(TW)));
  }
  if (early) {
    grid_dep_wait();
    if (l2_only) load_w(tid);
  }
  grid_dep_launch();
  bool preloaded = true;

  const TX* __restrict__ x = static_cast<const TX*>(a.x);
  float* __restrict__ out = a.shrink_out;

  for (int tg = t_begin; tg < t_end; tg += TG) {
    const int ntok = min(TG, t_end - tg);
    float acc[TG][R];
#pragma unroll
    for (int t = 0; t < TG; ++t)
#pragma unroll
      for (int q = 0; q < R; ++q) acc[t][q] = 0.0f;

#pragma unroll 1
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

/// Bulk variant (lora_tuning::bulk), V = 16 / sizeof(TW): thread 0 copies the block's R rank rows of A into
/// shared memory with one bulk copy each (before the wait in prefetch mode), every thread loads its x vectors
/// meanwhile, then dots them with the rows from shared memory, one token of the segment at a time (A is read
/// from memory once per segment). Needs R · in_features · sizeof(TW) <= bulk_smem_limit (dynamic shared memory).
template <typename TX, typename TW, int R>
__global__ void __launch_bounds__(shrink_threads) bgmv_shrink_bulk_kernel(const lora_args a, int flags) {
  constexpr int V = 16 / sizeof(TW), XU = 4;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const TW* as = reinterpret_cast<const TW*>(smem_raw);  // [R][in_features]
  __shared__ std::uint64_t bar;
  __shared__ float red[shrink_threads / 32][R];
  const int seg = blockIdx.x, j = blockIdx.y, k0 = blockIdx.z * R;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const bool early = (flags & flag_early) != 0, xbt = (flags & flag_xbt) != 0;
  if (!early) grid_dep_wait();

  const int t_begin = a.seg_begin[seg], t_end = a.seg_end[seg];
  const int e = a.seg_adapter[seg] * a.num_slices + j;
  int r = 0, lda = 0, ldb = 0;
  const TW* A = nullptr;
  const TW* bt = nullptr;
  if (t_end > t_begin) {
    r = a.ranks[e];
    A = static_cast<const TW*>(a.a_ptrs[e]);
    lda = a.lda[e];
    if (xbt) {
      bt = static_cast<const TW*>(a.bt_ptrs[e]);
      ldb = a.ldb[e];
    }
  }
  if (k0 >= r) return;
  const int nrows = min(R, r - k0);
  const int nv = a.in_features / V;
  const auto row_bytes = static_cast<std::uint32_t>(a.in_features * sizeof(TW));
  if (tid == 0) {
    mbar_init(&bar);
    mbar_expect_tx(&bar, row_bytes * static_cast<std::uint32_t>(nrows));
    for (int q = 0; q < nrows; ++q)
      bulk_copy_g2s(smem_raw + q * row_bytes, A + static_cast<std::size_t>(k0 + q) * lda, row_bytes, &bar);
  }
  if (xbt && tid < nrows) {
    const int width = j == 0 ? a.slice_width[0] : (j == 1 ? a.slice_width[1] : a.slice_width[2]);
    prefetch_l2_if_aligned(bt + static_cast<std::size_t>(k0 + tid) * ldb,
                           static_cast<std::uint32_t>(width * sizeof(TW)));
  }
  if (early) grid_dep_wait();
  grid_dep_launch();

  const TX* __restrict__ x = static_cast<const TX*>(a.x);
  vec_t<TX, V> xv[XU];
  auto load_x = [&](const TX* xt, int v0) {
#pragma unroll
    for (int u = 0; u < XU; ++u)
      if (v0 + u * shrink_threads < nv)
        xv[u] = load_vec<TX, V>(xt + static_cast<std::size_t>(v0 + u * shrink_threads) * V);
  };
  load_x(x + static_cast<std::size_t>(t_begin) * a.ldx, tid);  // the first x vectors while A lands
  __syncthreads();  // the barrier's init is visible to every thread
  mbar_wait(&bar, 0);
  bool preloaded = true;
  for (int t = t_begin; t < t_end; ++t) {
    const TX* __restrict__ xt = x + static_cast<std::size_t>(t) * a.ldx;
    float acc[R];
#pragma unroll
    for (int q = 0; q < R; ++q) acc[q] = 0.0f;
#pragma unroll 1
    for (int v0 = tid; v0 < nv; v0 += shrink_threads * XU) {
      if (!preloaded) load_x(xt, v0);
      preloaded = false;
#pragma unroll
      for (int u = 0; u < XU; ++u) {
        const int v = v0 + u * shrink_threads;
        if (v < nv) {
          float xf[V];
          to_f32_vec(xv[u], xf);
#pragma unroll
          for (int q = 0; q < R; ++q) {
            if (q < nrows) {
              float wf[V];
              const TW* w = as + static_cast<std::size_t>(q) * a.in_features + static_cast<std::size_t>(v) * V;
              to_f32_vec(*reinterpret_cast<const vec_t<TW, V>*>(w), wf);
#pragma unroll
              for (int i = 0; i < V; ++i) acc[q] = fmaf(xf[i], wf[i], acc[q]);
            }
          }
        }
      }
    }
    preloaded = false;
#pragma unroll
    for (int q = 0; q < R; ++q) {
      const float sum = warp_sum(acc[q]);
      if (lane == 0) red[warp][q] = sum;
    }
    __syncthreads();
    if (tid < nrows) {
      float sum = 0.0f;
#pragma unroll
      for (int w8 = 0; w8 < shrink_threads / 32; ++w8) sum += red[w8][tid];
      a.shrink_out[(static_cast<std::size_t>(j) * a.num_tokens + t) * a.max_rank + k0 + tid] = sum;
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

/// T: bf16 or f16 (activations and weights). BM = 16·WM tokens; NT threads: NT/32 warps as WM (rows) ×
/// NT/32/WM (columns), each warp at least 16 columns.
template <typename T, int WM, int NT>
__global__ void __launch_bounds__(NT) sgmv_shrink_kernel(const lora_args a) {
  constexpr int BM = 16 * WM, BN = sgmv_bn, BK = sgmv_bk, ST = sgmv_stages, LDS = sgmv_lds;
  constexpr int WN = NT / 32 / WM, WCOLS = BN / WN, NB = WCOLS / 8;
  static_assert(WN >= 1 && WCOLS >= 16, "each warp needs at least 16 columns");
  constexpr int RS = NT / 8;                // tile rows one pass of the threads copies
  constexpr int XCH = BM * (BK / 8) / NT;  // 16-byte chunks of the x tile per thread
  constexpr int ACH = BN * (BK / 8) / NT;  // of the A tile
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

  // The rows this thread copies: x rows tid/8 + RS·i, A rows (concatenated rank rows) likewise; columns
  // (tid % 8)·8 of each k-tile.
  const int cc = (tid % 8) * 8;
  const T* xrow[XCH];
  const T* arow[ACH];
  const T* xbase = static_cast<const T*>(a.x);
#pragma unroll
  for (int i = 0; i < XCH; ++i) {
    const int row = tid / 8 + RS * i;
    xrow[i] = row < mrows ? xbase + static_cast<std::size_t>(t0 + row) * a.ldx : nullptr;
  }
#pragma unroll
  for (int i = 0; i < ACH; ++i) {
    const int row = tid / 8 + RS * i;
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
      const int row = tid / 8 + RS * i;
      const bool ok = kin && xrow[i] != nullptr;
      cp_async16(xs + (stage * BM + row) * LDS + cc, ok ? static_cast<const void*>(xrow[i] + gk) : a.x, ok ? 16 : 0);
    }
#pragma unroll
    for (int i = 0; i < ACH; ++i) {
      const int row = tid / 8 + RS * i;
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
        for (int c = 0; c < 4; ++c) part[(n * 4 + c) * NT + tid] = acc[n][c];
    }
    cluster.sync();
    if (rank == 0) {
      for (unsigned rr = 1; rr < cluster.num_blocks(); ++rr) {
        const float* remote = cluster.map_shared_rank(part, rr);
#pragma unroll
        for (int n = 0; n < NB; ++n)
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[n][c] += remote[(n * 4 + c) * NT + tid];
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

/// Upper bound of the Bt bytes the expand of this call reads (segments of one adapter counted each time).
double expand_bt_bytes(const lora_args& a) {
  double cols = 0;
  for (int j = 0; j < a.num_slices; ++j) cols += a.slice_width[j];
  return static_cast<double>(a.num_segments) * a.max_rank * cols * dtype_size(a.weight_type);
}

template <typename TX, typename TW, int TG, int R, int V, bool Lean>
void launch_bgmv(const lora_args& a, cudaStream_t stream) {
  // 16-byte loads in flight per thread: U·R (one pass over in_features = 4096 for bf16 with U = 4). Lean: half
  // of that for single tokens and a register cap of 102 (95 used, no spill), so that five blocks fit a
  // multiprocessor instead of three.
  constexpr int U = TG == 1 && !Lean ? 4 : 2;
  constexpr int MINB = Lean && TG == 1 ? 5 : 3;
  const int flags = decode_flags(expand_bt_bytes(a));
  const dim3 grid(static_cast<unsigned>(a.num_segments), static_cast<unsigned>(a.num_slices),
                  static_cast<unsigned>((a.max_rank + R - 1) / R));
  launch(op_name, bgmv_shrink_kernel<TX, TW, TG, R, V, U, MINB>, grid, dim3(shrink_threads), 0, stream, 1, a, flags);
}

template <typename TX, typename TW, int R>
void launch_bgmv_bulk(const lora_args& a, cudaStream_t stream) {
  constexpr auto kernel = bgmv_shrink_bulk_kernel<TX, TW, R>;
  prefer_shared<kernel>();
  const int smem = R * a.in_features * static_cast<int>(sizeof(TW));
  const int flags = decode_flags(expand_bt_bytes(a));
  const dim3 grid(static_cast<unsigned>(a.num_segments), static_cast<unsigned>(a.num_slices),
                  static_cast<unsigned>((a.max_rank + R - 1) / R));
  launch(op_name, kernel, grid, dim3(shrink_threads), smem, stream, 1, a, flags);
}

template <typename TX, typename TW, int V, bool Lean>
void dispatch_bgmv(const lora_args& a, const plan& p, cudaStream_t stream) {
  if constexpr (V == 1) {
    launch_bgmv<TX, TW, 1, 4, 1, false>(a, stream);  // unaligned shapes: correctness, not speed
  } else {
    // Few blocks: one rank row per block so more multiprocessors pull bytes.
    const long blocks4 = static_cast<long>(a.num_segments) * a.num_slices * ((a.max_rank + 3) / 4);
    const bool narrow = blocks4 < 2L * sm_count();
    if constexpr (V * sizeof(TW) == 16 && sizeof(TW) == 2) {
      // Bulk copies for blocks of four rank rows; one-row blocks (few segments) measured faster as registers.
      if (use_bulk() && !narrow && 4L * a.in_features * static_cast<long>(sizeof(TW)) <= bulk_smem_limit)
        return launch_bgmv_bulk<TX, TW, 4>(a, stream);
    }
    switch (p.tokens_per_group) {
      case 1:
        return narrow ? launch_bgmv<TX, TW, 1, 1, V, Lean>(a, stream) : launch_bgmv<TX, TW, 1, 4, V, Lean>(a, stream);
      case 2:
        return narrow ? launch_bgmv<TX, TW, 2, 1, V, false>(a, stream) : launch_bgmv<TX, TW, 2, 4, V, false>(a, stream);
      default:
        return narrow ? launch_bgmv<TX, TW, 4, 1, V, false>(a, stream) : launch_bgmv<TX, TW, 4, 4, V, false>(a, stream);
    }
  }
}

template <typename T, int WM, int NT>
void launch_sgmv(const lora_args& a, cudaStream_t stream) {
  constexpr int BM = 16 * WM;
  constexpr int smem = sgmv_shrink_smem<BM>();
  constexpr auto kernel = sgmv_shrink_kernel<T, WM, NT>;
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
  launch(op_name, kernel, grid, dim3(NT), smem, stream, splits, a);
}

template <typename TX, typename TW>
void run(const lora_args& a, cudaStream_t stream) {
  const int v = weight_vec(a.weight_type);
  const bool vec_ok = a.in_features % v == 0 && a.ldx % v == 0 && aligned16(a.x);
  constexpr bool tc_type = std::is_same_v<TX, TW> && !std::is_same_v<TX, float>;
  const plan p = make_plan(a, tc_type && vec_ok);
  if constexpr (tc_type) {
    if (p.prefill) {
      // lora_tuning::prefill_shrink_8warps: twice the warps on the same tile (the kernel is bound by each warp's
      // chain of dependent instructions at 3 blocks per multiprocessor, not by bytes).
      const bool w8 = (lora_tuning::get_variant() & lora_tuning::prefill_shrink_8warps) != 0;
      switch (p.bm) {
        case 16: return launch_sgmv<TX, 1, shrink_threads>(a, stream);
        case 32:
          return w8 ? launch_sgmv<TX, 2, 2 * shrink_threads>(a, stream) : launch_sgmv<TX, 2, shrink_threads>(a, stream);
        default:
          return w8 ? launch_sgmv<TX, 4, 2 * shrink_threads>(a, stream) : launch_sgmv<TX, 4, shrink_threads>(a, stream);
      }
    }
  }
  constexpr int V = 16 / sizeof(TW);
  if (!vec_ok)
    dispatch_bgmv<TX, TW, 1, false>(a, p, stream);
  else if (lora_tuning::get_variant() & lora_tuning::lean)
    dispatch_bgmv<TX, TW, V, true>(a, p, stream);
  else
    dispatch_bgmv<TX, TW, V, false>(a, p, stream);
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
