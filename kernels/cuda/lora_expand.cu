// LoRA expand: y[t][off_j : off_j + w_j] += shrink_out[j][t][0:r] · Bt_{a,j} for every token t of a segment
// with adapter a and every targeted slice j. Heterogeneous ranks 1..256 and up to three slices of different
// widths in one launch; the column space of all slices is cut into chunks on the host (the widths are host
// scalars), so a launch has no idle blocks for narrow slices.
//
//  * decode (BGMV): one block per (segment, column chunk of 128·V). Each thread owns V consecutive columns,
//    streams the r rows of Bt for them with 16-byte loads (all r loads of a pass in flight) and applies them
//    to TG tokens of the segment at once, the shrink values of those tokens staged in shared memory. Bt is read
//    once per TG tokens; y is read and written once, with 16-byte accesses.
//  * prefill (SGMV): tensor cores. A block computes BM tokens × 128 columns: Bt tiles of 32 rank rows go
//    through a two-stage cp.async pipeline into shared memory (ldmatrix.trans gives the B fragments), the f32
//    shrink values are loaded straight into A fragments, each split into a 16-bit hi and lo part so the result
//    keeps f32-level accuracy (two mma per fragment; the kernel is bound by the y traffic, not the math). The
//    y tile is loaded before the math and updated through a shared-memory staging tile with 16-byte accesses.

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

/// TY: activation type, TW: weight type, TG: tokens per pass, V: columns per thread, KU: rank rows in flight.
template <typename TY, typename TW, int TG, int V, int KU>
__global__ void __launch_bounds__(expand_threads, 3) bgmv_expand_kernel(const lora_args a, const chunk_map m,
                                                                      int prefetch) {
  __shared__ float s_sh[TG][max_supported_rank];
  const int seg = blockIdx.x, tid = threadIdx.x;
  const slice_cols sc = chunk_slice(a, m, blockIdx.y);
  if (!prefetch) grid_dep_wait();

  const int t_begin = a.seg_begin[seg], t_end = a.seg_end[seg];
  const int e = a.seg_adapter[seg] * a.num_slices + sc.j;
  const int r = t_end > t_begin ? a.ranks[e] : 0;
  if (r == 0) return;
  const TW* __restrict__ bt = static_cast<const TW*>(a.bt_ptrs[e]);
  const int ldb = a.ldb[e];
  const int col = sc.col0 + tid * V;
  const bool active = col < sc.width;

  vec_t<TW, V> bv[KU];
  auto load_b = [&](int k0) {
#pragma unroll
    for (int u = 0; u < KU; ++u)
      if (k0 + u < r) bv[u] = load_vec<TW, V>(bt + static_cast<std::size_t>(k0 + u) * ldb + col);
  };
  // Prefetch mode: the first KU rows of Bt go into registers and the rest into L2 before waiting for the
  // kernel before (the shrink that writes shrink_out).
  bool preloaded = false;
  if (prefetch) {
    if constexpr (V * sizeof(TW) == 16) {
      if (tid < r && tid >= KU) {
        const int cols = min(m.width, sc.width - sc.col0);
        prefetch_l2(bt + static_cast<std::size_t>(tid) * ldb + sc.col0, static_cast<std::uint32_t>(cols * sizeof(TW)));
      }
    }
    if (active) load_b(0);
    preloaded = true;
    grid_dep_wait();
  }
  grid_dep_launch();

  TY* __restrict__ y = static_cast<TY*>(a.y) + sc.offset + col;
  const float* __restrict__ s_in = a.shrink_out + static_cast<std::size_t>(sc.j) * a.num_tokens * a.max_rank;

  for (int tg = t_begin; tg < t_end; tg += TG) {
    const int ntok = min(TG, t_end - tg);
    for (int i = tid; i < TG * r; i += expand_threads) {
      const int t = i / r, k = i - t * r;
      s_sh[t][k] = t < ntok ? s_in[static_cast<std::size_t>(tg + t) * a.max_rank + k] : 0.0f;
    }
    __syncthreads();
    if (active) {
      vec_t<TY, V> yv[TG];
#pragma unroll
      for (int t = 0; t < TG; ++t)
        if (t < ntok) yv[t] = load_vec_cg<TY, V>(y + static_cast<std::size_t>(tg + t) * a.ldy);
      float acc[TG][V];
#pragma unroll
      for (int t = 0; t < TG; ++t)
#pragma unroll
        for (int i = 0; i < V; ++i) acc[t][i] = 0.0f;
      for (int k0 = 0; k0 < r; k0 += KU) {
        if (!preloaded) load_b(k0);
        preloaded = false;
#pragma unroll
        for (int u = 0; u < KU; ++u) {
          if (k0 + u < r) {
            float bf[V];
            to_f32_vec(bv[u], bf);
#pragma unroll
            for (int t = 0; t < TG; ++t) {
              const float sv = s_sh[t][k0 + u];
#pragma unroll
              for (int i = 0; i < V; ++i) acc[t][i] = fmaf(sv, bf[i], acc[t][i]);
            }
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

// --- prefill -----------------------------------------------------------------------------------------------

constexpr int sgmv_bn = 128;  // columns per block
constexpr int sgmv_bk = 32;   // rank rows per pipeline stage
constexpr int sgmv_ldb = sgmv_bn + 8;  // smem pitch of a Bt row (272 bytes: ldmatrix conflict-free)
constexpr int sgmv_lds = sgmv_bn + 4;  // f32 staging pitch

template <int BM>
constexpr int sgmv_expand_smem() {
  return std::max(2 * sgmv_bk * sgmv_ldb * 2, BM * sgmv_lds * 4);
}

/// T: bf16 or f16 (activations and weights). 4 warps: WM (rows) × WN (columns), each MI×16 rows × WCOLS.
template <typename T, int BM>
__global__ void __launch_bounds__(expand_threads, BM == 64 ? 2 : 3) sgmv_expand_kernel(const lora_args a, const chunk_map m) {
  constexpr int BN = sgmv_bn, BK = sgmv_bk, LDB = sgmv_ldb, LDS = sgmv_lds;
  constexpr int WM = BM == 16 ? 1 : 2, WN = 4 / WM, MI = BM / (16 * WM), WCOLS = BN / WN, NI = WCOLS / 8;
  constexpr int YV = BM * (BN / 8) / expand_threads;   // 8-column y vectors per thread
  constexpr int BCH = BK * (BN / 8) / expand_threads;  // 16-byte Bt chunks per thread and stage
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* bts = reinterpret_cast<T*>(smem_raw);          // [2][BK][LDB] during the main loop
  float* stage = reinterpret_cast<float*>(smem_raw);  // [BM][LDS] in the epilogue

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
  vec_t<T, 8> yv[YV];
#pragma unroll
  for (int i = 0; i < YV; ++i) {
    const int id = tid + i * expand_threads, row = id / (BN / 8), c = (id % (BN / 8)) * 8;
    if (row < mrows && c < ncols) yv[i] = load_vec_cg<T, 8>(y + static_cast<std::size_t>(row) * a.ldy + c);
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

// --- host --------------------------------------------------------------------------------------------------

constexpr const char* op_name = "lora_expand";

template <typename TY, typename TW, int TG, int V>
void launch_bgmv(const lora_args& a, cudaStream_t stream) {
  constexpr int KU = TG == 1 ? 16 : 4;  // rank 16 in one pass of loads for single tokens
  const int prefetch = lora_tuning::get_pdl() == lora_tuning::pdl::prefetch ? 1 : 0;
  const chunk_map m = make_chunks(a, expand_threads * V);
  const dim3 grid(static_cast<unsigned>(a.num_segments), static_cast<unsigned>(m.total));
  launch(op_name, bgmv_expand_kernel<TY, TW, TG, V, KU>, grid, dim3(expand_threads), 0, stream, 1, a, m, prefetch);
}

template <typename T, int BM>
void launch_sgmv(const lora_args& a, cudaStream_t stream) {
  constexpr int smem = sgmv_expand_smem<BM>();
  constexpr auto kernel = sgmv_expand_kernel<T, BM>;
  allow_smem<kernel>(smem);
  const chunk_map m = make_chunks(a, sgmv_bn);
  const int tiles = tile_bound(a, BM);
  if (tiles > 65535) unsupported(op_name, "token tiles " + std::to_string(tiles) + " (at most 65535)");
  const dim3 grid(static_cast<unsigned>(m.total), static_cast<unsigned>(tiles));
  launch(op_name, kernel, grid, dim3(expand_threads), smem, stream, 1, a, m);
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
      switch (p.bm) {
        case 16: return launch_sgmv<TY, 16>(a, stream);
        case 32: return launch_sgmv<TY, 32>(a, stream);
        default: return launch_sgmv<TY, 64>(a, stream);
      }
    }
  }
  constexpr int V = 16 / sizeof(TW);
  if (!vec_ok) return launch_bgmv<TY, TW, 1, 1>(a, stream);  // unaligned shapes: correctness, not speed
  switch (p.tokens_per_group) {
    case 1: return launch_bgmv<TY, TW, 1, V>(a, stream);
    case 2: return launch_bgmv<TY, TW, 2, V>(a, stream);
    default: return launch_bgmv<TY, TW, 4, V>(a, stream);
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
