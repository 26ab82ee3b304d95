// LoRA expand: y[t][off_j : off_j + w_j] += shrink_out[j][t][0:r] · Bt_{a,j} for every token t of a segment
// with adapter a and every targeted slice j. Heterogeneous ranks 1..256 and up to three slices of different
// widths in one launch; the column space of all slices is cut into chunks on the host (the widths are host
// scalars), so a launch has no idle blocks for narrow slices.
//
//  * decode (BGMV): one block per (segment, column chunk of 128·V). Each thread owns V consecutive columns,
//    streams the r rows of Bt for them with 16-byte loads (all r loads of a pass in flight) and applies them
//    to TG tokens of the segment at once, the shrink values of those tokens staged in shared memory. Bt is read
//    once per TG tokens; y is read and written once, with 16-byte accesses. The table entries and the shrink
//    values are requested together, Bt and y right after the entries. Lean (the default): 8 rank rows in flight
//    per thread, 5 blocks per multiprocessor. With pdl::prefetch (lora_tuning::bulk) and max_rank · 128·V ·
//    sizeof(weight) <= 40 KB, the block's column chunk of Bt comes into shared memory by bulk copies instead.
//  * prefill (SGMV): tensor cores. A block computes BM tokens × 128 columns: Bt tiles of 32 rank rows go
//    through a two-stage cp.async pipeline into shared memory (ldmatrix.trans gives the B fragments), the f32
//    shrink values are loaded straight into A fragments, each split into a 16-bit hi and lo part so the result
//    keeps f32-level accuracy (two mma per fragment; the kernel is bound by the y traffic, not the math). The
//    old y tile comes by cp.async into shared memory before the math (no registers held: 4 blocks per
//    multiprocessor at 64 tokens), the sums are added in place and the tile is stored with 16-byte accesses.

#include <algorithm>
#include <climits>
#include <type_traits>

#include "kernels/cuda/detail/lora_common.cuh"
#include "kernels/cuda/ops.hpp"

namespace loraplex::kernels::cuda {

namespace {

using namespace detail;
using namespace detail::lora;

constexpr int expand_threads = 128;

/// Column chunks of the slices: chunk c belongs to slice j when begin[j] <= c < begin[j + 1].
struct chunk_map {
  int begin[max_lora_slices] = {0, INT_MAX, INT_MAX};
  int width = 0;  // columns per chunk
  int total = 0;
};

chunk_map make_chunks(const lora_args& a, int width) {
  chunk_map m;
  m.width = width;
  int c = 0;
  for (int j = 0; j < a.num_slices; ++j) {
    m.begin[j] = c;
    c += (a.slice_width[j] + width - 1) / width;
  }
  m.total = c;
  return m;
}

struct slice_cols {
  int j, col0, width, offset;
};

__device__ __forceinline__ slice_cols chunk_slice(const lora_args& a, const chunk_map& m, int chunk) {
  slice_cols s;
  s.j = chunk >= m.begin[2] ? 2 : (chunk >= m.begin[1] ? 1 : 0);
  s.col0 = (chunk - (s.j == 0 ? m.begin[0] : (s.j == 1 ? m.begin[1] : m.begin[2]))) * m.width;
  s.width = s.j == 0 ? a.slice_width[0] : (s.j == 1 ? a.slice_width[1] : a.slice_width[2]);
  s.offset = s.j == 0 ? a.slice_offset[0] : (s.j == 1 ? a.slice_offset[1] : a.slice_offset[2]);
  return s;
}

// --- decode ------------------------------------------------------------------------------------------------

/// TY: activation type, TW: weight type, TG: tokens per pass, V: columns per thread, KU: rank rows in flight,
/// MINB: blocks per multiprocessor the register budget must allow. flags: flag_early / flag_l2_only.
template <typename TY, typename TW, int TG, int V, int KU, int MINB>
__global__ void __launch_bounds__(expand_threads, MINB) bgmv_expand_kernel(const lora_args a, const chunk_map m,
                                                                         int flags) {
  constexpr int SPT = (TG * max_supported_rank + expand_threads - 1) / expand_threads;  // staged values / thread
  __shared__ float s_sh[TG][max_supported_rank];
  const int seg = blockIdx.x, tid = threadIdx.x;
  const slice_cols sc = chunk_slice(a, m, blockIdx.y);
  const bool early = (flags & flag_early) != 0, l2_only = (flags & flag_l2_only) != 0;
  if (!early) grid_dep_wait();

  // The segment, then the table entries and (plain order) the first token group's shrink values at once.
  const int t_begin = a.seg_begin[seg], t_end = a.seg_end[seg];
  const int e = a.seg_adapter[seg] * a.num_slices + sc.j;
  int r = 0, ldb = 0;
  const TW* __restrict__ bt = nullptr;
  if (t_end > t_begin) {
    r = a.ranks[e];
    bt = static_cast<const TW*>(a.bt_ptrs[e]);
    ldb = a.ldb[e];
  }
  const float* __restrict__ s_in = a.shrink_out + static_cast<std::size_t>(sc.j) * a.num_tokens * a.max_rank;
  // Shrink values of tokens tg.. (rank entries up to max_rank: a host scalar, so the loads need not wait for
  // the rank; entries past the rank are read, never used) into registers; staged to shared memory later.
  float sv[SPT];
  auto load_s = [&](int tg) {
    const int n = min(TG, t_end - tg) * a.max_rank;
#pragma unroll
    for (int c = 0; c < SPT; ++c) {
      const int i = tid + c * expand_threads;
      if (i < n) sv[c] = s_in[static_cast<std::size_t>(tg) * a.max_rank + i];
    }
  };
  auto stage_s = [&](int tg) {
    const int n = min(TG, t_end - tg) * a.max_rank;
#pragma unroll
    for (int c = 0; c < SPT; ++c) {
      const int i = tid + c * expand_threads;
      if (i < n) {
        const int t = i / a.max_rank;
        s_sh[t][i - t * a.max_rank] = sv[c];
      }
    }
  };
  if (!early && t_end > t_begin) load_s(t_begin);
  if (r == 0) return;
  const int col = sc.col0 + tid * V;
  const bool active = col < sc.width;

  vec_t<TW, V> bv[KU];
  const TW* __restrict__ bcol = bt + col;
  auto load_b = [&](int k0) {
    const TW* p = bcol + static_cast<std::size_t>(k0) * ldb;
#pragma unroll
    for (int u = 0; u < KU; ++u) {
      if (k0 + u < r)
        bv[u] = load_vec<TW, V>(p + u * ldb);
      else
        zero_vec(bv[u]);
    }
  };
  if (early) {
    // Prefetch mode: the rows of Bt past the first KU (all of them with l2_only) into L2 and the first KU into
    // registers before waiting for the kernel before (the shrink that writes shrink_out).
    const int cols = min(m.width, sc.width - sc.col0);
    for (int k = tid + (l2_only ? 0 : KU); k < r; k += expand_threads)
      prefetch_l2_if_aligned(bt + static_cast<std::size_t>(k) * ldb + sc.col0,
                             static_cast<std::uint32_t>(cols * sizeof(TW)));
    if (!l2_only && active) load_b(0);
    grid_dep_wait();
    load_s(t_begin);
    if (l2_only && active) load_b(0);
  } else if (active) {
    load_b(0);
  }
  grid_dep_launch();

  TY* __restrict__ y = static_cast<TY*>(a.y) + sc.offset + col;

  for (int tg = t_begin; tg < t_end; tg += TG) {
    const int ntok = min(TG, t_end - tg);
    if (tg != t_begin) {
      load_s(tg);
      if (active) load_b(0);
    }
    vec_t<TY, V> yv[TG];
    if (active) {
#pragma unroll
      for (int t = 0; t < TG; ++t)
        if (t < ntok) yv[t] = load_vec_cg<TY, V>(y + static_cast<std::size_t>(tg + t) * a.ldy);
    }
    stage_s(tg);
    __syncthreads();
    if (active) {
      float acc[TG][V];
#pragma unroll
      for (int t = 0; t < TG; ++t)
#pragma unroll
        for (int i = 0; i < V; ++i) acc[t][i] = 0.0f;
#pragma unroll 1
      for (int k0 = 0; k0 < r; k0 += KU) {
        if (k0 > 0) load_b(k0);
        // Branch-free: rows past the rank have zero weights and a zero shrink value (never NaN · 0).
#pragma unroll
        for (int u = 0; u < KU; ++u) {
          const bool ok = k0 + u < r;
          float bf[V];
          to_f32_vec(bv[u], bf);
#pragma unroll
          for (int t = 0; t < TG; ++t) {
            const float sv_t = s_sh[t][ok ? k0 + u : 0];
            const float s = ok && t < ntok ? sv_t : 0.0f;
#pragma unroll
            for (int i = 0; i < V; ++i) acc[t][i] = fmaf(s, bf[i], acc[t][i]);
          }
        }
      }
#pragma unroll
      for (int t = 0; t < TG; ++t) {
        if (t < ntok) {
          float yf[V];
          to_f32_vec(yv[t], yf);
          vec_t<TY, V> o;
#pragma unroll
          for (int i = 0; i < V; ++i) o.v[i] = from_f32<TY>(yf[i] + acc[t][i]);
          store_vec(y + static_cast<std::size_t>(tg + t) * a.ldy, o);
        }
      }
    }
    __syncthreads();
  }
}

/// Bulk variant (lora_tuning::bulk), V = 16 / sizeof(TW): thread 0 copies the block's column chunk of every
/// rank row of Bt into shared memory with one bulk copy each (before the wait in prefetch mode); the shrink
/// values and y are loaded meanwhile; then each thread applies the rows from shared memory to its V columns, one
/// token of the segment at a time (Bt is read from memory once per segment). Needs max_rank · chunk width ·
/// sizeof(TW) <= bulk_smem_limit (dynamic shared memory).
template <typename TY, typename TW>
__global__ void __launch_bounds__(expand_threads) bgmv_expand_bulk_kernel(const lora_args a, const chunk_map m,
                                                                         int flags) {
  constexpr int V = 16 / sizeof(TW), KU = 8;
  constexpr int SPT = (max_supported_rank + expand_threads - 1) / expand_threads;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const TW* bs = reinterpret_cast<const TW*>(smem_raw);  // [r][m.width]
  __shared__ std::uint64_t bar;
  __shared__ float s_sh[max_supported_rank];
  const int seg = blockIdx.x, tid = threadIdx.x;
  const slice_cols sc = chunk_slice(a, m, blockIdx.y);
  const bool early = (flags & flag_early) != 0;
  if (!early) grid_dep_wait();

  const int t_begin = a.seg_begin[seg], t_end = a.seg_end[seg];
  const int e = a.seg_adapter[seg] * a.num_slices + sc.j;
  int r = 0, ldb = 0;
  const TW* bt = nullptr;
  if (t_end > t_begin) {
    r = a.ranks[e];
    bt = static_cast<const TW*>(a.bt_ptrs[e]);
    ldb = a.ldb[e];
  }
  const float* __restrict__ s_in = a.shrink_out + static_cast<std::size_t>(sc.j) * a.num_tokens * a.max_rank;
  float sv[SPT];
  auto load_s = [&](int t) {  // entries up to max_rank (a host scalar): issued before the rank is known
#pragma unroll
    for (int c = 0; c < SPT; ++c) {
      const int k = tid + c * expand_threads;
      if (k < a.max_rank) sv[c] = s_in[static_cast<std::size_t>(t) * a.max_rank + k];
    }
  };
  if (!early && t_end > t_begin) load_s(t_begin);
  if (r == 0) return;
  const int cols = min(m.width, sc.width - sc.col0);
  const auto row_bytes = static_cast<std::uint32_t>(cols * sizeof(TW));
  if (tid == 0) {
    mbar_init(&bar);
    mbar_expect_tx(&bar, row_bytes * static_cast<std::uint32_t>(r));
    for (int k = 0; k < r; ++k)
      bulk_copy_g2s(smem_raw + static_cast<std::size_t>(k) * m.width * sizeof(TW),
                    bt + static_cast<std::size_t>(k) * ldb + sc.col0, row_bytes, &bar);
  }
  if (early) {
    grid_dep_wait();
    load_s(t_begin);
  }
  grid_dep_launch();

  const int c0 = tid * V;
  const bool active = c0 < cols;
  TY* __restrict__ y = static_cast<TY*>(a.y) + sc.offset + sc.col0 + c0;
  bool waited = false;
  for (int t = t_begin; t < t_end; ++t) {
    if (t != t_begin) load_s(t);
    vec_t<TY, V> yv;
    if (active) yv = load_vec_cg<TY, V>(y + static_cast<std::size_t>(t) * a.ldy);
#pragma unroll
    for (int c = 0; c < SPT; ++c) {
      const int k = tid + c * expand_threads;
      if (k < a.max_rank) s_sh[k] = sv[c];
    }
    __syncthreads();  // s_sh, and (first token) the barrier's init
    if (!waited) {
      mbar_wait(&bar, 0);
      waited = true;
    }
    if (active) {
      float acc[V];
#pragma unroll
      for (int i = 0; i < V; ++i) acc[i] = 0.0f;
#pragma unroll 1
      for (int k0 = 0; k0 < r; k0 += KU) {
#pragma unroll
        for (int u = 0; u < KU; ++u) {
          const int k = k0 + u;
          if (k < r) {
            float bf[V];
            to_f32_vec(*reinterpret_cast<const vec_t<TW, V>*>(bs + static_cast<std::size_t>(k) * m.width + c0), bf);
            const float sk = s_sh[k];
#pragma unroll
            for (int i = 0; i < V; ++i) acc[i] = fmaf(sk, bf[i], acc[i]);
          }
        }
      }
      float yf[V];
      to_f32_vec(yv, yf);
      vec_t<TY, V> o;
#pragma unroll
      for (int i = 0; i < V; ++i) o.v[i] = from_f32<TY>(yf[i] + acc[i]);
      store_vec(y + static_cast<std::size_t>(t) * a.ldy, o);
    }
    __syncthreads();  // s_sh is rewritten for the next token
  }
}

// --- prefill -----------------------------------------------------------------------------------------------

constexpr int sgmv_bn = 128;  // columns per block
constexpr int sgmv_bk = 32;   // rank rows per pipeline stage
constexpr int sgmv_ldb = sgmv_bn + 8;  // smem pitch of a Bt row (272 bytes: ldmatrix conflict-free)
constexpr int sgmv_lds = sgmv_bn + 4;  // f32 staging pitch

constexpr int sgmv_ldy = sgmv_bn + 8;  // smem pitch of a y row (YS): 272 bytes, conflict-free fragment updates

/// YS: the old y tile goes through shared memory (cp.async at the start, no registers held across the math; the
/// accumulators are added in place and the tile stored with 16-byte accesses), which leaves room for 4 blocks
/// per multiprocessor instead of 2 at BM = 64. Otherwise y is held in registers and the sum staged in f32.
template <int BM, bool YS>
constexpr int sgmv_expand_smem() {
  return YS ? 2 * sgmv_bk * sgmv_ldb * 2 + BM * sgmv_ldy * 2 : std::max(2 * sgmv_bk * sgmv_ldb * 2, BM * sgmv_lds * 4);
}

template <int BM, bool YS>
constexpr int sgmv_expand_minb() {
  return YS ? (BM == 64 ? 4 : (BM == 32 ? 5 : 6)) : (BM == 64 ? 2 : 3);
}

/// T: bf16 or f16 (activations and weights). 4 warps: WM (rows) × WN (columns), each MI×16 rows × WCOLS.
/// flags: 1 = prefetch into L1 the line starting each shrink-value row this thread reads, right after the wait,
/// so that the fragment loads after the y tile lands hit L1 (lora_tuning::prefill_s_prefetch).
template <typename T, int BM, bool YS>
__global__ void __launch_bounds__(expand_threads, (sgmv_expand_minb<BM, YS>()))
    sgmv_expand_kernel(const lora_args a, const chunk_map m, int flags) {
  constexpr int BN = sgmv_bn, BK = sgmv_bk, LDB = sgmv_ldb, LDS = sgmv_lds, LDY = sgmv_ldy;
  constexpr int WM = BM == 16 ? 1 : 2, WN = 4 / WM, MI = BM / (16 * WM), WCOLS = BN / WN, NI = WCOLS / 8;
  constexpr int YV = BM * (BN / 8) / expand_threads;   // 8-column y vectors per thread
  constexpr int BCH = BK * (BN / 8) / expand_threads;  // 16-byte Bt chunks per thread and stage
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* bts = reinterpret_cast<T*>(smem_raw);          // [2][BK][LDB] during the main loop
  float* stage = reinterpret_cast<float*>(smem_raw);  // [BM][LDS] in the epilogue (!YS)
  T* ys = bts + 2 * BK * LDB;                       // [BM][LDY] (YS)

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp % WM, wn = warp / WM;
  const int g = lane >> 2, q = lane & 3;
  grid_dep_wait();
  grid_dep_launch();

  int seg = 0, t0 = 0, mrows = 0;
  if (!find_tile<BM>(a.seg_begin, a.seg_end, a.num_segments, blockIdx.y, seg, t0, mrows)) return;
  const slice_cols sc = chunk_slice(a, m, blockIdx.x);
  const int e = a.seg_adapter[seg] * a.num_slices + sc.j;
  const int r = a.ranks[e];
  if (r == 0) return;
  const int ncols = min(BN, sc.width - sc.col0);
  const T* __restrict__ bt = static_cast<const T*>(a.bt_ptrs[e]) + sc.col0;
  const int ldb = a.ldb[e];
  T* __restrict__ y = static_cast<T*>(a.y) + static_cast<std::size_t>(t0) * a.ldy + sc.offset + sc.col0;
  const float* __restrict__ s_in =
      a.shrink_out + (static_cast<std::size_t>(sc.j) * a.num_tokens + t0) * a.max_rank;

  // The old y first: its latency hides behind the math.
  vec_t<T, 8> yv[YS ? 1 : YV];
  if constexpr (YS) {
#pragma unroll
    for (int i = 0; i < YV; ++i) {
      const int id = tid + i * expand_threads, row = id / (BN / 8), c = (id % (BN / 8)) * 8;
      const bool ok = row < mrows && c < ncols;
      const void* src = ok ? static_cast<const void*>(y + static_cast<std::size_t>(row) * a.ldy + c) : a.shrink_out;
      cp_async16(ys + row * LDY + c, src, ok ? 16 : 0);
    }
    cp_async_commit();
  } else {
#pragma unroll
    for (int i = 0; i < YV; ++i) {
      const int id = tid + i * expand_threads, row = id / (BN / 8), c = (id % (BN / 8)) * 8;
      if (row < mrows && c < ncols) yv[i] = load_vec_cg<T, 8>(y + static_cast<std::size_t>(row) * a.ldy + c);
    }
  }
  if ((flags & 1) != 0 && wm * 16 * MI < mrows) {
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = wm * 16 * MI + mi * 16 + g + 8 * h;
        if (row < mrows) prefetch_l1(s_in + static_cast<std::size_t>(row) * a.max_rank);  // in bounds
      }
  }

  auto load_b = [&](int stg, int kt) {
#pragma unroll
    for (int i = 0; i < BCH; ++i) {
      const int id = tid + i * expand_threads, kr = id / (BN / 8), c = (id % (BN / 8)) * 8;
      const int k = kt * BK + kr;
      const bool ok = k < r && c < ncols;
      cp_async16(bts + (stg * BK + kr) * LDB + c,
                 ok ? static_cast<const void*>(bt + static_cast<std::size_t>(k) * ldb + c) : a.shrink_out,
                 ok ? 16 : 0);
    }
  };
  auto s_at = [&](int row, int k) -> float {
    return (row < mrows && k < r) ? s_in[static_cast<std::size_t>(row) * a.max_rank + k] : 0.0f;
  };

  float acc[MI][NI][4];
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int n = 0; n < NI; ++n)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[mi][n][c] = 0.0f;

  const int nkt = (r + BK - 1) / BK;
  const bool rows_active = wm * 16 * MI < mrows;
  load_b(0, 0);
  cp_async_commit();
  for (int kt = 0; kt < nkt; ++kt) {
    if (kt + 1 < nkt) load_b((kt + 1) & 1, kt + 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int st = kt & 1;
    if (rows_active) {
#pragma unroll
      for (int ks = 0; ks < BK / 16; ++ks) {
        const int kb = kt * BK + ks * 16;
        if (kb >= r) break;
        std::uint32_t ahi[MI][4], alo[MI][4];
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) {
          const int ra = wm * 16 * MI + mi * 16 + g, rb = ra + 8, kk = kb + 2 * q;
          split_pair<T>(s_at(ra, kk), s_at(ra, kk + 1), ahi[mi][0], alo[mi][0]);
          split_pair<T>(s_at(rb, kk), s_at(rb, kk + 1), ahi[mi][1], alo[mi][1]);
          split_pair<T>(s_at(ra, kk + 8), s_at(ra, kk + 9), ahi[mi][2], alo[mi][2]);
          split_pair<T>(s_at(rb, kk + 8), s_at(rb, kk + 9), ahi[mi][3], alo[mi][3]);
        }
#pragma unroll
        for (int np = 0; np < NI / 2; ++np) {
          if (wn * WCOLS + np * 16 >= ncols) break;
          std::uint32_t bf[4];
          ldmatrix_x4_trans(bf, bts + (st * BK + ks * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LDB + wn * WCOLS +
                                    np * 16 + (lane >> 4) * 8);
#pragma unroll
          for (int mi = 0; mi < MI; ++mi) {
            mma16816<T>(acc[mi][2 * np], ahi[mi], bf[0], bf[1]);
            mma16816<T>(acc[mi][2 * np], alo[mi], bf[0], bf[1]);
            mma16816<T>(acc[mi][2 * np + 1], ahi[mi], bf[2], bf[3]);
            mma16816<T>(acc[mi][2 * np + 1], alo[mi], bf[2], bf[3]);
          }
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before the next iteration refills it
  }
  cp_async_wait<0>();
  __syncthreads();

  if constexpr (YS) {
    // acc[mi][n]: rows g and g+8, columns 2q and 2q+1 of the warp's n-th 8-column block, added into the y tile
    // in place (the same rounding as below: y + sum in f32, rounded once).
    auto add2 = [&](int row, int c, float d0, float d1) {
      auto* p = reinterpret_cast<vec_t<T, 2>*>(ys + row * LDY + c);
      vec_t<T, 2> v = *p;
      v.v[0] = from_f32<T>(to_f32<T>(v.v[0]) + d0);
      v.v[1] = from_f32<T>(to_f32<T>(v.v[1]) + d1);
      *p = v;
    };
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int n = 0; n < NI; ++n) {
        const int ra = wm * 16 * MI + mi * 16 + g, c = wn * WCOLS + n * 8 + 2 * q;
        add2(ra, c, acc[mi][n][0], acc[mi][n][1]);
        add2(ra + 8, c, acc[mi][n][2], acc[mi][n][3]);
      }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < YV; ++i) {
      const int id = tid + i * expand_threads, row = id / (BN / 8), c = (id % (BN / 8)) * 8;
      if (row < mrows && c < ncols)
        store_vec(y + static_cast<std::size_t>(row) * a.ldy + c,
                  *reinterpret_cast<const vec_t<T, 8>*>(ys + row * LDY + c));
    }
  } else {
    // acc[mi][n]: rows g and g+8, columns 2q and 2q+1 of the warp's n-th 8-column block.
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int n = 0; n < NI; ++n) {
        const int ra = wm * 16 * MI + mi * 16 + g, c = wn * WCOLS + n * 8 + 2 * q;
        *reinterpret_cast<float2*>(stage + ra * LDS + c) = make_float2(acc[mi][n][0], acc[mi][n][1]);
        *reinterpret_cast<float2*>(stage + (ra + 8) * LDS + c) = make_float2(acc[mi][n][2], acc[mi][n][3]);
      }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < YV; ++i) {
      const int id = tid + i * expand_threads, row = id / (BN / 8), c = (id % (BN / 8)) * 8;
      if (row < mrows && c < ncols) {
        const float4 d0 = *reinterpret_cast<const float4*>(stage + row * LDS + c);
        const float4 d1 = *reinterpret_cast<const float4*>(stage + row * LDS + c + 4);
        const float d[8] = {d0.x, d0.y, d0.z, d0.w, d1.x, d1.y, d1.z, d1.w};
        float yf[8];
        to_f32_vec(yv[i], yf);
        vec_t<T, 8> o;
#pragma unroll
        for (int k = 0; k < 8; ++k) o.v[k] = from_f32<T>(yf[k] + d[k]);
        store_vec(y + static_cast<std::size_t>(row) * a.ldy + c, o);
      }
    }
  }
}

// --- host --------------------------------------------------------------------------------------------------

constexpr const char* op_name = "lora_expand";

template <typename TY, typename TW, int TG, int V, bool Lean>
void launch_bgmv(const lora_args& a, cudaStream_t stream) {
  // Rank rows in flight per thread: rank 16 in one pass of loads for single tokens; lean: 8, with a register
  // cap of 102 so that five blocks fit a multiprocessor instead of three.
  constexpr int KU = TG == 1 ? (Lean ? 8 : 16) : 4;
  constexpr int MINB = Lean && TG == 1 ? 5 : 3;
  const int flags = decode_flags(0.0);
  const chunk_map m = make_chunks(a, expand_threads * V);
  const dim3 grid(static_cast<unsigned>(a.num_segments), static_cast<unsigned>(m.total));
  launch(op_name, bgmv_expand_kernel<TY, TW, TG, V, KU, MINB>, grid, dim3(expand_threads), 0, stream, 1, a, m, flags);
}

template <typename TY, typename TW>
void launch_bgmv_bulk(const lora_args& a, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(TW);
  constexpr auto kernel = bgmv_expand_bulk_kernel<TY, TW>;
  prefer_shared<kernel>();
  const int flags = decode_flags(0.0);
  const chunk_map m = make_chunks(a, expand_threads * V);
  const int smem = a.max_rank * m.width * static_cast<int>(sizeof(TW));
  const dim3 grid(static_cast<unsigned>(a.num_segments), static_cast<unsigned>(m.total));
  launch(op_name, kernel, grid, dim3(expand_threads), smem, stream, 1, a, m, flags);
}

template <typename T, int BM, bool YS>
void launch_sgmv(const lora_args& a, cudaStream_t stream) {
  constexpr int smem = sgmv_expand_smem<BM, YS>();
  constexpr auto kernel = sgmv_expand_kernel<T, BM, YS>;
  allow_smem<kernel>(smem);
  const chunk_map m = make_chunks(a, sgmv_bn);
  const int tiles = tile_bound(a, BM);
  if (tiles > 65535) unsupported(op_name, "token tiles " + std::to_string(tiles) + " (at most 65535)");
  const dim3 grid(static_cast<unsigned>(m.total), static_cast<unsigned>(tiles));
  const int flags = (lora_tuning::get_variant() & lora_tuning::prefill_s_prefetch) != 0 ? 1 : 0;
  launch(op_name, kernel, grid, dim3(expand_threads), smem, stream, 1, a, m, flags);
}

template <typename TY, typename TW>
void run(const lora_args& a, cudaStream_t stream) {
  const int v = weight_vec(a.weight_type);
  bool vec_ok = a.ldy % v == 0 && aligned16(a.y);
  for (int j = 0; j < a.num_slices; ++j) vec_ok = vec_ok && a.slice_width[j] % v == 0 && a.slice_offset[j] % v == 0;
  constexpr bool tc_type = std::is_same_v<TY, TW> && !std::is_same_v<TY, float>;
  const plan p = make_plan(a, tc_type && vec_ok);
  if constexpr (tc_type) {
    if (p.prefill) {
      const bool ys = (lora_tuning::get_variant() & lora_tuning::prefill_y_smem) != 0;
      switch (p.bm) {
        case 16: return ys ? launch_sgmv<TY, 16, true>(a, stream) : launch_sgmv<TY, 16, false>(a, stream);
        case 32: return ys ? launch_sgmv<TY, 32, true>(a, stream) : launch_sgmv<TY, 32, false>(a, stream);
        default: return ys ? launch_sgmv<TY, 64, true>(a, stream) : launch_sgmv<TY, 64, false>(a, stream);
      }
    }
  }
  constexpr int V = 16 / sizeof(TW);
  if (!vec_ok) return launch_bgmv<TY, TW, 1, 1, false>(a, stream);  // unaligned shapes: correctness, not speed
  if constexpr (sizeof(TW) == 2) {
    if (use_bulk() &&
        static_cast<long>(a.max_rank) * expand_threads * V * static_cast<long>(sizeof(TW)) <= bulk_smem_limit)
      return launch_bgmv_bulk<TY, TW>(a, stream);
  }
  switch (p.tokens_per_group) {
    case 1:
      return (lora_tuning::get_variant() & lora_tuning::lean) ? launch_bgmv<TY, TW, 1, V, true>(a, stream)
                                                              : launch_bgmv<TY, TW, 1, V, false>(a, stream);
    case 2: return launch_bgmv<TY, TW, 2, V, false>(a, stream);
    default: return launch_bgmv<TY, TW, 4, V, false>(a, stream);
  }
}

}  // namespace

void lora_expand(const lora_args& a, stream_t stream) {
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
