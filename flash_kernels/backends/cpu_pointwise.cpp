// bf16 elementwise steps of a decoder layer in one pass each, for CPUs (built with the decode and prefill kernels
// by flash_kernels/backends/cpu_decode.py): RoPE, SiLU(gate) * up, RMSNorm. Each computes in fp32 and rounds as
// the torch ops it replaces do (shard/layers: rotary._rotate, GatedMLP, RMSNorm), so results match them up to
// the order of fp32 operations (an occasional last-bit difference in bf16); fp32 models keep the torch ops. Also
// the greedy choice over fp32 logits rows (greedy_rows_f32, at the end).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <c10/util/BFloat16.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace {

using bf16 = c10::BFloat16;
constexpr int64_t GRAIN = 16;  // rows per parallel chunk

// x (n, heads, d) bf16, last dim contiguous (a view into the fused qkv output is fine); positions (n,) int64;
// cos, sin (max_positions, d / 2) fp32 -> out (n, heads, d) bf16: rotate-half RoPE, [x1 c - x2 s, x2 c + x1 s].
void rope_bf16(const at::Tensor& x, const at::Tensor& positions, const at::Tensor& cos, const at::Tensor& sin,
               at::Tensor out) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && out.scalar_type() == at::kBFloat16 && x.dim() == 3 &&
              x.stride(2) == 1 && out.is_contiguous() && out.sizes() == x.sizes(), "rope_bf16: x / out");
  TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && cos.is_contiguous() &&
              sin.is_contiguous() && cos.size(1) * 2 == x.size(2) && sin.sizes() == cos.sizes(),
              "rope_bf16: cos / sin (max_positions, d / 2) fp32");
  TORCH_CHECK(positions.scalar_type() == at::kLong && positions.numel() == x.size(0), "rope_bf16: positions");
  auto pos = positions.contiguous();
  const int64_t n = x.size(0), heads = x.size(1), d = x.size(2), half = d / 2, limit = cos.size(0);
  const int64_t* pp = pos.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) TORCH_CHECK(0 <= pp[i] && pp[i] < limit, "rope_bf16: position out of range");
  const bf16* xp = x.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  const int64_t s0 = x.stride(0), s1 = x.stride(1);
  at::parallel_for(0, n, GRAIN, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* c = cp + pp[i] * half;
      const float* s = sp + pp[i] * half;
      for (int64_t hd = 0; hd < heads; ++hd) {
        const bf16* x1 = xp + i * s0 + hd * s1;
        const bf16* x2 = x1 + half;
        bf16* o = op + (i * heads + hd) * d;
        for (int64_t k = 0; k < half; ++k) {
          const float a = static_cast<float>(x1[k]), b = static_cast<float>(x2[k]);
          o[k] = bf16(a * c[k] - b * s[k]);
          o[half + k] = bf16(b * c[k] + a * s[k]);
        }
      }
    }
  });
}

// gate, up (n, I) bf16, last dim contiguous (e.g. the two halves of a fused gate/up output) -> out (n, I) bf16:
// round(round(silu(gate)) * up), as F.silu(gate) * up rounds in bf16.
void silu_mul_bf16(const at::Tensor& gate, const at::Tensor& up, at::Tensor out) {
  TORCH_CHECK(gate.scalar_type() == at::kBFloat16 && up.scalar_type() == at::kBFloat16 &&
              out.scalar_type() == at::kBFloat16 && gate.dim() == 2 && gate.stride(1) == 1 && up.stride(1) == 1 &&
              out.is_contiguous() && up.sizes() == gate.sizes() && out.sizes() == gate.sizes(),
              "silu_mul_bf16: shapes");
  const int64_t n = gate.size(0), inter = gate.size(1), sg = gate.stride(0), su = up.stride(0);
  const bf16* gp = gate.data_ptr<bf16>();
  const bf16* up_p = up.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  at::parallel_for(0, n, GRAIN, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const bf16* g = gp + i * sg;
      const bf16* u = up_p + i * su;
      bf16* o = op + i * inter;
      for (int64_t k = 0; k < inter; ++k) {
        const float x = static_cast<float>(g[k]);
        const float act = static_cast<float>(bf16(x / (1.f + std::exp(-x))));
        o[k] = bf16(act * static_cast<float>(u[k]));
      }
    }
  });
}

// x (n, H) bf16 contiguous, weight (H,) bf16 -> out (n, H): weight * round(x / rms(x)), the norm in fp32 (Llama).
void rms_norm_bf16(const at::Tensor& x, const at::Tensor& weight, double eps, at::Tensor out) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16 &&
              out.scalar_type() == at::kBFloat16 && x.dim() == 2 && x.is_contiguous() && out.is_contiguous() &&
              weight.is_contiguous() && weight.numel() == x.size(1) && out.sizes() == x.sizes(),
              "rms_norm_bf16: shapes");
  const int64_t n = x.size(0), hid = x.size(1);
  const bf16* xp = x.data_ptr<bf16>();
  const bf16* wp = weight.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  at::parallel_for(0, n, GRAIN, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const bf16* r = xp + i * hid;
      float sum = 0.f;
      for (int64_t k = 0; k < hid; ++k) {
        const float v = static_cast<float>(r[k]);
        sum += v * v;
      }
      const float inv = 1.f / std::sqrt(sum / static_cast<float>(hid) + static_cast<float>(eps));
      bf16* o = op + i * hid;
      for (int64_t k = 0; k < hid; ++k) {
        const float normed = static_cast<float>(bf16(static_cast<float>(r[k]) * inv));
        o[k] = bf16(static_cast<float>(wp[k]) * normed);
      }
    }
  });
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
  m.def("rope_bf16(Tensor x, Tensor positions, Tensor cos, Tensor sin, Tensor(a!) out) -> ()");
  m.def("silu_mul_bf16(Tensor gate, Tensor up, Tensor(a!) out) -> ()");
  m.def("rms_norm_bf16(Tensor x, Tensor weight, float eps, Tensor(a!) out) -> ()");
  m.def("greedy_rows_f32(Tensor logits, Tensor(a!) tokens, Tensor(b!) logprobs) -> ()");
}
TORCH_LIBRARY_IMPL(prism_kernels, CPU, m) {
  m.impl("rope_bf16", &rope_bf16);
  m.impl("silu_mul_bf16", &silu_mul_bf16);
  m.impl("rms_norm_bf16", &rms_norm_bf16);
  m.impl("greedy_rows_f32", &greedy_rows_f32);
}
