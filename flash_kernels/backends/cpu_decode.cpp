// Paged decode attention for CPUs: one query token per request against its context, read in place through the
// block table (no gathered copy of K/V), fp32 accumulation. Built at run time by flash_kernels/backends/
// cpu_decode.py; the contract is AttentionBackend.decode's (flash_kernels/api.py).
//
//   q (b, h, d) | key_cache, value_cache (nb, bs, hk, d) | block_tables (b, mb) int32 | seqlens_k (b,) int32
//   out (b, h, d), q's dtype; query head j reads KV head j / (h / hk). fp32, bf16, fp16; all contiguous.
//
// One task per (request, KV head), split over torch's intra-op threads: scores of the group's query rows
// against every key, softmax, then the weighted sum of values. bf16 with head dim 64 / 128 and a group of
// 1 / 2 / 4 / 8 query heads per KV head takes an AVX512-BF16 path where the compiler targets it (q.k as pairwise
// bf16 dot products into fp32, about 3x the generic loop); everything else the generic loop.
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
// bf16 with AVX512-BF16: q.k as pairwise bf16 dot products into fp32 (vdpbf16ps), values widened to fp32.
// One (request, KV head) task; G query rows, head dim D (a multiple of 32).
template <int G, int D>
void task_bf16(const c10::BFloat16* q, const c10::BFloat16* kp, const c10::BFloat16* vp, const int32_t* table,
               int64_t len, int64_t bs, int64_t row, int64_t kh, float scale, float* scores, c10::BFloat16* out) {
  constexpr int C = D / 32, V = D / 16;
  __m512bh qv[G][C];
  float mx[G], sum[G];
  for (int j = 0; j < G; ++j) {
    for (int c = 0; c < C; ++c) qv[j][c] = (__m512bh)_mm512_loadu_si512(q + j * D + c * 32);
    mx[j] = std::numeric_limits<float>::lowest();
  }
  for (int64_t p = 0; p < len; ++p) {
    const c10::BFloat16* k = kp + (table[p / bs] * bs + p % bs) * row + kh * D;
    __m512bh kv[C];
    for (int c = 0; c < C; ++c) kv[c] = (__m512bh)_mm512_loadu_si512(k + c * 32);
    for (int j = 0; j < G; ++j) {
      __m512 acc = _mm512_setzero_ps();
      for (int c = 0; c < C; ++c) acc = _mm512_dpbf16_ps(acc, qv[j][c], kv[c]);
      const float s = _mm512_reduce_add_ps(acc) * scale;
      scores[j * len + p] = s;
      mx[j] = std::max(mx[j], s);
    }
  }
  softmax_rows(scores, len, G, mx, sum);
  __m512 acc[G][V];
  for (int j = 0; j < G; ++j)
    for (int c = 0; c < V; ++c) acc[j][c] = _mm512_setzero_ps();
  for (int64_t p = 0; p < len; ++p) {
    const c10::BFloat16* v = vp + (table[p / bs] * bs + p % bs) * row + kh * D;
    __m512 vf[V];
    for (int c = 0; c < V; ++c) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + c * 16));
      vf[c] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
    }
    for (int j = 0; j < G; ++j) {
      const __m512 w = _mm512_set1_ps(scores[j * len + p]);
      for (int c = 0; c < V; ++c) acc[j][c] = _mm512_fmadd_ps(w, vf[c], acc[j][c]);
    }
  }
  for (int j = 0; j < G; ++j) {
    const __m512 inv = _mm512_set1_ps(len > 0 ? 1.f / sum[j] : 0.f);
    for (int c = 0; c < V; ++c) {
      const __m256bh o = _mm512_cvtneps_pbh(_mm512_mul_ps(acc[j][c], inv));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j * D + c * 16), (__m256i)o);
    }
  }
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
  const int64_t max_len = max_length(lp, tp, b, mb, bs, kc.size(0));
  at::parallel_for(0, b * hk, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(G * max_len);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t i = idx / hk, kh = idx % hk, first = (i * h + kh * G) * D;
      task_bf16<G, D>(qp + first, kp, vp, tp + i * mb, lp[i], bs, hk * D, kh, static_cast<float>(scale),
                      scores.data(), op + first);
    }
  });
}

// True when the AVX512-BF16 path took the call.
bool try_bf16(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& t,
              const at::Tensor& l, double scale, at::Tensor& out) {
  const int64_t g = q.size(1) / kc.size(2), d = q.size(2);
#define PRISM_CASE(G, D) if (g == G && d == D) { decode_bf16<G, D>(q, kc, vc, t, l, scale, out); return true; }
  PRISM_CASE(1, 64) PRISM_CASE(2, 64) PRISM_CASE(4, 64) PRISM_CASE(8, 64)
  PRISM_CASE(1, 128) PRISM_CASE(2, 128) PRISM_CASE(4, 128) PRISM_CASE(8, 128)
#undef PRISM_CASE
  return false;
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
