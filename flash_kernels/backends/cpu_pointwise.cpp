// Elementwise steps of a decoder layer in one pass each, bf16 or fp32, for CPUs (built with the decode and
// prefill kernels by flash_kernels/backends/cpu_decode.py): RoPE, SiLU(gate) * up, RMSNorm. Each computes in fp32
// and, for bf16, rounds as the torch ops it replaces do (shard/layers: rotary._rotate, GatedMLP, RMSNorm), so
// results match them up to the order of fp32 operations (an occasional last-bit difference in bf16, a few ulp in
// fp32). Fused forms cut a decode step's op count (docs/performance.md): RoPE with the KV store (rope_store_kv),
// SiLU * up on the fused gate/up output (gated_silu), the residual add with the next RMSNorm (add_rms_norm); each
// runs the same row function as its plain op, so it equals that op (and the torch add / index_copy_) bit for bit.
// bf16 SiLU and RMSNorm rows have AVX512 forms (exp by cpu_simd.h's polynomial, bf16 rounding by vcvtneps2bf16;
// the same agreement with torch as the plain loops, which serve CPUs without AVX512-BF16); the fp32 loops are
// left to the compiler's vectorizer (-O3 -ffast-math: vector exp from libmvec).
// Also the greedy choice over fp32 logits rows (greedy_rows_f32, at the end).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <c10/util/BFloat16.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#if defined(__AVX512F__) && defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define PRISM_POINTWISE_AVX512 1
#include "cpu_simd.h"
#endif

namespace {

using bf16 = c10::BFloat16;
constexpr int64_t GRAIN = 16;  // rows per parallel chunk

// An fp32 value as T stores it: rounded to bf16 for bf16, itself for fp32 (the torch ops' intermediate roundings).
template <typename T>
inline float stored(float v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else return static_cast<float>(T(v));
}

// Calls f(T{}) with T the element type of a bf16 or fp32 tensor (the caller checked it is one of them).
template <typename F>
void by_dtype(at::ScalarType t, F&& f) {
  if (t == at::kBFloat16) f(bf16{});
  else f(float{});
}

void check_dtype(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat, op, ": bf16 or fp32");
}

#ifdef PRISM_POINTWISE_AVX512
// 16 lanes at a time; the last, partial group masked, so that every element of a row takes the same path.
inline __mmask16 lanes(int64_t k, int64_t len) {
  return len - k >= 16 ? __mmask16(0xffff) : __mmask16((1u << (len - k)) - 1);
}

// 16 bf16 -> fp32, exact.
inline __m512 widen_bf16(__m256i b) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
}

// bf16 (up to 16, masked) -> fp32, exact.
inline __m512 load_bf16(const bf16* p, __mmask16 m) { return widen_bf16(_mm256_maskz_loadu_epi16(m, p)); }

// fp32 -> bf16 rounded to nearest even (as c10's bf16 conversion, except that denormals flush to zero).
inline __m256i round_bf16(__m512 x) { return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(x)); }
#endif

// One head of rotate-half RoPE: x (d,) T -> out (d,) T, [x1 c - x2 s, x2 c + x1 s]; c, s (d / 2,) fp32, the
// position's rows of the tables. NOTE: every rope op below runs this one function, so fused and plain calls
// give the same bits.
template <typename T>
inline void rope_head(const T* x, const float* c, const float* s, int64_t half, T* out) {
  const T* x2 = x + half;
  for (int64_t k = 0; k < half; ++k) {
    const float a = static_cast<float>(x[k]), b = static_cast<float>(x2[k]);
    out[k] = T(a * c[k] - b * s[k]);
    out[half + k] = T(b * c[k] + a * s[k]);
  }
}

void check_tables(const at::Tensor& cos, const at::Tensor& sin, int64_t d, const char* op) {
  TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && cos.is_contiguous() &&
              sin.is_contiguous() && cos.dim() == 2 && cos.size(1) * 2 == d && sin.sizes() == cos.sizes(),
              op, ": cos / sin (max_positions, d / 2) fp32");
}

// positions (n,) int64, each within the tables' max_positions rows -> a contiguous copy (usually itself).
at::Tensor checked_positions(const at::Tensor& positions, int64_t n, int64_t limit, const char* op) {
  TORCH_CHECK(positions.scalar_type() == at::kLong && positions.numel() == n, op, ": positions (n,) int64");
  auto pos = positions.contiguous();
  const int64_t* pp = pos.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) TORCH_CHECK(0 <= pp[i] && pp[i] < limit, op, ": position out of range");
  return pos;
}

// x (n, heads, d) bf16 or fp32, last dim contiguous (a view into the fused qkv output is fine); positions (n,)
// int64; cos, sin (max_positions, d / 2) fp32 -> out (n, heads, d), x's dtype: rotate-half RoPE,
// [x1 c - x2 s, x2 c + x1 s].
void rope(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& cos, const at::Tensor& sin,
          at::Tensor out) {
  check_dtype(x, "rope");
  TORCH_CHECK(out.scalar_type() == x.scalar_type() && x.dim() == 3 && x.stride(2) == 1 && out.is_contiguous() &&
              out.sizes() == x.sizes(), "rope: x / out");
  check_tables(cos, sin, x.size(2), "rope");
  const int64_t n = x.size(0), heads = x.size(1), d = x.size(2), half = d / 2;
  const auto pos = checked_positions(positions, n, cos.size(0), "rope");
  const int64_t* pp = pos.data_ptr<int64_t>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  const int64_t s0 = x.stride(0), s1 = x.stride(1);
  by_dtype(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data_ptr<T>();
    T* op = out.data_ptr<T>();
    at::parallel_for(0, n, GRAIN, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        for (int64_t hd = 0; hd < heads; ++hd)
          rope_head(xp + i * s0 + hd * s1, cp + pp[i] * half, sp + pp[i] * half, half, op + (i * heads + hd) * d);
      }
    });
  });
}

// The attention step between the fused q/k/v projection and attention, in one pass: qkv (n, h + 2 hk, d) bf16 or
// fp32, last dim contiguous (the projection's output viewed per head: h query heads, hk key heads, hk value
// heads); positions (n,) int64; cos, sin (max_positions, d / 2) fp32; slots (n,) int64, distinct, each < nb * bs;
// key_cache, value_cache (nb, bs, hk, d) qkv's dtype, contiguous (flash_kernels.api's pool layout: slot s is
// [s / bs, s % bs]). RoPE of q -> returned (n, h, d) contiguous; RoPE of k -> key_cache at the slots; v ->
// value_cache at the slots. Equals rope of q and k, then store_kv (index_copy_), bit for bit.
at::Tensor rope_store_kv(const at::Tensor& qkv, const at::Tensor& positions, const at::Tensor& cos,
                         const at::Tensor& sin, const at::Tensor& slots, at::Tensor key_cache,
                         at::Tensor value_cache) {
  check_dtype(qkv, "rope_store_kv");
  TORCH_CHECK(key_cache.scalar_type() == qkv.scalar_type() && key_cache.dim() == 4 && key_cache.is_contiguous() &&
              value_cache.scalar_type() == qkv.scalar_type() && value_cache.is_contiguous() &&
              value_cache.sizes() == key_cache.sizes(), "rope_store_kv: caches (nb, bs, hk, d) of qkv's dtype");
  const int64_t hk = key_cache.size(2), d = key_cache.size(3), half = d / 2;
  TORCH_CHECK(qkv.dim() == 3 && qkv.stride(2) == 1 && qkv.size(2) == d && qkv.size(1) > 2 * hk,
              "rope_store_kv: qkv (n, h + 2 hk, d), last dim contiguous");
  check_tables(cos, sin, d, "rope_store_kv");
  const int64_t n = qkv.size(0), h = qkv.size(1) - 2 * hk, pool = key_cache.size(0) * key_cache.size(1);
  const auto pos = checked_positions(positions, n, cos.size(0), "rope_store_kv");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.numel() == n, "rope_store_kv: slots (n,) int64");
  const auto slot = slots.contiguous();
  const int64_t* pp = pos.data_ptr<int64_t>();
  const int64_t* sl = slot.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) TORCH_CHECK(0 <= sl[i] && sl[i] < pool, "rope_store_kv: slot out of range");
  auto q = at::empty({n, h, d}, qkv.options().memory_format(at::MemoryFormat::Contiguous));
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  const int64_t s0 = qkv.stride(0), s1 = qkv.stride(1), row = hk * d;
  by_dtype(qkv.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = qkv.data_ptr<T>();
    T* qp = q.data_ptr<T>();
    T* kp = key_cache.data_ptr<T>();
    T* vp = value_cache.data_ptr<T>();
    at::parallel_for(0, n, GRAIN, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const float* c = cp + pp[i] * half;
        const float* s = sp + pp[i] * half;
        const T* x = xp + i * s0;
        for (int64_t hd = 0; hd < h; ++hd) rope_head(x + hd * s1, c, s, half, qp + (i * h + hd) * d);
        for (int64_t hd = 0; hd < hk; ++hd) rope_head(x + (h + hd) * s1, c, s, half, kp + sl[i] * row + hd * d);
        for (int64_t hd = 0; hd < hk; ++hd)
          std::copy_n(x + (h + hk + hd) * s1, d, vp + sl[i] * row + hd * d);
      }
    });
  });
  return q;
}

// One row of stored(stored(silu(gate)) * up): g, u (I,) T -> o (I,) T.
template <typename T>
inline void silu_mul_row(const T* g, const T* u, int64_t inter, T* o) {
#ifdef PRISM_POINTWISE_AVX512
  if constexpr (std::is_same_v<T, bf16>) {
    const __m512 one = _mm512_set1_ps(1.f);
    for (int64_t k = 0; k < inter; k += 16) {
      const __mmask16 m = lanes(k, inter);
      const __m512 x = load_bf16(g + k, m);
      // sigmoid(x) from e = exp(-|x|) <= 1: 1 / (1 + e) for x >= 0, e / (1 + e) below (no overflow either way)
      const __m512 e = prism_simd::exp_neg(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)));
      const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
      // 1 / (1 + e) by the 14-bit reciprocal and one Newton step (about 2^-27 relative): a division's
      // throughput was a third of this loop's time
      const __m512 den = _mm512_add_ps(one, e), r0 = _mm512_rcp14_ps(den);
      const __m512 inv = _mm512_mul_ps(r0, _mm512_fnmadd_ps(den, r0, _mm512_set1_ps(2.f)));
      const __m512 sig = _mm512_mul_ps(_mm512_mask_blend_ps(neg, one, e), inv);
      const __m512 act = widen_bf16(round_bf16(_mm512_mul_ps(x, sig)));
      _mm256_mask_storeu_epi16(o + k, m, round_bf16(_mm512_mul_ps(act, load_bf16(u + k, m))));
    }
    return;
  }
#endif
  for (int64_t k = 0; k < inter; ++k) {
    const float x = static_cast<float>(g[k]);
    const float act = stored<T>(x / (1.f + std::exp(-x)));
    o[k] = T(act * static_cast<float>(u[k]));
  }
}

// gate, up (n, I) T with row strides sg, su, rows contiguous -> out (n, I) T contiguous:
// stored(stored(silu(gate)) * up), as F.silu(gate) * up rounds.
template <typename T>
void silu_mul_rows(const T* gp, int64_t sg, const T* up_p, int64_t su, int64_t n, int64_t inter, T* op) {
  at::parallel_for(0, n, GRAIN, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) silu_mul_row(gp + i * sg, up_p + i * su, inter, op + i * inter);
  });
}

// gate, up (n, I) bf16 or fp32, last dim contiguous (e.g. the two halves of a fused gate/up output) -> out (n, I)
// of their dtype: silu(gate) * up.
void silu_mul(const at::Tensor& gate, const at::Tensor& up, at::Tensor out) {
  check_dtype(gate, "silu_mul");
  TORCH_CHECK(up.scalar_type() == gate.scalar_type() && out.scalar_type() == gate.scalar_type() &&
              gate.dim() == 2 && gate.stride(1) == 1 && up.stride(1) == 1 && out.is_contiguous() &&
              up.sizes() == gate.sizes() && out.sizes() == gate.sizes(), "silu_mul: shapes");
  by_dtype(gate.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    silu_mul_rows(gate.data_ptr<T>(), gate.stride(0), up.data_ptr<T>(), up.stride(0), gate.size(0), gate.size(1),
                  out.data_ptr<T>());
  });
}

// gate_up (n, 2 I) bf16 or fp32, last dim contiguous: the fused gate/up projection's output, gate in the first
// half -> (n, I) of its dtype, contiguous: silu_mul of its halves, without the two views.
at::Tensor gated_silu(const at::Tensor& gate_up) {
  check_dtype(gate_up, "gated_silu");
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.stride(1) == 1 && gate_up.size(1) % 2 == 0,
              "gated_silu: gate_up (n, 2 I), last dim contiguous");
  const int64_t n = gate_up.size(0), inter = gate_up.size(1) / 2, stride = gate_up.stride(0);
  auto out = at::empty({n, inter}, gate_up.options().memory_format(at::MemoryFormat::Contiguous));
  by_dtype(gate_up.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* gp = gate_up.data_ptr<T>();
    silu_mul_rows(gp, stride, gp + inter, stride, n, inter, out.data_ptr<T>());
  });
  return out;
}

// One row: r (H,) T, w (H,) T -> o (H,) T: w * stored(r / rms(r)), the norm in fp32 (Llama). NOTE: both norm ops
// run this one function, so fused and plain calls give the same bits.
template <typename T>
inline void rms_norm_row(const T* r, const T* w, int64_t hid, float eps, T* o) {
#ifdef PRISM_POINTWISE_AVX512
  if constexpr (std::is_same_v<T, bf16>) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t k = 0; k < hid; k += 16) {
      const __m512 v = load_bf16(r + k, lanes(k, hid));
      acc = _mm512_fmadd_ps(v, v, acc);
    }
    const __m512 inv = _mm512_set1_ps(1.f / std::sqrt(_mm512_reduce_add_ps(acc) / static_cast<float>(hid) + eps));
    for (int64_t k = 0; k < hid; k += 16) {
      const __mmask16 m = lanes(k, hid);
      const __m512 normed = widen_bf16(round_bf16(_mm512_mul_ps(load_bf16(r + k, m), inv)));
      _mm256_mask_storeu_epi16(o + k, m, round_bf16(_mm512_mul_ps(load_bf16(w + k, m), normed)));
    }
    return;
  }
#endif
  float sum = 0.f;
  for (int64_t k = 0; k < hid; ++k) {
    const float v = static_cast<float>(r[k]);
    sum += v * v;
  }
  const float inv = 1.f / std::sqrt(sum / static_cast<float>(hid) + eps);
  for (int64_t k = 0; k < hid; ++k) {
    const float normed = stored<T>(static_cast<float>(r[k]) * inv);
    o[k] = T(static_cast<float>(w[k]) * normed);
  }
}

void check_norm(const at::Tensor& x, const at::Tensor& weight, const char* op) {
  check_dtype(x, op);
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() && x.dim() == 2 && x.is_contiguous() &&
              weight.is_contiguous() && weight.numel() == x.size(1),
              op, ": x (n, H) contiguous, weight (H,), one dtype");
}

// x (n, H) bf16 or fp32 contiguous, weight (H,) of its dtype -> out (n, H): weight * stored(x / rms(x)), the norm
// in fp32 (Llama).
void rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps, at::Tensor out) {
  check_norm(x, weight, "rms_norm");
  TORCH_CHECK(out.scalar_type() == x.scalar_type() && out.is_contiguous() && out.sizes() == x.sizes(),
              "rms_norm: out");
  const int64_t n = x.size(0), hid = x.size(1);
  by_dtype(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data_ptr<T>();
    const T* wp = weight.data_ptr<T>();
    T* op = out.data_ptr<T>();
    at::parallel_for(0, n, GRAIN, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        rms_norm_row(xp + i * hid, wp, hid, static_cast<float>(eps), op + i * hid);
    });
  });
}

// The residual add and the next RMSNorm of a decoder layer in one pass: x (n, H) bf16 or fp32 contiguous (a
// sublayer's output), residual (n, H) of its dtype, contiguous, updated in place to stored(residual + x) (the
// torch add); weight (H,) -> (n, H): rms_norm of the new residual. Equals the add then rms_norm, bit for bit.
at::Tensor add_rms_norm(const at::Tensor& x, at::Tensor residual, const at::Tensor& weight, double eps) {
  check_norm(x, weight, "add_rms_norm");
  TORCH_CHECK(residual.scalar_type() == x.scalar_type() && residual.is_contiguous() && residual.sizes() == x.sizes(),
              "add_rms_norm: residual (n, H) of x's dtype, contiguous");
  TORCH_CHECK(!residual.is_same(x), "add_rms_norm: residual must not be x");
  const int64_t n = x.size(0), hid = x.size(1);
  auto out = at::empty_like(x);
  by_dtype(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data_ptr<T>();
    T* rp = residual.data_ptr<T>();
    const T* wp = weight.data_ptr<T>();
    T* op = out.data_ptr<T>();
    at::parallel_for(0, n, GRAIN, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        T* r = rp + i * hid;
        const T* a = xp + i * hid;
        for (int64_t k = 0; k < hid; ++k) r[k] = T(static_cast<float>(r[k]) + static_cast<float>(a[k]));
        rms_norm_row(r, wp, hid, static_cast<float>(eps), op + i * hid);
      }
    });
  });
  return out;
}

// Greedy choice over fp32 logits rows (shard/sampling_batch.py, its plain greedy path): per row the first index
// of the maximum and its log-probability (-logsumexp(x - max)), without a (b, vocab) log_softmax. A row
// with NaN or +inf, or only -inf, gets NaN (log_softmax is NaN there too). NOTE: built with -ffast-math, which
// lets the compiler assume no NaN/inf: those are found from the bits, and -inf entries (grammar masks) are
// skipped from the bits too.
constexpr uint32_t POS_INF_BITS = 0x7f800000u, NEG_INF_BITS = 0xff800000u, ABS_MASK = 0x7fffffffu;

// x (vocab,) fp32 -> whether the row has a valid choice (no NaN, no +inf, something above -inf); m <- its max.
bool row_max(const float* x, int32_t vocab, float& m) {
  // NOTE: flags and max in two loops, each shaped so that the compiler vectorizes it (one loop did not).
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(x);
  uint32_t nan_or_pos_inf = 0, finite = 0;
  for (int32_t k = 0; k < vocab; ++k) {
    const uint32_t b = bits[k], u = b & ABS_MASK;
    nan_or_pos_inf |= (u > POS_INF_BITS) | (b == POS_INF_BITS);
    finite |= u < POS_INF_BITS;
  }
  float best = -std::numeric_limits<float>::infinity();
  for (int32_t k = 0; k < vocab; ++k) best = best > x[k] ? best : x[k];
  m = best;
  return !nan_or_pos_inf && finite;
}

// The log-probability of entry ``first``, the row's max m: -log(1 + sum over the other entries of exp(x - m)),
// -inf entries counted as 0. NOTE: log1p of the others' mass keeps its precision when the token is near certain
// (log of a sum near 1 would lose it: ~1e-7 absolute, all of a logprob of -1e-6).
float row_logprob_of_max(const float* x, int32_t vocab, float m, int32_t first) {
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(x);
  float rest = 0.f;
  for (int32_t k = 0; k < vocab; ++k) {
    const float e = std::exp(x[k] - m);
    rest += (bits[k] == NEG_INF_BITS) | (k == first) ? 0.f : e;
  }
  return -std::log1p(rest);
}

// logits (b, vocab) fp32, rows contiguous -> tokens (b,) int64, logprobs (b,) fp32.
void greedy_rows_f32(const at::Tensor& logits, at::Tensor tokens, at::Tensor logprobs) {
  TORCH_CHECK(logits.scalar_type() == at::kFloat && logits.dim() == 2 && logits.stride(1) == 1 &&
              logits.size(1) > 0 && logits.size(1) < std::numeric_limits<int32_t>::max(),
              "greedy_rows_f32: logits (b, vocab) fp32, rows contiguous");
  TORCH_CHECK(tokens.scalar_type() == at::kLong && tokens.is_contiguous() && tokens.numel() == logits.size(0) &&
              logprobs.scalar_type() == at::kFloat && logprobs.is_contiguous() &&
              logprobs.numel() == logits.size(0), "greedy_rows_f32: tokens (b,) int64, logprobs (b,) fp32");
  const int64_t b = logits.size(0), stride = logits.stride(0);
  const int32_t vocab = static_cast<int32_t>(logits.size(1));
  const float* lp = logits.data_ptr<float>();
  int64_t* tp = tokens.data_ptr<int64_t>();
  float* op = logprobs.data_ptr<float>();
  at::parallel_for(0, b, GRAIN, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* x = lp + i * stride;
      float m;
      if (!row_max(x, vocab, m)) {
        tp[i] = 0;
        op[i] = std::numeric_limits<float>::quiet_NaN();
        continue;
      }
      int32_t first = vocab;
      for (int32_t k = 0; k < vocab; ++k) {
        const int32_t at = x[k] == m ? k : vocab;
        first = first < at ? first : at;
      }
      tp[i] = first;
      op[i] = row_logprob_of_max(x, vocab, m, first);
    }
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(prism_kernels, m) {
  m.def("rope(Tensor x, Tensor positions, Tensor cos, Tensor sin, Tensor(a!) out) -> ()");
  m.def("silu_mul(Tensor gate, Tensor up, Tensor(a!) out) -> ()");
  m.def("rms_norm(Tensor x, Tensor weight, float eps, Tensor(a!) out) -> ()");
  m.def("greedy_rows_f32(Tensor logits, Tensor(a!) tokens, Tensor(b!) logprobs) -> ()");
  m.def("rope_store_kv(Tensor qkv, Tensor positions, Tensor cos, Tensor sin, Tensor slots, "
        "Tensor(a!) key_cache, Tensor(b!) value_cache) -> Tensor");
  m.def("gated_silu(Tensor gate_up) -> Tensor");
  m.def("add_rms_norm(Tensor x, Tensor(a!) residual, Tensor weight, float eps) -> Tensor");
}
TORCH_LIBRARY_IMPL(prism_kernels, CPU, m) {
  m.impl("rope", &rope);
  m.impl("silu_mul", &silu_mul);
  m.impl("rms_norm", &rms_norm);
  m.impl("greedy_rows_f32", &greedy_rows_f32);
  m.impl("rope_store_kv", &rope_store_kv);
  m.impl("gated_silu", &gated_silu);
  m.impl("add_rms_norm", &add_rms_norm);
}
