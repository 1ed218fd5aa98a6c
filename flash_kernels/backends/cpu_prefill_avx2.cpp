// Paged varlen prefill attention in fp32 on AVX2 + FMA: cpu_prefill.cpp's contract (shapes in its header) with
// q, caches and out fp32, for every CPU the extension targets with AVX2 (fp32 is what CPUs without AVX512-BF16
// run). Built with cpu_decode.cpp into one extension (flash_kernels/backends/cpu_decode.py).
//
// Tiles of R = 16 query rows (16 / G positions x the G query heads of a KV head); one task per (request, KV head,
// up to SUB = 4 consecutive tiles), handed out over torch's intra-op threads. A task walks the keys in blocks,
// packs each block's K and V rows once (they are read from the pool through the block table) and runs each of
// its tiles over it. Rows sit in the vector lanes (two 8-lane groups), so the online softmax's per-row max / sum /
// rescale are plain vector ops:
//   scores  S[key][rows] = sum over d of bcast(K[key][d]) * Q[d][rows]: 6 keys x 16 rows of sums in 12 registers
//           (with 2 of Q and a broadcast, 15 of the 16); Q packed once per tile as (d, rows)
//   values  O[d][rows] = O[d][rows] * alpha + sum over keys of bcast(V[key][d]) * P[key][rows]: 6 dims x 16 rows
//           in 12 registers
// Every row runs the same operations over the same key blocks (0, KB, 2 KB, ...) whatever its tile or piece;
// keys past its position add exact zeros (exp_neg of the lowest float) and rescale by exactly 1. So a query's
// output does not depend on how its prompt was split into pieces, cached or batched: bit for bit.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>
#include "cpu_prefill_args.h"
#include "cpu_shapes.h"
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define PRISM_PREFILL_FP32 1
#include "cpu_simd_avx2.h"
#endif

namespace {

#ifdef PRISM_PREFILL_FP32
constexpr int R = 16;   // query rows per tile (two 8-lane groups)
constexpr int KT = 6;   // keys per scores micro-tile
constexpr int SUB = 4;  // tiles per task, sharing each packed block of keys
// Keys per online-softmax block, whole micro-tiles: 48 at head dim 64, 24 at 128, so that a block's packed V
// rows (~12 KiB), O and P stay in a 32 KiB L1 while the values pass runs over them once per 6 dims.
template <int D>
constexpr int KB = 3072 / D / KT * KT;
using prism_avx2::exp_neg;

// S[a .. a + KT) of the block: scaled scores, keys past a row's position set to the lowest float.
template <int D>
inline void scores(const float (*qp)[R], const float (*kb)[D], int64_t key0, __m256i pos0, __m256i pos1,
                   __m256 sc, float (*s)[R]) {
  const __m256 lowest = _mm256_set1_ps(std::numeric_limits<float>::lowest());
  __m256 acc[KT][2];
  for (int x = 0; x < KT; ++x) acc[x][0] = acc[x][1] = _mm256_setzero_ps();
  for (int d = 0; d < D; ++d) {
    const __m256 q0 = _mm256_load_ps(qp[d]), q1 = _mm256_load_ps(qp[d] + 8);
    for (int x = 0; x < KT; ++x) {
      const __m256 k = _mm256_broadcast_ss(kb[x] + d);
      acc[x][0] = _mm256_fmadd_ps(k, q0, acc[x][0]);
      acc[x][1] = _mm256_fmadd_ps(k, q1, acc[x][1]);
    }
  }
  for (int x = 0; x < KT; ++x) {
    const __m256i key = _mm256_set1_epi32(int32_t(key0 + x));
    const __m256 past0 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(key, pos0));
    const __m256 past1 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(key, pos1));
    _mm256_store_ps(s[x], _mm256_blendv_ps(_mm256_mul_ps(acc[x][0], sc), lowest, past0));
    _mm256_store_ps(s[x] + 8, _mm256_blendv_ps(_mm256_mul_ps(acc[x][1], sc), lowest, past1));
  }
}

// O[d0 .. d0 + 6) = O * alpha + P . V over the block's kn keys: 12 sums (for the FMAs' latency), the two P
// vectors and a broadcast. NOTE: named sums, not an array: GCC kept an array of them in registers and on the
// stack at once, storing every sum after every FMA (2.6x the scores' time for as many FMAs).
template <int DP>
inline void values(const float (*p)[R], const float (*vb)[DP], int64_t kn, int d0, __m256 alpha0, __m256 alpha1,
                   float (*o)[R]) {
  float(*od)[R] = o + d0;
  __m256 a0 = _mm256_mul_ps(_mm256_load_ps(od[0]), alpha0), b0 = _mm256_mul_ps(_mm256_load_ps(od[0] + 8), alpha1);
  __m256 a1 = _mm256_mul_ps(_mm256_load_ps(od[1]), alpha0), b1 = _mm256_mul_ps(_mm256_load_ps(od[1] + 8), alpha1);
  __m256 a2 = _mm256_mul_ps(_mm256_load_ps(od[2]), alpha0), b2 = _mm256_mul_ps(_mm256_load_ps(od[2] + 8), alpha1);
  __m256 a3 = _mm256_mul_ps(_mm256_load_ps(od[3]), alpha0), b3 = _mm256_mul_ps(_mm256_load_ps(od[3] + 8), alpha1);
  __m256 a4 = _mm256_mul_ps(_mm256_load_ps(od[4]), alpha0), b4 = _mm256_mul_ps(_mm256_load_ps(od[4] + 8), alpha1);
  __m256 a5 = _mm256_mul_ps(_mm256_load_ps(od[5]), alpha0), b5 = _mm256_mul_ps(_mm256_load_ps(od[5] + 8), alpha1);
  for (int64_t x = 0; x < kn; ++x) {
    __m256 p0 = _mm256_load_ps(p[x]), p1 = _mm256_load_ps(p[x] + 8);
    asm("" : "+x"(p0), "+x"(p1));  // NOTE: kept in registers; GCC folded them into every FMA (12 loads)
    const float* v = vb[x] + d0;
    __m256 w = _mm256_broadcast_ss(v);
    a0 = _mm256_fmadd_ps(w, p0, a0);
    b0 = _mm256_fmadd_ps(w, p1, b0);
    w = _mm256_broadcast_ss(v + 1);
    a1 = _mm256_fmadd_ps(w, p0, a1);
    b1 = _mm256_fmadd_ps(w, p1, b1);
    w = _mm256_broadcast_ss(v + 2);
    a2 = _mm256_fmadd_ps(w, p0, a2);
    b2 = _mm256_fmadd_ps(w, p1, b2);
    w = _mm256_broadcast_ss(v + 3);
    a3 = _mm256_fmadd_ps(w, p0, a3);
    b3 = _mm256_fmadd_ps(w, p1, b3);
    w = _mm256_broadcast_ss(v + 4);
    a4 = _mm256_fmadd_ps(w, p0, a4);
    b4 = _mm256_fmadd_ps(w, p1, b4);
    w = _mm256_broadcast_ss(v + 5);
    a5 = _mm256_fmadd_ps(w, p0, a5);
    b5 = _mm256_fmadd_ps(w, p1, b5);
  }
  const __m256 sums[12] = {a0, b0, a1, b1, a2, b2, a3, b3, a4, b4, a5, b5};
  for (int y = 0; y < 6; ++y) {
    _mm256_store_ps(od[y], sums[2 * y]);
    _mm256_store_ps(od[y] + 8, sums[2 * y + 1]);
  }
}

// Head dims padded to whole values micro-tiles (66 of 64, 132 of 128): the values pass runs 6 dims at a time.
template <int D>
constexpr int DP = (D + 5) / 6 * 6;

// One tile's queries and running state: rows r = head j * T + position t (T = R / G positions from the piece's
// query t0), row (j, t) seeing keys 0 .. start + t0 + t.
template <int D>
struct Tile {
  alignas(32) float qp[D][R];     // Q as (d, rows)
  alignas(32) float o[DP<D>][R];  // unnormalized O as (d, rows); the padded dims are never stored
  __m256i pos0, pos1;             // each row's position; padded rows repeat the last real one
  __m256 m0, m1, l0, l1;          // running max and sum of exp per row
  int64_t t0, rows, keys;         // first position, real positions, keys its last row sees
};

template <int G, int D>
void load_tile(Tile<D>& w, const float* q, int64_t h, int64_t kh, int64_t q_len, int64_t start, int64_t t0) {
  constexpr int T = R / G;
  alignas(32) int32_t pos[R];
  w.t0 = t0;
  w.rows = std::min<int64_t>(T, q_len - t0);
  w.keys = start + t0 + w.rows;
  for (int r = 0; r < R; ++r) {
    const auto [j, t, real] = prism_prefill::tile_row<G, R>(r, w.rows);
    pos[r] = int32_t(start + t0 + std::min<int64_t>(t, w.rows - 1));
    const float* qr = q + ((t0 + t) * h + kh * G + j) * D;
    for (int d = 0; d < D; ++d) w.qp[d][r] = real ? qr[d] : 0.f;
  }
  std::memset(w.o, 0, sizeof(w.o));
  w.pos0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(pos));
  w.pos1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(pos + 8));
  w.m0 = w.m1 = _mm256_set1_ps(std::numeric_limits<float>::lowest());
  w.l0 = w.l1 = _mm256_setzero_ps();
}

// The block of keys from k0 (packed in kb / vb) into one tile: scores, the online softmax (the new running max,
// the sums and O rescaled by exp(old - new), P = exp(S - max)), then O += P . V. A tile whose rows all sit
// before k0 has nothing there.
template <int D>
void attend_block(Tile<D>& w, const float (*kb)[D], const float (*vb)[DP<D>], int64_t k0, __m256 sc,
                  float (*s)[R]) {
  const int64_t kn = std::min<int64_t>(KB<D>, w.keys - k0);
  if (kn <= 0) return;
  const int64_t kp = (kn + KT - 1) / KT * KT;  // scored keys: whole micro-tiles, those past kn masked
  for (int64_t a = 0; a < kp; a += KT) scores<D>(w.qp, kb + a, k0 + a, w.pos0, w.pos1, sc, s + a);
  __m256 b0 = w.m0, b1 = w.m1;
  for (int64_t x = 0; x < kp; ++x) {
    b0 = _mm256_max_ps(b0, _mm256_load_ps(s[x]));
    b1 = _mm256_max_ps(b1, _mm256_load_ps(s[x] + 8));
  }
  const __m256 alpha0 = exp_neg(_mm256_sub_ps(w.m0, b0)), alpha1 = exp_neg(_mm256_sub_ps(w.m1, b1));
  w.m0 = b0;
  w.m1 = b1;
  __m256 l0 = _mm256_mul_ps(w.l0, alpha0), l1 = _mm256_mul_ps(w.l1, alpha1);
  for (int64_t x = 0; x < kn; ++x) {
    const __m256 e0 = exp_neg(_mm256_sub_ps(_mm256_load_ps(s[x]), b0));
    const __m256 e1 = exp_neg(_mm256_sub_ps(_mm256_load_ps(s[x] + 8), b1));
    l0 = _mm256_add_ps(l0, e0);
    l1 = _mm256_add_ps(l1, e1);
    _mm256_store_ps(s[x], e0);
    _mm256_store_ps(s[x] + 8, e1);
  }
  w.l0 = l0;
  w.l1 = l1;
  for (int d0 = 0; d0 < D; d0 += 6) values<DP<D>>(s, vb, kn, d0, alpha0, alpha1, w.o);
}

template <int G, int D>
void store_tile(const Tile<D>& w, int64_t h, int64_t kh, float* out) {
  alignas(32) float inv[R];
  _mm256_store_ps(inv, _mm256_div_ps(_mm256_set1_ps(1.f), w.l0));
  _mm256_store_ps(inv + 8, _mm256_div_ps(_mm256_set1_ps(1.f), w.l1));
  for (int r = 0; r < R; ++r) {
    const auto [j, t, real] = prism_prefill::tile_row<G, R>(r, w.rows);
    if (!real) continue;
    float* orow = out + ((w.t0 + t) * h + kh * G + j) * D;
    for (int d = 0; d < D; ++d) orow[d] = w.o[d][r] * inv[r];
  }
}

// Up to SUB consecutive tiles of one piece from position t0 (start = the context position of the piece's first
// query), over each block of keys in turn: the block's K and V rows are packed once for all of them.
template <int G, int D>
void task(const float* q, const float* kc, const float* vc, const int32_t* table, int64_t bs, int64_t row,
          int64_t h, int64_t kh, int64_t q_len, int64_t start, int64_t t0, float scale, float* out) {
  constexpr int T = R / G;
  Tile<D> tiles[SUB];
  const int count = int(std::min<int64_t>(SUB, (q_len - t0 + T - 1) / T));
  for (int i = 0; i < count; ++i) load_tile<G, D>(tiles[i], q, h, kh, q_len, start, t0 + i * T);
  // NOTE: packed, since in the pool a KV head's rows sit hk x D values apart (4 KiB for 8 heads of 128: each
  // row on a page of its own, all in one L1 set).
  alignas(32) float kb[KB<D>][D];
  alignas(32) float vb[KB<D>][DP<D>];  // its padded dims zero
  alignas(32) float s[KB<D>][R];
  std::memset(vb, 0, sizeof(vb));
  const __m256 sc = _mm256_set1_ps(scale);
  const int64_t keys = tiles[count - 1].keys;  // the last tile's last row sees the most
  for (int64_t k0 = 0; k0 < keys; k0 += KB<D>) {
    const int64_t kp = (std::min<int64_t>(KB<D>, keys - k0) + KT - 1) / KT * KT;
    for (int64_t x = 0, blk = k0 / bs, off = k0 % bs; x < kp; ++x) {  // no division per key
      const int64_t at = (int64_t(table[blk]) * bs + off) * row + kh * D;
      std::memcpy(kb[x], kc + at, sizeof(kb[x]));
      std::memcpy(vb[x], vc + at, D * sizeof(float));
      if (k0 + x + 1 < keys && ++off == bs) {  // keys past the context repeat the last one's row
        off = 0;
        ++blk;
      }
    }
    for (int i = 0; i < count; ++i) attend_block<D>(tiles[i], kb, vb, k0, sc, s);
  }
  for (int i = 0; i < count; ++i) store_tile<G, D>(tiles[i], h, kh, out);
}

template <int G, int D>
void prefill_fp32(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& tables,
                  const at::Tensor& cu, const at::Tensor& seqlens, double scale, at::Tensor& out) {
  constexpr int T = R / G;
  const int64_t b = seqlens.size(0), h = q.size(1), bs = kc.size(1), hk = kc.size(2), mb = tables.size(1);
  const float* qp = q.data_ptr<float>();
  const float* kp = kc.data_ptr<float>();
  const float* vp = vc.data_ptr<float>();
  const int32_t* tp = tables.data_ptr<int32_t>();
  const int32_t* cp = cu.data_ptr<int32_t>();
  const int32_t* lp = seqlens.data_ptr<int32_t>();
  float* op = out.data_ptr<float>();
  std::vector<int64_t> toff(b + 1, 0);  // tasks per (request, KV head, SUB tiles)
  for (int64_t i = 0; i < b; ++i) toff[i + 1] = toff[i] + (cp[i + 1] - cp[i] + SUB * T - 1) / (SUB * T) * hk;
  prism_prefill::each_task(toff, [&](int64_t i, int64_t local) {
    const int64_t q_len = cp[i + 1] - cp[i], kh = local % hk, t0 = local / hk * SUB * T;
    task<G, D>(qp + cp[i] * h * D, kp, vp, tp + i * mb, bs, hk * D, h, kh, q_len, lp[i] - q_len, t0, float(scale),
               op + cp[i] * h * D);
  });
}
#endif

// Whether the compiled path takes (group, head dim) in fp32.
bool paged_prefill_fp32_supported(int64_t group, int64_t dim) {
#ifdef PRISM_PREFILL_FP32
  return prism_shape::compiled(group, dim);
#else
  (void)group;
  (void)dim;
  return false;
#endif
}

void paged_prefill_fp32(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& tables,
                        const at::Tensor& cu, const at::Tensor& seqlens, double scale, at::Tensor out) {
  const prism_prefill::Args a =
      prism_prefill::check("paged_prefill_fp32", q, kc, vc, tables, cu, seqlens, out, at::kFloat);
  const int64_t g = a.group, d = a.dim;
  TORCH_CHECK(paged_prefill_fp32_supported(g, d), "paged_prefill_fp32: not compiled for group ", g, ", head dim ",
              d);
#ifdef PRISM_PREFILL_FP32
  prism_shape::dispatch(g, d, [&](auto G, auto D) {
    prefill_fp32<decltype(G)::value, decltype(D)::value>(q, kc, vc, a.tables, a.cu, a.seqlens, scale, out);
  });
#endif
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(prism_kernels, m) {
  m.def("paged_prefill_fp32(Tensor q, Tensor key_cache, Tensor value_cache, Tensor block_tables, Tensor cu_seqlens_q, Tensor seqlens_k, float scale, Tensor(a!) out) -> ()");
  m.def("paged_prefill_fp32_supported(int group, int dim) -> bool", &paged_prefill_fp32_supported);
}
TORCH_LIBRARY_IMPL(prism_kernels, CPU, m) { m.impl("paged_prefill_fp32", &paged_prefill_fp32); }
