// fp32 linears of up to about a thousand rows on AVX2 + FMA, the weight packed once into column panels (built with
// the decode kernel by flash_kernels/backends/cpu_decode.py; packing and the contract in cpu_panels.py). A decode
// step's products through MKL's sgemm copy a block of the weight on every call, a fifth of the sgemm time at 32
// rows (docs/performance.md); here the weight is already in the order the loop reads it.
//
// One panel (16 output columns) at a time: for each 6 rows of x, 12 fp32 sums live in registers over the whole
// depth, the panel's k-th row (16 floats) loaded once per 6 rows, each x value broadcast. Every output element
// is the same sequence of fused multiply-adds over k = 0..K-1 whichever the row count, so a row's result does
// not depend on the rows beside it (batched equals solo, bit for bit).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <algorithm>
#include <cstdint>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define PRISM_PANELS 1
#endif

namespace {

constexpr int64_t NR = 16;  // output columns per panel: two 8-float vectors, one cache line per depth
constexpr int64_t MR = 6;   // rows per register block: 12 sums, 2 weight vectors and a broadcast in 15 registers

#ifdef PRISM_PANELS
// out[r][c] = bias[c] + sum_k x[r][k] * panel[k][c] for R rows and the panel's first `cols` columns: x (R, K) with
// row stride ldx; panel (K, NR); out (R, cols) with row stride ldo; bias (NR,) or null.
template <int R>
void block(const float* x, int64_t ldx, const float* panel, int64_t K, const float* bias, float* out, int64_t ldo,
           int64_t cols) {
  __m256 acc[R][2];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 2; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const float* w = panel + k * NR;
    const __m256 b0 = _mm256_loadu_ps(w), b1 = _mm256_loadu_ps(w + 8);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(x + r * ldx + k);
      acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
    }
  }
  // NOTE: the sums go through a buffer with constant indices only, so that the compiler keeps them in registers
  // in the loop above (an epilogue indexing them by a runtime row spilled them to the stack every k)
  alignas(32) float rows[R][NR];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 2; ++c) {
      const __m256 b = bias ? _mm256_loadu_ps(bias + 8 * c) : _mm256_setzero_ps();
      _mm256_store_ps(rows[r] + 8 * c, _mm256_add_ps(acc[r][c], b));
    }
  for (int r = 0; r < R; ++r) std::copy_n(rows[r], cols, out + r * ldo);
}
#endif

// x (M, K) fp32, rows contiguous; panels (P, K, NR) fp32 contiguous (cpu_panels.py's pack of an (N, K) weight);
// bias (P * NR,) fp32 zero-padded, or an empty tensor; out (M, N) fp32 contiguous, N <= P * NR:
// out = x @ weight.T + bias.
void panel_linear(const at::Tensor& x, const at::Tensor& panels, const at::Tensor& bias, at::Tensor out) {
#ifdef PRISM_PANELS
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2 && x.stride(1) == 1, "panel_linear: x (M, K) fp32");
  TORCH_CHECK(panels.scalar_type() == at::kFloat && panels.dim() == 3 && panels.is_contiguous() &&
              panels.size(1) == x.size(1) && panels.size(2) == NR, "panel_linear: panels (P, K, 16) fp32");
  const int64_t M = x.size(0), K = x.size(1), P = panels.size(0), N = out.size(1);
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.is_contiguous() && out.size(0) == M && N <= P * NR &&
              N > (P - 1) * NR, "panel_linear: out (M, N) fp32 contiguous, N within the panels");
  const bool has_bias = bias.numel() > 0;
  TORCH_CHECK(!has_bias || (bias.scalar_type() == at::kFloat && bias.is_contiguous() && bias.numel() == P * NR),
              "panel_linear: bias (P * 16,) fp32");
  const float* xp = x.data_ptr<float>();
  const float* wp = panels.data_ptr<float>();
  const float* bp = has_bias ? bias.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  const int64_t ldx = x.stride(0);
  at::parallel_for(0, P, 4, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const float* panel = wp + p * K * NR;
      const float* b = bp ? bp + p * NR : nullptr;
      const int64_t cols = std::min(NR, N - p * NR);
      float* o = op + p * NR;
      int64_t m = 0;
      for (; m + MR <= M; m += MR) block<6>(xp + m * ldx, ldx, panel, K, b, o + m * N, N, cols);
      const float* xr = xp + m * ldx;
      switch (M - m) {
        case 5: block<5>(xr, ldx, panel, K, b, o + m * N, N, cols); break;
        case 4: block<4>(xr, ldx, panel, K, b, o + m * N, N, cols); break;
        case 3: block<3>(xr, ldx, panel, K, b, o + m * N, N, cols); break;
        case 2: block<2>(xr, ldx, panel, K, b, o + m * N, N, cols); break;
        case 1: block<1>(xr, ldx, panel, K, b, o + m * N, N, cols); break;
        default: break;
      }
    }
  });
#else
  TORCH_CHECK(false, "panel_linear: built without AVX2 + FMA");
#endif
}

bool panel_linear_usable() {
#ifdef PRISM_PANELS
  return true;
#else
  return false;
#endif
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(prism_kernels, m) {
  m.def("panel_linear_usable() -> bool", &panel_linear_usable);
  m.def("panel_linear(Tensor x, Tensor panels, Tensor bias, Tensor(a!) out) -> ()");
}
TORCH_LIBRARY_IMPL(prism_kernels, CPU, m) { m.impl("panel_linear", &panel_linear); }
