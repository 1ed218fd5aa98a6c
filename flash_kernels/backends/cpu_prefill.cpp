// Paged varlen prefill attention for CPUs with AVX512-BF16 (bf16 only): every prompt piece of a step against its
// context (cached prefix + itself, causal aligned bottom-right), read in place through the block table. Built with
// cpu_decode.cpp into one extension (flash_kernels/backends/cpu_decode.py); contract: AttentionBackend.prefill's.
//
//   q (n, h, d) | key_cache, value_cache (nb, bs, hk, d) | block_tables (b, mb) int32 | cu_seqlens_q (b + 1,)
//   int32 | seqlens_k (b,) int32 | out (n, h, d); bf16, contiguous; query j of request i sits at context position
//   seqlens_k[i] - q_len_i + j and sees keys 0..that position. Query head x reads KV head x / (h / hk).
//
// One task per (request, KV head, tile of 32 query rows: 32 / G positions x the G query heads of the KV head),
// split over torch's intra-op threads. Rows sit in the vector lanes throughout (two 16-lane groups), so the
// online softmax's per-row max / sum / rescale are plain vector ops:
//   scores  S[key][rows] = sum over d pairs of bcast(K[key][2c, 2c + 1]) . Qp[c][rows]  (vdpbf16ps, fp32 sums;
//           K read in place, Q packed once per tile as (d / 2, rows) pairs)
//   values  O[d][rows] += sum over key pairs of bcast(Vp[j][d]) . Pp[j][rows]  (P rounded to bf16, as torch's CPU
//           flash kernel does; V packed once per (request, KV head) as (key pair, d) pairs)
// torch's flash kernel for CPUs runs these shapes at ~70 GFLOP/s on this model's head dim 64 and computes whole
// 512-key blocks under a causal mask (a 529-token piece over itself costs as much as over 512 cached keys).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <c10/util/BFloat16.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>
#include "cpu_prefill_args.h"
#include "cpu_shapes.h"
#if defined(__AVX512F__) && defined(__AVX512BF16__) && defined(__AVX512BW__)
#include <immintrin.h>
#define PRISM_PREFILL_BF16 1
#include "cpu_simd.h"
#endif

namespace {

#ifdef PRISM_PREFILL_BF16
constexpr int R = 32;   // query rows per tile (two 16-lane groups)
constexpr int KB = 64;  // keys per online-softmax block
constexpr int KT = 8;   // keys per scores micro-tile
constexpr int DT = 8;   // head dims per values micro-tile
using prism_simd::exp_neg;

inline uint32_t word(const c10::BFloat16* p) {  // two adjacent bf16 as one 32-bit lane
  uint32_t w;
  std::memcpy(&w, p, 4);
  return w;
}

// V of one (request, KV head) as (key pair j, d) 32-bit words: V[2j][d] in the low half, V[2j + 1][d] (0 past
// the context) in the high half, the layout vdpbf16ps pairs with Pp.
template <int D>
void pack_values(const c10::BFloat16* vc, const int32_t* table, int64_t len, int64_t bs, int64_t row, int64_t kh,
                 uint32_t* out) {
  for (int64_t j = 0; 2 * j < len; ++j) {
    const int64_t p = 2 * j;
    const uint16_t* a = reinterpret_cast<const uint16_t*>(vc + (table[p / bs] * bs + p % bs) * row + kh * D);
    const uint16_t* b = p + 1 < len
        ? reinterpret_cast<const uint16_t*>(vc + (table[(p + 1) / bs] * bs + (p + 1) % bs) * row + kh * D)
        : nullptr;
    uint32_t* o = out + j * D;
    for (int d = 0; d < D; ++d) o[d] = uint32_t(a[d]) | (b ? uint32_t(b[d]) << 16 : 0u);
  }
}

// One tile of one piece: rows r = head j * T + position t (T = R / G positions from the piece's query t0);
// start = the context position of the piece's first query, so row (j, t) sees keys 0 .. start + t0 + t.
template <int G, int D>
void tile(const c10::BFloat16* q, const c10::BFloat16* kc, const uint32_t* vp, const int32_t* table, int64_t bs,
          int64_t row, int64_t h, int64_t kh, int64_t q_len, int64_t start, int64_t t0, float scale,
          c10::BFloat16* out) {
  constexpr int T = R / G, C = D / 2;
  alignas(64) uint32_t qp[C][R];
  alignas(64) float s[KB][R];
  alignas(64) uint32_t pp[KB / 2][R];
  alignas(64) float o[D][R];
  alignas(64) int32_t pos[R];
  const int64_t rows = std::min<int64_t>(T, q_len - t0);
  for (int r = 0; r < R; ++r) {
    const auto [j, t, real] = prism_prefill::tile_row<G, R>(r, rows);
    pos[r] = int32_t(start + t0 + std::min<int64_t>(t, rows - 1));  // padded rows repeat the last position
    const c10::BFloat16* qr = q + ((t0 + t) * h + kh * G + j) * D;
    for (int c = 0; c < C; ++c) qp[c][r] = real ? word(qr + 2 * c) : 0u;
  }
  std::memset(o, 0, sizeof(o));
  const __m512i pos0 = _mm512_load_si512(pos), pos1 = _mm512_load_si512(pos + 16);
  const __m512 lowest = _mm512_set1_ps(std::numeric_limits<float>::lowest()), sc = _mm512_set1_ps(scale);
  __m512 m0 = lowest, m1 = lowest, l0 = _mm512_setzero_ps(), l1 = _mm512_setzero_ps();
  const int64_t keys = start + t0 + rows;  // the last row sees keys 0 .. keys - 1
  const __m512i ilv = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                       21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  for (int64_t k0 = 0; k0 < keys; k0 += KB) {
    const int64_t kn = std::min<int64_t>(KB, keys - k0);
    // scores of KB keys (keys past the last row's position masked below, their loads clamped)
    for (int64_t a = 0; a < kn; a += KT) {
      const c10::BFloat16* kr[KT];
      for (int x = 0; x < KT; ++x) {
        const int64_t p = std::min<int64_t>(k0 + a + x, keys - 1);
        kr[x] = kc + (table[p / bs] * bs + p % bs) * row + kh * D;
      }
      __m512 acc[KT][2];
      for (int x = 0; x < KT; ++x) acc[x][0] = acc[x][1] = _mm512_setzero_ps();
      for (int c = 0; c < C; ++c) {
        const __m512bh q0 = (__m512bh)_mm512_load_si512(qp[c]), q1 = (__m512bh)_mm512_load_si512(qp[c] + 16);
        for (int x = 0; x < KT; ++x) {
          const __m512bh kb = (__m512bh)_mm512_set1_epi32(int32_t(word(kr[x] + 2 * c)));
          acc[x][0] = _mm512_dpbf16_ps(acc[x][0], kb, q0);
          acc[x][1] = _mm512_dpbf16_ps(acc[x][1], kb, q1);
        }
      }
      for (int x = 0; x < KT; ++x) {
        const __m512i key = _mm512_set1_epi32(int32_t(k0 + a + x));
        _mm512_store_ps(s[a + x], _mm512_mask_mov_ps(_mm512_mul_ps(acc[x][0], sc),
                                                     _mm512_cmpgt_epi32_mask(key, pos0), lowest));
        _mm512_store_ps(s[a + x] + 16, _mm512_mask_mov_ps(_mm512_mul_ps(acc[x][1], sc),
                                                          _mm512_cmpgt_epi32_mask(key, pos1), lowest));
      }
    }
    const int64_t kp = (kn + KT - 1) / KT * KT;  // scored keys (a whole micro-tile past kn, all masked)
    // online softmax: new running max, rescale of the sums and of O, P = exp(S - max)
    __m512 b0 = m0, b1 = m1;
    for (int64_t x = 0; x < kp; ++x) {
      b0 = _mm512_max_ps(b0, _mm512_load_ps(s[x]));
      b1 = _mm512_max_ps(b1, _mm512_load_ps(s[x] + 16));
    }
    const __m512 alpha0 = exp_neg(_mm512_sub_ps(m0, b0)), alpha1 = exp_neg(_mm512_sub_ps(m1, b1));
    m0 = b0;
    m1 = b1;
    l0 = _mm512_mul_ps(l0, alpha0);
    l1 = _mm512_mul_ps(l1, alpha1);
    for (int64_t x = 0; x < kp; x += 2) {
      const __m512 e0 = exp_neg(_mm512_sub_ps(_mm512_load_ps(s[x]), m0));
      const __m512 f0 = exp_neg(_mm512_sub_ps(_mm512_load_ps(s[x + 1]), m0));
      const __m512 g0 = exp_neg(_mm512_sub_ps(_mm512_load_ps(s[x] + 16), m1));
      const __m512 g1 = exp_neg(_mm512_sub_ps(_mm512_load_ps(s[x + 1] + 16), m1));
      l0 = _mm512_add_ps(l0, _mm512_add_ps(e0, f0));
      l1 = _mm512_add_ps(l1, _mm512_add_ps(g0, g1));
      // (P[x][r], P[x + 1][r]) as one 32-bit lane per row, P[x] in the low half
      _mm512_store_si512(pp[x / 2], _mm512_permutexvar_epi16(ilv, (__m512i)_mm512_cvtne2ps_pbh(f0, e0)));
      _mm512_store_si512(pp[x / 2] + 16, _mm512_permutexvar_epi16(ilv, (__m512i)_mm512_cvtne2ps_pbh(g1, g0)));
    }
    // O = O * alpha + P . V over the block's key pairs
    const int64_t pairs = (kn + 1) / 2;
    const uint32_t* vb = vp + (k0 / 2) * D;
    for (int d0 = 0; d0 < D; d0 += DT) {
      __m512 acc[DT][2];
      for (int y = 0; y < DT; ++y) {
        acc[y][0] = _mm512_mul_ps(_mm512_load_ps(o[d0 + y]), alpha0);
        acc[y][1] = _mm512_mul_ps(_mm512_load_ps(o[d0 + y] + 16), alpha1);
      }
      for (int64_t j = 0; j < pairs; ++j) {
        const __m512bh p0 = (__m512bh)_mm512_load_si512(pp[j]), p1 = (__m512bh)_mm512_load_si512(pp[j] + 16);
        for (int y = 0; y < DT; ++y) {
          const __m512bh vv = (__m512bh)_mm512_set1_epi32(int32_t(vb[j * D + d0 + y]));
          acc[y][0] = _mm512_dpbf16_ps(acc[y][0], vv, p0);
          acc[y][1] = _mm512_dpbf16_ps(acc[y][1], vv, p1);
        }
      }
      for (int y = 0; y < DT; ++y) {
        _mm512_store_ps(o[d0 + y], acc[y][0]);
        _mm512_store_ps(o[d0 + y] + 16, acc[y][1]);
      }
    }
  }
  alignas(64) float inv[R];
  _mm512_store_ps(inv, _mm512_div_ps(_mm512_set1_ps(1.f), l0));
  _mm512_store_ps(inv + 16, _mm512_div_ps(_mm512_set1_ps(1.f), l1));
  for (int r = 0; r < R; ++r) {
    const auto [j, t, real] = prism_prefill::tile_row<G, R>(r, rows);
    if (!real) continue;
    c10::BFloat16* orow = out + ((t0 + t) * h + kh * G + j) * D;
    for (int d = 0; d < D; ++d) orow[d] = c10::BFloat16(o[d][r] * inv[r]);
  }
}

template <int G, int D>
void prefill_bf16(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& tables,
                  const at::Tensor& cu, const at::Tensor& seqlens, double scale, at::Tensor& out) {
  constexpr int T = R / G;
  const int64_t b = seqlens.size(0), h = q.size(1), bs = kc.size(1), hk = kc.size(2), mb = tables.size(1);
  const auto* qp = q.data_ptr<c10::BFloat16>();
  const auto* kp = kc.data_ptr<c10::BFloat16>();
  const auto* vcp = vc.data_ptr<c10::BFloat16>();
  const int32_t* tp = tables.data_ptr<int32_t>();
  const int32_t* cp = cu.data_ptr<int32_t>();
  const int32_t* lp = seqlens.data_ptr<int32_t>();
  auto* op = out.data_ptr<c10::BFloat16>();
  const int64_t row = hk * D;
  // V packed per (request, KV head); tasks per (request, KV head, tile)
  std::vector<int64_t> voff(b + 1, 0), toff(b + 1, 0);
  for (int64_t i = 0; i < b; ++i) {
    voff[i + 1] = voff[i] + (lp[i] + 1) / 2 * D * hk;
    toff[i + 1] = toff[i] + (cp[i + 1] - cp[i] + T - 1) / T * hk;
  }
  std::vector<uint32_t> vpack(std::max<int64_t>(voff[b], 1));
  at::parallel_for(0, b * hk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t i = idx / hk, kh = idx % hk;
      if (cp[i + 1] == cp[i]) continue;  // no queries this step: its values are not read
      pack_values<D>(vcp, tp + i * mb, lp[i], bs, row, kh, vpack.data() + voff[i] + kh * ((lp[i] + 1) / 2) * D);
    }
  });
  prism_prefill::each_task(toff, [&](int64_t i, int64_t local) {
    const int64_t q_len = cp[i + 1] - cp[i], kh = local % hk, t0 = local / hk * T;
    tile<G, D>(qp + cp[i] * h * D, kp, vpack.data() + voff[i] + kh * ((lp[i] + 1) / 2) * D, tp + i * mb, bs,
               row, h, kh, q_len, lp[i] - q_len, t0, float(scale), op + cp[i] * h * D);
  });
}
#endif

// Whether the compiled path takes (group, head dim) in bf16.
bool paged_prefill_supported(int64_t group, int64_t dim) {
#ifdef PRISM_PREFILL_BF16
  return prism_shape::compiled(group, dim);
#else
  (void)group;
  (void)dim;
  return false;
#endif
}

void paged_prefill(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& tables,
                   const at::Tensor& cu, const at::Tensor& seqlens, double scale, at::Tensor out) {
  const prism_prefill::Args a = prism_prefill::check("paged_prefill", q, kc, vc, tables, cu, seqlens, out);
  const int64_t g = a.group, d = a.dim;
  TORCH_CHECK(paged_prefill_supported(g, d), "paged_prefill: not compiled for group ", g, ", head dim ", d);
#ifdef PRISM_PREFILL_BF16
  prism_shape::dispatch(g, d, [&](auto G, auto D) {
    prefill_bf16<decltype(G)::value, decltype(D)::value>(q, kc, vc, a.tables, a.cu, a.seqlens, scale, out);
  });
#endif
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(prism_kernels, m) {
  m.def("paged_prefill(Tensor q, Tensor key_cache, Tensor value_cache, Tensor block_tables, Tensor cu_seqlens_q, Tensor seqlens_k, float scale, Tensor(a!) out) -> ()");
  m.def("paged_prefill_supported(int group, int dim) -> bool", &paged_prefill_supported);
}
TORCH_LIBRARY_IMPL(prism_kernels, CPU, m) { m.impl("paged_prefill", &paged_prefill); }
