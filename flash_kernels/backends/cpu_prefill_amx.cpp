// Paged varlen prefill attention on Intel AMX tiles (bf16): the contract of cpu_prefill.cpp's paged_prefill (the
// same arguments, checks and results up to fp32 summation order), for CPUs with AMX-BF16. Built with
// cpu_decode.cpp into one extension (flash_kernels/backends/cpu_decode.py).
//
// One task per (request, KV head, tile of 16 query rows: 16 / G positions x the G query heads of the KV head, the
// rest padding), handed out dynamically over torch's intra-op threads. Rows sit in the 16 vector lanes, as in
// cpu_prefill.cpp, so the online softmax's per-row max / sum / rescale are plain vector ops; the two products run on
// tiles with the rows as the tiles' columns:
//   scores  S[key][row] (16 keys x 16 rows per C tile) = K[key][d] (A: 16 cache rows read in place, or from a
//           copy per (request, KV head) where cache rows lie far apart: Keys) .
//           Qp[d pair][row] (B: the tile's queries packed once as (d / 2, 16) pairs)
//   values  O[d][row] (16 dims x 16 rows) += Vt[d][key] (A: V packed once per (request, KV head) as (d, keys))
//           . Pp[key pair][row] (B: P rounded to bf16, as torch's CPU flash kernel does)
// Keys go in blocks of KB; a block's products accumulate in fresh tiles and O is rescaled in vector registers.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>
#include <c10/util/BFloat16.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>
#include "cpu_prefill_args.h"
#include "cpu_shapes.h"
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && defined(__AVX512BW__)
#define PRISM_PREFILL_AMX 1
#include "cpu_amx.h"
#endif

namespace {

using bf16 = c10::BFloat16;

#ifdef PRISM_PREFILL_AMX
constexpr int R = 16;   // query rows per task (the C tiles' 16 columns)
constexpr int KB = 64;  // keys per online-softmax block (four score tiles)

// 2^x for x <= 0 (scores in log2 units minus their max): 2^round(x) times a degree-5 polynomial of the rest
// (relative error about 3e-6, far below P's bf16 rounding); the lowest float gives 0. Fewer operations than
// cpu_simd.h's exp_neg, whose range reduction by ln 2 it does not need.
inline __m512 exp2_nonpos(__m512 x) {
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_sub_ps(x, n);  // [-0.5, 0.5]
  __m512 p = _mm512_set1_ps(1.3333558146e-3f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.6181291076e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.5504108665e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(2.4022650696e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(6.9314718056e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Row stride (bf16) of a context of len keys in V^T: a whole number of KB-key blocks (a block's last 32-key A
// tile stays inside), plus 32 so that a tile's 16 rows are not 4 KB apart (rows a multiple of 4 KB apart share
// an L1 set, and 16 of them missed the cache in turn).
inline int64_t vt_width(int64_t len) { return round_up(std::max<int64_t>(len, 1), KB) + 32; }

// 16 x 16 bf16 transpose: a[i] holds row i (16 values) -> out row j (at out + j * ld) holds a[0..15][j]. Four
// rounds of interleaving (16-, 32-, 64-bit, then 128-bit lanes), rows i and i + 8 sharing a register.
inline void transpose16(const __m256i (&a)[16], bf16* out, int64_t ld) {
  __m512i z[8], u[8], v[8];
  for (int i = 0; i < 8; ++i) z[i] = _mm512_inserti64x4(_mm512_castsi256_si512(a[i]), a[i + 8], 1);
  for (int i = 0; i < 8; i += 2) {
    u[i] = _mm512_unpacklo_epi16(z[i], z[i + 1]);
    u[i + 1] = _mm512_unpackhi_epi16(z[i], z[i + 1]);
  }
  for (int h = 0; h < 8; h += 4) {  // rows 0-3 / 8-11, then 4-7 / 12-15
    v[h] = _mm512_unpacklo_epi32(u[h], u[h + 2]);
    v[h + 1] = _mm512_unpackhi_epi32(u[h], u[h + 2]);
    v[h + 2] = _mm512_unpacklo_epi32(u[h + 1], u[h + 3]);
    v[h + 3] = _mm512_unpackhi_epi32(u[h + 1], u[h + 3]);
  }
  for (int m = 0; m < 4; ++m) {  // columns 2m, 2m + 1 (and + 8) of all 16 rows
    for (int k = 0; k < 2; ++k) {
      const __m512i w = k == 0 ? _mm512_unpacklo_epi64(v[m], v[m + 4]) : _mm512_unpackhi_epi64(v[m], v[m + 4]);
      const __m512i o = _mm512_shuffle_i32x4(w, w, 0xD8);  // lanes 0, 2 | 1, 3: column c | column c + 8
      const int c = 2 * m + k;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c * ld), _mm512_castsi512_si256(o));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (c + 8) * ld), _mm512_extracti64x4_epi64(o, 1));
    }
  }
}

// V of one (request, KV head) transposed: (D, lp) bf16, row d holding V[0..len)[d], zeros past len (lp: see
// vt_width), 16 keys x 16 dims at a time.
template <int D>
void pack_values_t(const bf16* vc, const int32_t* table, int64_t len, int64_t lp, int64_t bs, int64_t row,
                   int64_t kh, bf16* out) {
  alignas(32) static const bf16 zeros[D] = {};
  const int64_t full = round_up(len, 16);
  for (int d = 0; d < D; ++d) std::memset(out + d * lp + full, 0, (lp - full) * sizeof(bf16));
  for (int64_t k0 = 0; k0 < len; k0 += 16) {
    const bf16* rows[16];
    for (int i = 0; i < 16; ++i) {
      const int64_t p = k0 + i;
      rows[i] = p < len ? vc + (table[p / bs] * bs + p % bs) * row + kh * D : zeros;
    }
    for (int d0 = 0; d0 < D; d0 += 16) {
      __m256i a[16];
      for (int i = 0; i < 16; ++i) a[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[i] + d0));
      transpose16(a, out + d0 * lp + k0, lp);
    }
  }
}

// Row stride (bf16) of packed K: a row's D values plus 32, so that a tile's 16 rows are not 4 KB apart.
template <int D>
constexpr int64_t KS = D + 32;

// Where a (request, KV head)'s K rows are: in the cache, read in place through the block table, or packed
// (pack_keys). Packed when a score tile's 16 rows would not share one cache block, or when cache rows are more
// than 256 bytes apart: then the tiles of a 64-key block fall into a few L1 sets (8 KV heads x d 128: 2 KB
// apart, two sets) and miss the cache in turn; the peer model's 256-byte rows read in place (packing there cost
// more than it saved on many short pieces).
struct Keys {
  const bf16* base;      // the cache's first row plus the head's offset, or the packed rows
  const int32_t* table;  // the request's block table; null: packed
  int64_t bs, stride;    // block size (in place); row stride in bf16
  const bf16* row(int64_t p) const {
    return table ? base + (table[p / bs] * bs + p % bs) * stride : base + p * stride;
  }
};

inline bool pack_keys_wanted(int64_t bs, int64_t row_bytes) { return bs % 16 != 0 || row_bytes > 256; }

// K of one (request, KV head) copied into (lp, KS) rows, zeros past len.
template <int D>
void pack_keys(const bf16* kc, const int32_t* table, int64_t len, int64_t lp, int64_t bs, int64_t row, int64_t kh,
               bf16* out) {
  for (int64_t p = 0; p < len; ++p) {
    std::memcpy(out + p * KS<D>, kc + (table[p / bs] * bs + p % bs) * row + kh * D, D * sizeof(bf16));
  }
  std::memset(out + len * KS<D>, 0, (lp - len) * KS<D> * sizeof(bf16));
}

// Scores of one block, keys [k0, k0 + 16 nt) (nt <= 4 tiles, k0 < keys): S[key][row] fp32 into s (16 nt x 16),
// unscaled; where the block reaches past the first row's position (first_pos), masked (a key past the row's
// position, or past `keys`: the lowest float; rows past `keys` read in place are such). Returns max(mx, each row's
// scores). Tiles: C 0-3, A 4 / 6, B 5 / 7 (alternating, so a load need not wait for the product that read the
// tile before).
template <int D>
__m512 score_block(const Keys& k, int64_t k0, int nt, const uint32_t (*qp)[R], const __m512i pos, int64_t first_pos,
                   float (*s)[R], __m512 mx) {
  const bf16* a[4] = {};
  for (int t = 0; t < nt; ++t) a[t] = k.row(k0 + 16 * t);
  const int64_t lda = k.stride * static_cast<int64_t>(sizeof(bf16));
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int c = 0; c < D / 32; ++c) {
#define PRISM_SCORE(B, T, A) \
  if (nt > T) {                                  \
    _tile_loadd(A, a[T] + 32 * c, lda);          \
    _tile_dpbf16ps(T, A, B);                     \
  }
    if (c % 2 == 0) {
      _tile_loadd(5, qp[16 * c], 64);
      PRISM_SCORE(5, 0, 4) PRISM_SCORE(5, 1, 6) PRISM_SCORE(5, 2, 4) PRISM_SCORE(5, 3, 6)
    } else {
      _tile_loadd(7, qp[16 * c], 64);
      PRISM_SCORE(7, 0, 4) PRISM_SCORE(7, 1, 6) PRISM_SCORE(7, 2, 4) PRISM_SCORE(7, 3, 6)
    }
#undef PRISM_SCORE
  }
  _tile_stored(0, s[0], 64);
  if (nt > 1) _tile_stored(1, s[16], 64);
  if (nt > 2) _tile_stored(2, s[32], 64);
  if (nt > 3) _tile_stored(3, s[48], 64);
  const __m512 lowest = _mm512_set1_ps(std::numeric_limits<float>::lowest());
  __m512 m0 = mx, m1 = lowest;  // two chains: the max's latency, not its throughput, bounds these loops
  if (k0 + 16 * nt - 1 <= first_pos) {  // every row sees every key of the block
    for (int x = 0; x < 16 * nt; x += 2) {
      m0 = _mm512_max_ps(m0, _mm512_load_ps(s[x]));
      m1 = _mm512_max_ps(m1, _mm512_load_ps(s[x + 1]));
    }
    return _mm512_max_ps(m0, m1);
  }
  for (int x = 0; x < 16 * nt; x += 2) {
    const __m512 u = _mm512_mask_mov_ps(_mm512_load_ps(s[x]),
                                        _mm512_cmpgt_epi32_mask(_mm512_set1_epi32(int32_t(k0 + x)), pos), lowest);
    const __m512 w = _mm512_mask_mov_ps(_mm512_load_ps(s[x + 1]),
                                        _mm512_cmpgt_epi32_mask(_mm512_set1_epi32(int32_t(k0 + x + 1)), pos), lowest);
    _mm512_store_ps(s[x], u);
    _mm512_store_ps(s[x + 1], w);
    m0 = _mm512_max_ps(m0, u);
    m1 = _mm512_max_ps(m1, w);
  }
  return _mm512_max_ps(m0, m1);
}

// One task (scale: the softmax scale times log2 e): rows r = head j * T + position t (T = R / G positions from the
// piece's query t0); start = the context position of the piece's first query, so row (j, t) sees keys 0 .. start
// + t0 + t. keys_at: this (request, KV head)'s K; vt: its pack_values_t, lp keys wide. Tiles: 0-3 C, 4 / 6 A, 5 /
// 7 B (configured by the caller).
template <int G, int D>
void task(const bf16* q, const Keys& keys_at, const bf16* vt, int64_t lp, int64_t h, int64_t kh, int64_t q_len,
          int64_t start, int64_t t0, float scale, bf16* out) {
  constexpr int T = R / G, C = D / 2;
  alignas(64) uint32_t qp[C][R];
  alignas(64) float s[KB][R];
  alignas(64) uint32_t pp[KB / 2][R];
  alignas(64) float o[D][R];
  alignas(64) float pv[D][R];
  alignas(64) int32_t pos_r[R];
  const int64_t rows = std::min<int64_t>(T, q_len - t0);
  for (int r = 0; r < R; ++r) {
    const auto [j, t, real] = prism_prefill::tile_row<G, R>(r, rows);
    pos_r[r] = int32_t(start + t0 + std::min<int64_t>(t, rows - 1));  // padded rows repeat the last position
    for (int c = 0; c < C; ++c) {
      uint32_t w = 0;
      if (real) std::memcpy(&w, q + ((t0 + t) * h + kh * G + j) * D + 2 * c, 4);
      qp[c][r] = w;
    }
  }
  std::memset(o, 0, sizeof(o));
  const __m512i pos = _mm512_load_si512(pos_r);
  const __m512 lowest = _mm512_set1_ps(std::numeric_limits<float>::lowest()), sc = _mm512_set1_ps(scale);
  __m512 m = lowest, l = _mm512_setzero_ps();
  const int64_t keys = start + t0 + rows;  // the last row sees keys 0 .. keys - 1
  const __m512i ilv = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                       21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  for (int64_t k0 = 0; k0 < keys; k0 += KB) {
    const int64_t kp = std::min<int64_t>(KB, round_up(keys - k0, 32));  // keys scored: whole 32-key A tiles
    const int nt = int((std::min<int64_t>(KB, keys - k0) + 15) / 16);  // score tiles with a key
    const __m512 b = score_block<D>(keys_at, k0, nt, qp, pos, start + t0, s, m);
    for (int64_t x = 16 * nt; x < kp; ++x) _mm512_store_ps(s[x], lowest);  // the rest of the last A tile
    // P = 2^((S - max) scale): the max of unscaled scores, the scale applied in the exponent's one FMA
    const __m512 alpha = exp2_nonpos(_mm512_mul_ps(_mm512_sub_ps(m, b), sc));
    m = b;
    const __m512 shift = _mm512_mul_ps(m, _mm512_set1_ps(-scale));
    l = _mm512_mul_ps(l, alpha);
    __m512 l1 = _mm512_setzero_ps();
    for (int64_t x = 0; x < kp; x += 2) {
      const __m512 e = exp2_nonpos(_mm512_fmadd_ps(_mm512_load_ps(s[x]), sc, shift));
      const __m512 f = exp2_nonpos(_mm512_fmadd_ps(_mm512_load_ps(s[x + 1]), sc, shift));
      l = _mm512_add_ps(l, e);
      l1 = _mm512_add_ps(l1, f);
      // (P[x][r], P[x + 1][r]) as one 32-bit lane per row, P[x] in the low half
      _mm512_store_si512(pp[x / 2], _mm512_permutexvar_epi16(ilv, (__m512i)_mm512_cvtne2ps_pbh(f, e)));
    }
    l = _mm512_add_ps(l, l1);
    // this block's P . V, 4 C tiles (64 dims) at a time, then O = O * alpha + P . V
    for (int d0 = 0; d0 < D; d0 += 64) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      const int64_t lda = lp * static_cast<int64_t>(sizeof(bf16));
      for (int64_t x = 0; x < kp; x += 32) {
        const bf16* a = vt + d0 * lp + k0 + x;
#define PRISM_VALUES(B)                  \
  _tile_loadd(B, pp[x / 2], 64);         \
  _tile_loadd(4, a, lda);                \
  _tile_dpbf16ps(0, 4, B);               \
  _tile_loadd(6, a + 16 * lp, lda);      \
  _tile_dpbf16ps(1, 6, B);               \
  _tile_loadd(4, a + 32 * lp, lda);      \
  _tile_dpbf16ps(2, 4, B);               \
  _tile_loadd(6, a + 48 * lp, lda);      \
  _tile_dpbf16ps(3, 6, B);
        if (x == 0) {
          PRISM_VALUES(5)
        } else {
          PRISM_VALUES(7)
        }
#undef PRISM_VALUES
      }
      _tile_stored(0, pv[d0], 64);
      _tile_stored(1, pv[d0 + 16], 64);
      _tile_stored(2, pv[d0 + 32], 64);
      _tile_stored(3, pv[d0 + 48], 64);
    }
    for (int d = 0; d < D; ++d) {
      _mm512_store_ps(o[d], _mm512_fmadd_ps(_mm512_load_ps(o[d]), alpha, _mm512_load_ps(pv[d])));
    }
  }
  // O / l rounded to bf16 (as c10's conversion), turned from (d, row) to (row, d), then each real row out
  const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.f), l);
  alignas(64) bf16 rowwise[R][D];
  for (int d0 = 0; d0 < D; d0 += 16) {
    __m256i a[16];
    for (int i = 0; i < 16; ++i) a[i] = (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_load_ps(o[d0 + i]), inv));
    transpose16(a, rowwise[0] + d0, D);
  }
  for (int r = 0; r < R; ++r) {
    const auto [j, t, real] = prism_prefill::tile_row<G, R>(r, rows);
    if (real) std::memcpy(out + ((t0 + t) * h + kh * G + j) * D, rowwise[r], D * sizeof(bf16));
  }
}

template <int G, int D>
void prefill_amx(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, const prism_prefill::Args& args,
                 double scale, at::Tensor& out) {
  constexpr int T = R / G;
  const int64_t b = args.seqlens.size(0), h = q.size(1), bs = kc.size(1), hk = kc.size(2), mb = args.tables.size(1);
  const bf16* qp = q.data_ptr<bf16>();
  const bf16* kp = kc.data_ptr<bf16>();
  const bf16* vcp = vc.data_ptr<bf16>();
  const int32_t* tp = args.tables.data_ptr<int32_t>();
  const int32_t* cp = args.cu.data_ptr<int32_t>();
  const int32_t* lp = args.seqlens.data_ptr<int32_t>();
  bf16* op = out.data_ptr<bf16>();
  const int64_t row = hk * D;
  // V^T packed per (request, KV head); tasks per (request, KV head, tile)
  std::vector<int64_t> width(b), voff(b + 1, 0), toff(b + 1, 0);
  for (int64_t i = 0; i < b; ++i) {
    width[i] = vt_width(lp[i]);
    voff[i + 1] = voff[i] + width[i] * D * hk;
    toff[i + 1] = toff[i] + (cp[i + 1] - cp[i] + T - 1) / T * hk;
  }
  // written by their packs before they are read (K, when packed: width rows of KS per head, the offsets scaled)
  const bool pack_k = pack_keys_wanted(bs, row * static_cast<int64_t>(sizeof(bf16)));
  // torch's allocator: 64-byte aligned, so a tile row is one cache line
  const at::Tensor vbuf = at::empty({std::max<int64_t>(voff[b], 1)}, q.options());
  const at::Tensor kbuf = at::empty({pack_k ? std::max<int64_t>(voff[b] / D * KS<D>, 1) : 1}, q.options());
  bf16* const vpack = vbuf.data_ptr<bf16>();
  bf16* const kpack = kbuf.data_ptr<bf16>();
  const auto packed_keys = [&](int64_t i, int64_t kh) { return kpack + (voff[i] / D + kh * width[i]) * KS<D>; };
  const auto keys_of = [&](int64_t i, int64_t kh) {
    return pack_k ? Keys{packed_keys(i, kh), nullptr, bs, KS<D>} : Keys{kp + kh * D, tp + i * mb, bs, row};
  };
  const auto values_of = [&](int64_t i, int64_t kh) { return vpack + voff[i] + kh * width[i] * D; };
  at::parallel_for(0, b * hk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t i = idx / hk, kh = idx % hk;
      if (cp[i + 1] == cp[i]) continue;  // no queries this step: its keys and values are not read
      if (pack_k) pack_keys<D>(kp, tp + i * mb, lp[i], width[i], bs, row, kh, packed_keys(i, kh));
      pack_values_t<D>(vcp, tp + i * mb, lp[i], width[i], bs, row, kh, values_of(i, kh));
    }
  });
  // NOTE: tasks differ in cost (a causal tile reads every key before its last row), so they are handed out one
  // at a time (dynamic), last tiles of each piece first; a KV head's tiles one after another, so that its K / V
  // stay in cache (with 8 KV heads, every head's at once missed L2).
  const int64_t tasks = toff[b];
  const float scale2 = float(scale * 1.4426950408889634);  // scores in log2 units: P = 2^(S - max)
#pragma omp parallel num_threads(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tasks)))
  {
    prism_amx::configure({16, 16, 16, 16, 16, 16, 16, 16});
#pragma omp for schedule(dynamic, 1)
    for (int64_t tk = 0; tk < tasks; ++tk) {
      const int64_t i = std::upper_bound(toff.begin(), toff.end(), tk) - toff.begin() - 1;
      const int64_t q_len = cp[i + 1] - cp[i], local = toff[i + 1] - 1 - tk;  // last tiles first
      const int64_t tiles = (q_len + T - 1) / T;  // per KV head
      const int64_t kh = local / tiles, t0 = local % tiles * T;
      task<G, D>(qp + cp[i] * h * D, keys_of(i, kh), values_of(i, kh), width[i], h, kh, q_len, lp[i] - q_len, t0,
                 scale2, op + cp[i] * h * D);
    }
    // NOTE: not a bare tile release: torch's brgemm users keep the configuration they last set per thread and
    // skip setting it again; this resets that record too
    at::native::cpublas::brgemm_release();
  }
}
#endif

// Whether paged_prefill_amx runs here for (group, head dim): built with AMX, the OS grants the tile state.
bool paged_prefill_amx_supported(int64_t group, int64_t dim) {
#ifdef PRISM_PREFILL_AMX
  return prism_amx::tiles_permitted() && prism_shape::compiled(group, dim);
#else
  (void)group;
  (void)dim;
  return false;
#endif
}

void paged_prefill_amx(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& tables,
                       const at::Tensor& cu, const at::Tensor& seqlens, double scale, at::Tensor out) {
  const prism_prefill::Args a = prism_prefill::check("paged_prefill_amx", q, kc, vc, tables, cu, seqlens, out);
  const int64_t g = a.group, d = a.dim;
  TORCH_CHECK(paged_prefill_amx_supported(g, d), "paged_prefill_amx: no AMX path for group ", g, ", head dim ", d);
#ifdef PRISM_PREFILL_AMX
  prism_shape::dispatch(g, d, [&](auto G, auto D) {
    prefill_amx<decltype(G)::value, decltype(D)::value>(q, kc, vc, a, scale, out);
  });
#endif
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(prism_kernels, m) {
  m.def("paged_prefill_amx(Tensor q, Tensor key_cache, Tensor value_cache, Tensor block_tables, Tensor cu_seqlens_q, Tensor seqlens_k, float scale, Tensor(a!) out) -> ()");
  m.def("paged_prefill_amx_supported(int group, int dim) -> bool", &paged_prefill_amx_supported);
}
TORCH_LIBRARY_IMPL(prism_kernels, CPU, m) { m.impl("paged_prefill_amx", &paged_prefill_amx); }
