// Paged decode attention for CPUs: one query token per request against its context, read in place through the
// block table (no gathered copy of K/V), fp32 accumulation. Built at run time by flash_kernels/backends/
// cpu_decode.py; the contract is AttentionBackend.decode's (flash_kernels/api.py).
//
//   q (b, h, d) | key_cache, value_cache (nb, bs, hk, d) | block_tables (b, mb) int32 | seqlens_k (b,) int32
//   out (b, h, d), q's dtype; query head j reads KV head j / (h / hk). fp32, bf16, fp16; all contiguous.
//
// One task per (request, KV head), split over torch's intra-op threads: scores of the group's query rows
// against every key, softmax, then the weighted sum of values. bf16 with head dim 64 / 128 and a group of
// 1 to 8 query heads per KV head takes an AVX512-BF16 path where the compiler targets it (16 keys at a
// time, see task_bf16); fp32 (and bf16 without AVX512-BF16) of those shapes an AVX2 path
// (cpu_decode_avx2.h, 8 keys at a time); everything else the generic loop.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>
#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define PRISM_AVX512_BF16 1
#include "cpu_rows.h"
#include "cpu_shapes.h"
#include "cpu_simd.h"
#endif
#if defined(__AVX2__) && defined(__FMA__)
#define PRISM_AVX2 1
#include "cpu_shapes.h"
#include "cpu_decode_avx2.h"
#endif

namespace {

// The longest context, checked against the block table's width (a longer one would read past the table), and
// every block id a context uses checked against the pool (a wrong one would read outside the cache).
inline int64_t max_length(const int32_t* lengths, const int32_t* tables, int64_t b, int64_t mb, int64_t bs,
                          int64_t num_blocks) {
  int64_t out = 1;
  for (int64_t i = 0; i < b; ++i) {
    const int64_t len = lengths[i];
    TORCH_CHECK(len <= mb * bs, "paged_decode: a context of ", len, " keys exceeds its block table (",
                mb * bs, " keys)");
    for (int64_t k = 0; k < (len + bs - 1) / bs; ++k) {
      const int64_t id = tables[i * mb + k];
      TORCH_CHECK(0 <= id && id < num_blocks, "paged_decode: block id ", id, " outside the pool of ",
                  num_blocks, " blocks");
    }
    out = std::max(out, len);
  }
  return out;
}

// scores[j * len + p] <- exp(score - max of row j), sum[j] <- the row's sum: the unnormalized softmax of the
// g query rows (normalized once, on the output).
inline void softmax_rows(float* scores, int64_t len, int64_t g, const float* mx, float* sum) {
  for (int64_t j = 0; j < g; ++j) {
    float* __restrict sr = scores + j * len;
    const float m = mx[j];
    for (int64_t p = 0; p < len; ++p) sr[p] = expf(sr[p] - m);
    float total = 0.f;
    for (int64_t p = 0; p < len; ++p) total += sr[p];
    sum[j] = total;
  }
}

inline float to_float(float x) { return x; }
inline float to_float(c10::BFloat16 x) { return static_cast<float>(x); }
inline float to_float(c10::Half x) { return static_cast<float>(x); }

// Row of d elements to fp32 (the loop vectorizes for bf16: a shift per element).
template <typename T>
inline void load_row(const T* src, float* dst, int64_t d) {
  for (int64_t x = 0; x < d; ++x) dst[x] = to_float(src[x]);
}

template <typename T, int64_t D>
void decode_impl(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& tables,
                 const at::Tensor& seqlens, double scale, at::Tensor& out) {
  const int64_t b = q.size(0), h = q.size(1), d = D > 0 ? D : q.size(2);
  const int64_t bs = kc.size(1), hk = kc.size(2), g = h / hk, mb = tables.size(1);
  const T* qp = q.data_ptr<T>();
  const T* kp = kc.data_ptr<T>();
  const T* vp = vc.data_ptr<T>();
  const int32_t* tp = tables.data_ptr<int32_t>();
  const int32_t* lp = seqlens.data_ptr<int32_t>();
  T* op = out.data_ptr<T>();
  const int64_t row = hk * d;          // stride between positions in a block
  const int64_t blk = bs * row;        // stride between blocks
  const int64_t max_len = max_length(lp, tp, b, mb, bs, kc.size(0));
  at::parallel_for(0, b * hk, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(g * d), acc(g * d), kf(d), scores(g * max_len), mx(g), sum(g);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t i = idx / hk, kh = idx % hk;
      const int64_t len = lp[i];
      for (int64_t j = 0; j < g; ++j) {
        load_row(qp + (i * h + kh * g + j) * d, qf.data() + j * d, d);
        for (int64_t x = 0; x < d; ++x) qf[j * d + x] *= static_cast<float>(scale);
      }
      // NOTE: built with -ffast-math (vectorized reductions), so no infinities: start at the lowest float.
      std::fill(mx.begin(), mx.end(), std::numeric_limits<float>::lowest());
      for (int64_t p = 0; p < len; ++p) {
        const int64_t block = tp[i * mb + p / bs];
        load_row(kp + block * blk + (p % bs) * row + kh * d, kf.data(), d);
        for (int64_t j = 0; j < g; ++j) {
          float s = 0.f;
          const float* qr = qf.data() + j * d;
          for (int64_t x = 0; x < d; ++x) s += qr[x] * kf[x];
          scores[j * len + p] = s;
          mx[j] = std::max(mx[j], s);
        }
      }
      softmax_rows(scores.data(), len, g, mx.data(), sum.data());
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t p = 0; p < len; ++p) {
        const int64_t block = tp[i * mb + p / bs];
        load_row(vp + block * blk + (p % bs) * row + kh * d, kf.data(), d);
        for (int64_t j = 0; j < g; ++j) {
          const float w = scores[j * len + p];
          float* ar = acc.data() + j * d;
          for (int64_t x = 0; x < d; ++x) ar[x] += w * kf[x];
        }
      }
      for (int64_t j = 0; j < g; ++j) {
        T* o = op + (i * h + kh * g + j) * d;
        const float inv = len > 0 ? 1.f / sum[j] : 0.f;
        for (int64_t x = 0; x < d; ++x) o[x] = static_cast<T>(acc[j * d + x] * inv);
      }
    }
  });
}


#ifdef PRISM_AVX512_BF16
// bf16 with AVX512-BF16, one (request, KV head) task in three passes over its context, 16 keys at a time:
//   scores  s[j][p] = scale * q_j . k_p: per key, vdpbf16ps (pairwise bf16 products into fp32 lanes) over the
//           head dim, then the lanes of 16 keys summed by a transpose-and-add tree into one vector (key t of
//           the chunk in lane t); keys past the context masked to the lowest float; the row max kept per lane
//   softmax s <- exp(s - row max) in place (vector polynomial), row sums
//   values  out_j = sum_p s[j][p] v_p / sum_j: V widened to fp32 two lanes at a time (even head dims from the
//           low halves, odd from the high: two ops per 32 values, re-interleaved once at the end), fp32 sums
//           held in registers over the whole context, the head dim split into slices of at most 16 of them
// K / V rows are found through a per-task offset list (no division per position) and prefetched: K two chunks
// ahead, V into L2 during the scores pass, then into L1 a chunk ahead. Inside a decode step K / V mostly come
// from memory, not cache (the rest of the step evicts them), and a block is one page on the peer model, which
// the hardware prefetchers do not cross; so each task's scores pass also prefetches into L2 a share of the
// next request's whole K and V rows (every KV head: each block page read once, in order), and a request's
// tasks start on warm rows instead of a cold miss per page (docs/performance.md has the numbers).
constexpr int KC = 16;  // keys per chunk: one score vector per query row
constexpr int PK = 2;   // chunks of K prefetched ahead (1 and 4 were slower with K/V out of cache)

// Of four vectors, per 128-bit lane: element x = a partial sum of vector x's lanes.
inline __m512 sum4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  const __m512d x = _mm512_castps_pd(ab), y = _mm512_castps_pd(cd);
  return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                       _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
}

// Of four sum4 results (keys 0-3, 4-7, 8-11, 12-15): the totals, key t's in lane t.
inline __m512 sum16(__m512 z0, __m512 z1, __m512 z2, __m512 z3) {
  constexpr int even = _MM_SHUFFLE(2, 0, 2, 0), odd = _MM_SHUFFLE(3, 1, 3, 1);
  const __m512 a = _mm512_add_ps(_mm512_shuffle_f32x4(z0, z1, even), _mm512_shuffle_f32x4(z0, z1, odd));
  const __m512 b = _mm512_add_ps(_mm512_shuffle_f32x4(z2, z3, even), _mm512_shuffle_f32x4(z2, z3, odd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, even), _mm512_shuffle_f32x4(a, b, odd));
}

// Cache lines of head-dim elements [d0, d0 + n) of rows off[0..count), into L1 (T0) or L2 (T1).
template <int HINT = _MM_HINT_T0>
inline void prefetch_rows(const c10::BFloat16* base, const int64_t* off, int64_t count, int d0, int n) {
  for (int64_t t = 0; t < count; ++t)
    for (int x = 0; x < n; x += 32)
      _mm_prefetch(reinterpret_cast<const char*>(base + off[t] + d0 + x), static_cast<_mm_hint>(HINT));
}

// Keys of the chunk `chunks` chunks after the one at p0 (0 past len): the one to prefetch now.
inline int64_t ahead(int64_t len, int64_t p0, int64_t chunks) {
  return std::min<int64_t>(KC, std::max<int64_t>(0, len - p0 - chunks * KC));
}

// Whole K and V rows (`bytes` each, every KV head) at off[0..count), into L2.
inline void prefetch_whole_rows(const c10::BFloat16* k, const c10::BFloat16* v, const int64_t* off,
                                int64_t count, int64_t bytes) {
  for (int64_t t = 0; t < count; ++t) {
    const char* kr = reinterpret_cast<const char*>(k + off[t]);
    const char* vr = reinterpret_cast<const char*>(v + off[t]);
    for (int64_t x = 0; x < bytes; x += 64) {
      _mm_prefetch(kr + x, _MM_HINT_T1);
      _mm_prefetch(vr + x, _MM_HINT_T1);
    }
  }
}

// s[j * L + p] (L = len rounded up to KC) = scale * q_j . k_p, the lowest float past len; mx[j]: row j's max.
// Also prefetches the next_rows rows at next (row_bytes each, from k / v), a share per chunk.
template <int G, int D>
void scores_bf16(const c10::BFloat16* q, const c10::BFloat16* k, const c10::BFloat16* v, const int64_t* off,
                 int64_t len, float scale, float* s, int64_t L, float* mx, const int64_t* next,
                 int64_t next_rows, int64_t row_bytes) {
  constexpr int C = D / 32;
  __m512bh qv[G][C];
  __m512 m[G];
  const __m512 lowest = _mm512_set1_ps(std::numeric_limits<float>::lowest()), sc = _mm512_set1_ps(scale);
  for (int j = 0; j < G; ++j) {
    for (int c = 0; c < C; ++c) qv[j][c] = (__m512bh)_mm512_loadu_si512(q + j * D + c * 32);
    m[j] = lowest;
  }
  prefetch_rows(k, off, std::min<int64_t>(PK * KC, len), 0, D);
  for (int64_t p0 = 0; p0 < len; p0 += KC) {
    prefetch_rows(k, off + p0 + PK * KC, ahead(len, p0, PK), 0, D);
    prefetch_rows<_MM_HINT_T1>(v, off + p0, std::min<int64_t>(KC, len - p0), 0, D);  // for the values pass
    // NOTE: all in the scores pass; spread over the values pass too, the last rows came too late (slower)
    const int64_t n0 = p0 * next_rows / L, n1 = (p0 + KC) * next_rows / L;
    prefetch_whole_rows(k, v, next + n0, n1 - n0, row_bytes);
    __m512 z[G][4];
    for (int u = 0; u < 4; ++u) {
      __m512bh kv[4][C];
      for (int t = 0; t < 4; ++t)
        for (int c = 0; c < C; ++c) kv[t][c] = (__m512bh)_mm512_loadu_si512(k + off[p0 + 4 * u + t] + c * 32);
      for (int j = 0; j < G; ++j) {
        __m512 a[4];
        for (int t = 0; t < 4; ++t) {
          a[t] = _mm512_dpbf16_ps(_mm512_setzero_ps(), qv[j][0], kv[t][0]);
          for (int c = 1; c < C; ++c) a[t] = _mm512_dpbf16_ps(a[t], qv[j][c], kv[t][c]);
        }
        z[j][u] = sum4(a[0], a[1], a[2], a[3]);
      }
    }
    const __mmask16 live = len - p0 >= KC ? __mmask16(0xFFFF) : __mmask16((1u << (len - p0)) - 1);
    for (int j = 0; j < G; ++j) {
      const __m512 sj = _mm512_mask_mul_ps(lowest, live, sum16(z[j][0], z[j][1], z[j][2], z[j][3]), sc);
      _mm512_storeu_ps(s + j * L + p0, sj);
      m[j] = _mm512_max_ps(m[j], sj);
    }
  }
  for (int j = 0; j < G; ++j) mx[j] = _mm512_reduce_max_ps(m[j]);
}

// s <- exp(s - mx[j]) per row j (0 past the context), inv[j] = 1 / the row's sum.
template <int G>
void softmax_bf16(float* s, int64_t L, const float* mx, float* inv) {
  for (int j = 0; j < G; ++j) {
    const __m512 m = _mm512_set1_ps(mx[j]);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t p = 0; p < L; p += KC) {
      const __m512 e = prism_simd::exp_neg(_mm512_sub_ps(_mm512_loadu_ps(s + j * L + p), m));
      _mm512_storeu_ps(s + j * L + p, e);
      sum = _mm512_add_ps(sum, e);
    }
    inv[j] = 1.f / _mm512_reduce_add_ps(sum);
  }
}

// out_j = inv[j] * sum_p w[j * L + p] v_p, in slices of S head dims (G * S / 16 fp32 sums in registers; S a
// multiple of 32 that divides D).
template <int G, int D>
void values_bf16(const float* w, int64_t L, const c10::BFloat16* v, const int64_t* off, int64_t len,
                 const float* inv, c10::BFloat16* out) {
  constexpr int S = D <= 256 / G ? D : (256 / G >= 64 ? 64 : 32), W = S / 32;
  static_assert(S % 32 == 0 && D % S == 0, "values_bf16: slices of whole 32-dim vectors");
  const __m512i high = _mm512_set1_epi32(int32_t(0xFFFF0000u));
  for (int d0 = 0; d0 < D; d0 += S) {
    __m512 ev[G][W], od[G][W];  // sums of even / odd head dims: element 2i of the 32 in lane i / lane i
    for (int j = 0; j < G; ++j)
      for (int x = 0; x < W; ++x) ev[j][x] = od[j][x] = _mm512_setzero_ps();
    prefetch_rows(v, off, std::min<int64_t>(KC, len), d0, S);
    for (int64_t p = 0; p < len; ++p) {
      if (p % KC == 0) prefetch_rows(v, off + p + KC, ahead(len, p, 1), d0, S);
      const c10::BFloat16* r = v + off[p] + d0;
      for (int x = 0; x < W; ++x) {
        const __m512i raw = _mm512_loadu_si512(r + 32 * x);
        const __m512 e = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
        const __m512 o = _mm512_castsi512_ps(_mm512_and_si512(raw, high));
        for (int j = 0; j < G; ++j) {
          const __m512 pj = _mm512_set1_ps(w[j * L + p]);
          ev[j][x] = _mm512_fmadd_ps(pj, e, ev[j][x]);
          od[j][x] = _mm512_fmadd_ps(pj, o, od[j][x]);
        }
      }
    }
    for (int j = 0; j < G; ++j) {
      const __m512 scale = _mm512_set1_ps(inv[j]);
      for (int x = 0; x < W; ++x) {
        const __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(ev[j][x], scale)));
        const __m512i hi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(od[j][x], scale)));
        _mm512_storeu_si512(out + j * D + d0 + 32 * x, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
      }
    }
  }
}

// One (request, KV head): G query rows at q / out, K / V rows at k / v + off (filled here); s: G * L floats.
template <int G, int D>
void task_bf16(const c10::BFloat16* q, const c10::BFloat16* k, const c10::BFloat16* v, const int32_t* table,
               int64_t len, int64_t bs, int64_t row, float scale, float* s, int64_t* off,
               const int64_t* next, int64_t next_rows, c10::BFloat16* out) {
  if (len == 0) {
    std::fill(out, out + G * D, c10::BFloat16(0.f));
    return;
  }
  const int64_t L = (len + KC - 1) / KC * KC;
  float mx[G], inv[G];
  prism_rows::row_offsets(table, len, bs, row, KC, off);
  scores_bf16<G, D>(q, k, v, off, len, scale, s, L, mx, next, next_rows, row * 2);
  softmax_bf16<G>(s, L, mx, inv);
  values_bf16<G, D>(s, L, v, off, len, inv, out);
}

template <int G, int D>
void decode_bf16(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& tables,
                 const at::Tensor& seqlens, double scale, at::Tensor& out) {
  const int64_t b = q.size(0), h = q.size(1), bs = kc.size(1), hk = kc.size(2), mb = tables.size(1);
  const auto* qp = q.data_ptr<c10::BFloat16>();
  const auto* kp = kc.data_ptr<c10::BFloat16>();
  const auto* vp = vc.data_ptr<c10::BFloat16>();
  const int32_t* tp = tables.data_ptr<int32_t>();
  const int32_t* lp = seqlens.data_ptr<int32_t>();
  auto* op = out.data_ptr<c10::BFloat16>();
  const int64_t L = (max_length(lp, tp, b, mb, bs, kc.size(0)) + KC - 1) / KC * KC;
  at::parallel_for(0, b * hk, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> s(G * L);
    std::vector<int64_t> off(L), next(L);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t i = idx / hk, kh = idx % hk, first = (i * h + kh * G) * D;
      // this task's share (kh of hk) of the next request's rows; none past this thread's tasks
      const int64_t n = i + 1, nlen = n * hk < end ? lp[n] : 0;
      const int64_t rows = prism_rows::range_offsets(tp + n * mb, nlen * kh / hk, nlen * (kh + 1) / hk, bs,
                                                     hk * D, -kh * D, next.data());
      task_bf16<G, D>(qp + first, kp + kh * D, vp + kh * D, tp + i * mb, lp[i], bs, hk * D,
                      static_cast<float>(scale), s.data(), off.data(), next.data(), rows, op + first);
    }
  });
}

// True when the AVX512-BF16 path took the call.
bool try_bf16(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& t,
              const at::Tensor& l, double scale, at::Tensor& out) {
  const int64_t g = q.size(1) / kc.size(2), d = q.size(2);
  if (!prism_shape::compiled(g, d)) return false;
  prism_shape::dispatch(g, d, [&](auto G, auto D) {
    decode_bf16<decltype(G)::value, decltype(D)::value>(q, kc, vc, t, l, scale, out);
  });
  return true;
}
#endif

#ifdef PRISM_AVX2
// True when the AVX2 path took the call: fp32, or bf16 where the AVX512-BF16 path is not compiled in.
bool try_avx2(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& t,
              const at::Tensor& l, double scale, at::Tensor& out) {
  const int64_t g = q.size(1) / kc.size(2), d = q.size(2);
  const auto dtype = q.scalar_type();
#ifdef PRISM_AVX512_BF16
  const bool bf16 = false;
#else
  const bool bf16 = dtype == at::kBFloat16;
#endif
  if (!prism_shape::compiled(g, d) || !(dtype == at::kFloat || bf16)) return false;
  const int64_t max_len = max_length(l.data_ptr<int32_t>(), t.data_ptr<int32_t>(), q.size(0), t.size(1),
                                     kc.size(1), kc.size(0));
  prism_shape::dispatch(g, d, [&](auto G, auto D) {
    constexpr int g_ = decltype(G)::value, d_ = decltype(D)::value;
    if (dtype == at::kFloat)
      prism_avx2::decode<float, g_, d_>(q, kc, vc, t, l, scale, out, max_len);
    else
      prism_avx2::decode<c10::BFloat16, g_, d_>(q, kc, vc, t, l, scale, out, max_len);
  });
  return true;
}
#endif

template <typename T>
void dispatch_dim(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& t,
                  const at::Tensor& l, double scale, at::Tensor& out) {
  switch (q.size(2)) {
    case 64: decode_impl<T, 64>(q, kc, vc, t, l, scale, out); break;
    case 128: decode_impl<T, 128>(q, kc, vc, t, l, scale, out); break;
    default: decode_impl<T, 0>(q, kc, vc, t, l, scale, out);
  }
}

void paged_decode(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& tables,
                  const at::Tensor& seqlens, double scale, at::Tensor out) {
  TORCH_CHECK(q.is_contiguous() && kc.is_contiguous() && vc.is_contiguous() && out.is_contiguous(),
              "paged_decode: q, caches and out must be contiguous");
  TORCH_CHECK(kc.scalar_type() == q.scalar_type() && vc.scalar_type() == q.scalar_type() &&
              out.scalar_type() == q.scalar_type(), "paged_decode: q, caches and out must share a dtype");
  TORCH_CHECK(q.dim() == 3 && kc.dim() == 4 && q.size(2) == kc.size(3) && q.size(1) % kc.size(2) == 0 &&
              out.sizes() == q.sizes() && tables.size(0) == q.size(0) && seqlens.size(0) == q.size(0),
              "paged_decode: shapes do not match the contract");
  TORCH_CHECK(tables.scalar_type() == at::kInt && seqlens.scalar_type() == at::kInt,
              "paged_decode: block_tables and seqlens_k must be int32");
  auto t = tables.contiguous();
  auto l = seqlens.contiguous();
#ifdef PRISM_AVX2
  if (try_avx2(q, kc, vc, t, l, scale, out)) return;
#endif
  switch (q.scalar_type()) {
    case at::kBFloat16:
#ifdef PRISM_AVX512_BF16
      if (try_bf16(q, kc, vc, t, l, scale, out)) break;
#endif
      dispatch_dim<c10::BFloat16>(q, kc, vc, t, l, scale, out);
      break;
    case at::kHalf: dispatch_dim<c10::Half>(q, kc, vc, t, l, scale, out); break;
    case at::kFloat: dispatch_dim<float>(q, kc, vc, t, l, scale, out); break;
    default: TORCH_CHECK(false, "paged_decode: unsupported dtype ", q.scalar_type());
  }
}

}  // namespace

TORCH_LIBRARY(prism_kernels, m) {
  m.def("paged_decode(Tensor q, Tensor key_cache, Tensor value_cache, Tensor block_tables, Tensor seqlens_k, float scale, Tensor(a!) out) -> ()");
}
TORCH_LIBRARY_IMPL(prism_kernels, CPU, m) { m.impl("paged_decode", &paged_decode); }
