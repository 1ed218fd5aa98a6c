// Paged decode attention on AVX2 + FMA, for fp32 (and bf16) caches: the path of CPUs without AVX512-BF16, and of
// fp32 everywhere. Included by cpu_decode.cpp where the compiler targets AVX2 and FMA; same contract as
// paged_decode (shapes there), head dims 64 / 128 and 1 to 8 query heads per KV head (prism_shape::compiled).
//
// One (request, KV head) task in three passes over its context, 8 keys at a time:
//   scores  s[j][p] = q_j . k_p (q pre-scaled): 8 fp32 partial sums per key over the head dim, the 8 keys'
//           sums reduced by a horizontal-add tree into one vector (key t in lane t); keys past the context
//           set to the lowest float
//   softmax s <- exp(s - row max) (vector polynomial; 0 for the padded keys), row sums
//   values  out_j = sum_p s[j][p] v_p / sum_j, 8 rows at a time (each read from memory once), the head dim
//           split into slices so that at most 8 fp32 sums are live in registers
// K / V rows are prefetched into L1 ahead of use (K two chunks ahead, V one): a block holds few rows, and the
// hardware prefetchers do not follow the block table.
#pragma once
#include <immintrin.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <algorithm>
#include <limits>
#include <vector>
#include "cpu_rows.h"
#include "cpu_simd_avx2.h"

namespace prism_avx2 {

constexpr int KC = 8;  // keys per chunk: one score vector per query row

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::BFloat16* p) {  // bf16 is the high half of an fp32
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

inline void store8(float* p, __m256 x) { _mm256_storeu_ps(p, x); }
inline void store8(c10::BFloat16* p, __m256 x) {  // rounded to nearest even, as c10 does
  alignas(32) float tmp[8];
  _mm256_store_ps(tmp, x);
  for (int t = 0; t < 8; ++t) p[t] = c10::BFloat16(tmp[t]);
}

inline float hsum(__m256 x) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

inline float hmax(__m256 x) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

// Of eight vectors: the totals of their lanes, vector t's in lane t.
inline __m256 sum8(const __m256* a) {
  const __m256 h03 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 h47 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(h03, h47, 0x20), _mm256_permute2f128_ps(h03, h47, 0x31));
}

// The cache lines of the rows at off[from..to) (D elements each; none when from >= to) into L1.
template <typename T, int D>
inline void prefetch(const T* base, const int64_t* off, int64_t from, int64_t to) {
  for (int64_t t = from; t < to; ++t)
    for (int x = 0; x < D * int(sizeof(T)); x += 64)
      _mm_prefetch(reinterpret_cast<const char*>(base + off[t]) + x, _MM_HINT_T0);
}

// s[j * L + p] = qf_j . k_p for p < len rounded up to KC (the lowest float past len); mx[j]: row j's max.
// off: len rounded up to KC row offsets (the padding repeats a real row).
template <typename T, int G, int D>
void scores(const float* qf, const T* k, const int64_t* off, int64_t len, float* s, int64_t L, float* mx) {
  constexpr int C = D / 8;
  const __m256 lowest = _mm256_set1_ps(std::numeric_limits<float>::lowest());
  const __m256 iota = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
  __m256 m[G];
  for (int j = 0; j < G; ++j) m[j] = lowest;
  prefetch<T, D>(k, off, 0, std::min<int64_t>(2 * KC, len));
  for (int64_t p0 = 0; p0 < len; p0 += KC) {
    prefetch<T, D>(k, off, p0 + 2 * KC, std::min<int64_t>(p0 + 3 * KC, len));
    const T* rows[KC];
    for (int t = 0; t < KC; ++t) rows[t] = k + off[p0 + t];
    const __m256 live = _mm256_cmp_ps(iota, _mm256_set1_ps(float(len - p0)), _CMP_LT_OQ);
    for (int j = 0; j < G; ++j) {
      __m256 a[KC];
      for (int t = 0; t < KC; ++t) a[t] = _mm256_setzero_ps();
      for (int c = 0; c < C; ++c) {
        const __m256 qc = _mm256_loadu_ps(qf + j * D + 8 * c);
        for (int t = 0; t < KC; ++t) a[t] = _mm256_fmadd_ps(qc, load8(rows[t] + 8 * c), a[t]);
      }
      const __m256 sj = _mm256_blendv_ps(lowest, sum8(a), live);
      _mm256_storeu_ps(s + j * L + p0, sj);
      m[j] = _mm256_max_ps(m[j], sj);
    }
  }
  for (int j = 0; j < G; ++j) mx[j] = hmax(m[j]);
}

// s <- exp(s - mx[j]) over the first n (a multiple of KC) of each row j; inv[j] = 1 / the row's sum.
template <int G>
void softmax(float* s, int64_t L, int64_t n, const float* mx, float* inv) {
  for (int j = 0; j < G; ++j) {
    const __m256 m = _mm256_set1_ps(mx[j]);
    __m256 sum = _mm256_setzero_ps();
    for (int64_t p = 0; p < n; p += KC) {
      const __m256 e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(s + j * L + p), m));
      _mm256_storeu_ps(s + j * L + p, e);
      sum = _mm256_add_ps(sum, e);
    }
    inv[j] = 1.f / hsum(sum);
  }
}

// Head dims per slice of the values pass: the widest of 64 / 32 / 16 / 8 dividing D with G * S / 8 <= 8 sums.
template <int G, int D>
constexpr int slice() {
  for (int s = 64; s > 8; s /= 2)
    if (s <= D && D % s == 0 && G * s / 8 <= 8) return s;
  return 8;
}

// out_j = inv[j] * sum_p w[j * L + p] v_p, p < len. A chunk of KC rows at a time, read from memory once: each
// slice of the head dim adds the chunk's rows into its sums (kept in acc between chunks).
template <typename T, int G, int D>
void values(const float* w, int64_t L, const T* v, const int64_t* off, int64_t len, const float* inv, T* out) {
  constexpr int S = slice<G, D>(), W = S / 8;
  alignas(32) float acc[G * D] = {};
  prefetch<T, D>(v, off, 0, std::min<int64_t>(KC, len));
  for (int64_t p0 = 0; p0 < len; p0 += KC) {
    const int64_t n = std::min<int64_t>(KC, len - p0);
    prefetch<T, D>(v, off, p0 + KC, std::min<int64_t>(p0 + 2 * KC, len));
    for (int d0 = 0; d0 < D; d0 += S) {
      __m256 a[G][W];
      for (int j = 0; j < G; ++j)
        for (int x = 0; x < W; ++x) a[j][x] = _mm256_load_ps(acc + j * D + d0 + 8 * x);
      for (int64_t p = p0; p < p0 + n; ++p) {
        __m256 vr[W];
        for (int x = 0; x < W; ++x) vr[x] = load8(v + off[p] + d0 + 8 * x);
        for (int j = 0; j < G; ++j) {
          const __m256 pj = _mm256_set1_ps(w[j * L + p]);
          for (int x = 0; x < W; ++x) a[j][x] = _mm256_fmadd_ps(pj, vr[x], a[j][x]);
        }
      }
      for (int j = 0; j < G; ++j)
        for (int x = 0; x < W; ++x) _mm256_store_ps(acc + j * D + d0 + 8 * x, a[j][x]);
    }
  }
  for (int j = 0; j < G; ++j)
    for (int x = 0; x < D; x += 8)
      store8(out + j * D + x, _mm256_mul_ps(_mm256_load_ps(acc + j * D + x), _mm256_set1_ps(inv[j])));
}

// q (b, h, D), caches (nb, bs, hk, D), out (b, h, D): T; tables (b, mb), seqlens (b,) int32; max_len: the
// longest context (checked against the tables and the pool by the caller).
template <typename T, int G, int D>
void decode(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& tables,
            const at::Tensor& seqlens, double scale, at::Tensor& out, int64_t max_len) {
  const int64_t b = q.size(0), h = q.size(1), bs = kc.size(1), hk = kc.size(2), mb = tables.size(1);
  const int64_t row = hk * D, L = (max_len + KC - 1) / KC * KC;
  const T* qp = q.data_ptr<T>();
  const T* kp = kc.data_ptr<T>();
  const T* vp = vc.data_ptr<T>();
  const int32_t* tp = tables.data_ptr<int32_t>();
  const int32_t* lp = seqlens.data_ptr<int32_t>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, b * hk, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(G * D), s(G * L);
    std::vector<int64_t> off(L);
    float mx[G], inv[G];
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t i = idx / hk, kh = idx % hk, len = lp[i], first = (i * h + kh * G) * D;
      if (len == 0) {
        std::fill(op + first, op + first + G * D, T(0.f));
        continue;
      }
      for (int64_t x = 0; x < G * D; ++x) qf[x] = static_cast<float>(qp[first + x]) * static_cast<float>(scale);
      prism_rows::row_offsets(tp + i * mb, len, bs, row, KC, off.data());
      scores<T, G, D>(qf.data(), kp + kh * D, off.data(), len, s.data(), L, mx);
      softmax<G>(s.data(), L, (len + KC - 1) / KC * KC, mx, inv);
      values<T, G, D>(s.data(), L, vp + kh * D, off.data(), len, inv, op + first);
    }
  });
}

}  // namespace prism_avx2
