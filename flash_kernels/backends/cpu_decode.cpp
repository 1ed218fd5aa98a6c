// Paged decode attention for CPUs: one query token per request against its context, read in place through the
// block table (no gathered copy of K/V), fp32 accumulation. Built at run time by flash_kernels/backends/
// cpu_decode.py; the contract is AttentionBackend.decode's (flash_kernels/api.py).
//
//   q (b, h, d) | key_cache, value_cache (nb, bs, hk, d) | block_tables (b, mb) int32 | seqlens_k (b,) int32
//   out (b, h, d), q's dtype; query head j reads KV head j / (h / hk). fp32, bf16, fp16; all contiguous.
//
// One task per (request, KV head), split over torch's intra-op threads: scores of the group's query rows
// against every key, softmax, then the weighted sum of values.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

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
  int64_t max_len = 0;
  for (int64_t i = 0; i < b; ++i) max_len = std::max<int64_t>(max_len, lp[i]);
  TORCH_CHECK(max_len <= mb * bs, "paged_decode: a context of ", max_len, " keys exceeds its block table (",
              mb, " blocks of ", bs, ")");
  at::parallel_for(0, b * hk, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(g * d), acc(g * d), kf(d), scores(g * std::max<int64_t>(max_len, 1)), mx(g), sum(g);
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
      for (int64_t j = 0; j < g; ++j) {
        float* __restrict sr = scores.data() + j * len;
        const float m = mx[j];
        for (int64_t p = 0; p < len; ++p) sr[p] = expf(sr[p] - m);
        float total = 0.f;
        for (int64_t p = 0; p < len; ++p) total += sr[p];
        sum[j] = total;
      }
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
    case at::kBFloat16: dispatch_dim<c10::BFloat16>(q, kc, vc, t, l, scale, out); break;
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
