// bf16 linears of up to a few hundred rows (decode steps, short prompt pieces) on Intel AMX tiles (built with
// the decode kernel by flash_kernels/backends/cpu_decode.py). oneDNN runs the same products on AMX, but each
// call builds its primitive descriptors and scratchpad again: 17-30 us per linear at 1-32 rows, where the
// product itself takes a few us (docs/performance.md). Here a call is one loop over a weight packed once for
// the tiles.
//
// Packed weight (the layout of flash_kernels/backends/cpu_linear.py's pack): for a (n, k) weight, (ceil(n
// / 32), ceil(k / 32), 2, 16, 32) bf16, zero-padded: block b, depth chunk c, tile t, row r holds the pairs
// (w[j][32c + 2r], w[j][32c + 2r + 1]) of the 16 output columns j = 32b + 16t + 0..15, as TDPBF16PS reads its
// second operand. Products accumulate in fp32 and round to bf16 once, as oneDNN's do (the order of the fp32
// sums differs, so a result may differ from oneDNN's in the last bf16 bit).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>
#include <c10/util/BFloat16.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && defined(__AVX512BW__)
#define PRISM_LINEAR_AMX 1
#include "cpu_amx.h"
#endif

namespace {

using bf16 = c10::BFloat16;
constexpr int64_t ROWS = 16;            // rows of an A / C tile
constexpr int64_t DEPTH = 32;           // bf16 elements of a row of an A tile (one depth chunk)
constexpr int64_t BLOCK = 32;           // output columns per weight block (two 16-column C tiles)
constexpr int64_t CHUNK = 2 * 16 * 32;  // bf16 elements of one block's depth chunk (two B tiles)
// Weight blocks are computed for every row before the next ones, in groups of about GROUP_BYTES / (row
// pairs) bytes of weight, within [GROUP_MIN, GROUP_MAX], so that a group is in cache for every pair but the
// first.
constexpr int64_t GROUP_BYTES = 1024 * 1024, GROUP_MIN = 128 * 1024, GROUP_MAX = 512 * 1024;
constexpr int64_t SLICE = 8;         // depth chunks per slice (256 deep: a row pair's slice is 16 KB)
constexpr int64_t SLICED_PAIRS = 3;  // row pairs from which the depth is sliced

#ifdef PRISM_LINEAR_AMX
using prism_amx::tiles_permitted;

// Tiles 0-3: C (fp32) of row tiles 0/1 x column tiles 0/1; 4-5: A (row tiles 0/1, 32 bf16 deep); 6-7: B. Row
// tile t has rows[t] rows (the last ones of x may be fewer than 16; a tile load reads only those).
void configure(int64_t rows0, int64_t rows1) {
  const uint8_t r0 = static_cast<uint8_t>(rows0), r1 = static_cast<uint8_t>(rows1);
  prism_amx::configure({r0, r0, r1, r1, r0, r1, 16, 16});
}

// C tile (fp32, row r of `acc` at r * 16) -> out rows [0, rows), columns [0, cols) bf16, bias added.
void write_tile(const float* acc, const bf16* bias, int64_t rows, int64_t cols, bf16* out, int64_t ldo) {
  const __mmask16 m = cols >= 16 ? __mmask16(0xffff) : __mmask16((1u << cols) - 1);
  __m512 b = _mm512_setzero_ps();
  if (bias != nullptr) {
    b = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, bias)), 16));
  }
  for (int64_t r = 0; r < rows; ++r) {
    const __m512 v = _mm512_add_ps(_mm512_load_ps(acc + r * 16), b);
    _mm256_mask_storeu_epi16(out + r * ldo, m, reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
  }
}

struct Operands {
  const bf16* x;     // (m, k), row stride k
  const bf16* tail;  // (m, 32): x's last, partial depth chunk zero-padded; null when k is a multiple of 32
  const bf16* w;     // packed weight
  const bf16* bias;  // (n,) or null
  bf16* out;         // (m, n)
  int64_t m, k, n, kc;
};

// C tiles 0-3 <- their sums so far: zero before a block's first slice, else from `spill`.
inline void load_sums(const float* spill, bool first) {
  if (first) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    return;
  }
  _tile_loadd(0, spill, 64);
  _tile_loadd(1, spill + 256, 64);
  _tile_loadd(2, spill + 512, 64);
  _tile_loadd(3, spill + 768, 64);
}

// C tiles 0-3 -> sums (4 x 256 fp32).
inline void store_sums(float* sums) {
  _tile_stored(0, sums, 64);
  _tile_stored(1, sums + 256, 64);
  _tile_stored(2, sums + 512, 64);
  _tile_stored(3, sums + 768, 64);
}

// Output blocks [b0, b1) of rows [r, r + rows0 + rows1) (rows1 = 0: one row tile). With `spill` (4 x 256 fp32
// per block), the depth goes in slices of `slice` chunks, each for every block, the partial sums kept there:
// the pair's rows of one slice stay in L1 over the blocks. Also prefetches `pf_lines` cache lines from `pf`,
// a few per depth chunk.
void row_pair(const Operands& o, int64_t r, int64_t rows0, int64_t rows1, int64_t b0, int64_t b1, float* spill,
              int64_t slice, const char* pf, int64_t pf_lines) {
  alignas(64) float acc[4][ROWS * 16];
  const int64_t full = o.tail ? o.kc - 1 : o.kc;
  const int64_t stride = o.k * static_cast<int64_t>(sizeof(bf16));
  const bf16* a0 = o.x + r * o.k;
  const bf16* a1 = a0 + ROWS * o.k;
  const bf16* t0 = o.tail ? o.tail + r * DEPTH : nullptr;
  const bf16* t1 = o.tail ? t0 + ROWS * DEPTH : nullptr;
  const bool two = rows1 > 0;
  configure(rows0, two ? rows1 : 1);
  const int64_t steps = (b1 - b0) * o.kc, per_step = (pf_lines + steps - 1) / steps;
  const char* const pf_end = pf + pf_lines * 64;
  for (int64_t s0 = 0; s0 < o.kc; s0 += slice) {
    const int64_t s1 = std::min(o.kc, s0 + slice);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const bf16* wb = o.w + blk * o.kc * CHUNK;
      float* sums = slice < o.kc ? spill + (blk - b0) * 4 * 256 : nullptr;  // null: one slice, no spill
      load_sums(sums, s0 == 0);
      for (int64_t c = s0; c < s1; ++c) {
        for (int64_t i = 0; i < per_step && pf < pf_end; ++i, pf += 64) _mm_prefetch(pf, _MM_HINT_T0);
        const bool in_x = c < full;
        _tile_loadd(6, wb + c * CHUNK, 64);
        _tile_loadd(7, wb + c * CHUNK + CHUNK / 2, 64);
        _tile_loadd(4, in_x ? a0 + c * DEPTH : t0, in_x ? stride : 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        if (two) {
          _tile_loadd(5, in_x ? a1 + c * DEPTH : t1, in_x ? stride : 64);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
      }
      if (s1 < o.kc) {
        store_sums(sums);
        continue;
      }
      store_sums(acc[0]);
      const int64_t col = blk * BLOCK;
      for (int64_t half = 0; half < (two ? 2 : 1); ++half) {
        bf16* out = o.out + (r + half * ROWS) * o.n + col;
        for (int64_t t = 0; t < 2; ++t) {
          const int64_t cols = std::min<int64_t>(16, o.n - col - t * 16);
          if (cols > 0) {
            write_tile(acc[2 * half + t], o.bias ? o.bias + col + t * 16 : nullptr, half ? rows1 : rows0, cols,
                       out + t * 16, o.n);
          }
        }
      }
    }
  }
}

// Output blocks [b0, b1), every row: a group of blocks (which stays in cache) for every pair of row tiles, then
// the next group, so that a large weight is read from memory once, not once per row pair. The next group's weight
// is prefetched while this one computes, a share per row pair (the hardware's prefetchers left the first pair
// waiting on memory); into L1, as the hint to L2 only was slower. From SLICED_PAIRS row pairs on, the depth goes
// in slices (row_pair), which costs a store and a load of the sums per slice and block: fewer pairs lost more.
void blocks(const Operands& o, int64_t b0, int64_t b1) {
  const int64_t pairs = (o.m + 2 * ROWS - 1) / (2 * ROWS);
  const int64_t block_bytes = o.kc * CHUNK * static_cast<int64_t>(sizeof(bf16));
  const int64_t group = std::max<int64_t>(1, std::clamp(GROUP_BYTES / pairs, GROUP_MIN, GROUP_MAX) / block_bytes);
  const bool sliced = pairs >= SLICED_PAIRS && group > 1 && o.kc > SLICE;
  std::vector<float> spill(sliced ? group * 4 * 256 : 0);
  for (int64_t g = b0; g < b1; g += group) {
    // (one row pair reads each group once, as the hardware's prefetchers expect: nothing to prefetch ahead)
    const int64_t next = std::min(b1, g + group);
    const int64_t lines = pairs > 1 ? (std::min(b1, next + group) - next) * block_bytes / 64 : 0;
    const char* ahead = reinterpret_cast<const char*>(o.w + next * o.kc * CHUNK);
    for (int64_t r = 0, pair = 0; r < o.m; r += 2 * ROWS, ++pair) {
      const int64_t rows0 = std::min<int64_t>(ROWS, o.m - r), l0 = pair * lines / pairs;
      row_pair(o, r, rows0, std::min<int64_t>(ROWS, o.m - r - rows0), g, next, spill.data(),
               sliced ? SLICE : o.kc, ahead + l0 * 64, (pair + 1) * lines / pairs - l0);
    }
  }
  // NOTE: not a bare tile release: torch's brgemm users (its CPU flash attention) keep the configuration they
  // last set per thread and skip setting it again; this resets that record too
  at::native::cpublas::brgemm_release();
}
#endif

// Whether amx_linear runs here: built with AMX and the OS grants the tile state.
bool amx_linear_usable() {
#ifdef PRISM_LINEAR_AMX
  return tiles_permitted();
#else
  return false;
#endif
}

// x (m, k) bf16 contiguous; packed (ceil(n / 32), ceil(k / 32), 2, 16, 32) bf16 contiguous (layout above);
// bias (n,) bf16 or none -> (m, n) bf16 = x @ w.T + bias.
at::Tensor amx_linear(const at::Tensor& x, const at::Tensor& packed, int64_t n,
                      const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(amx_linear_usable(), "amx_linear: no AMX tiles on this CPU or build");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.is_contiguous(),
              "amx_linear: x (m, k) bf16");
  TORCH_CHECK(packed.dim() == 5 && packed.scalar_type() == at::kBFloat16 && packed.is_contiguous() &&
                  packed.size(2) == 2 && packed.size(3) == 16 && packed.size(4) == 32,
              "amx_linear: packed (nb, kc, 2, 16, 32) bf16");
  const int64_t m = x.size(0), k = x.size(1), nb = packed.size(0), kc = packed.size(1);
  TORCH_CHECK(k <= kc * DEPTH && k > (kc - 1) * DEPTH && n <= nb * BLOCK && n > (nb - 1) * BLOCK,
              "amx_linear: x, packed and n disagree");
  const bf16* b = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kBFloat16 && bias->is_contiguous() && bias->numel() == n,
                "amx_linear: bias (n,) bf16");
    b = bias->data_ptr<bf16>();
  }
  at::Tensor out = at::empty({m, n}, x.options());
  if (m == 0) return out;
#ifdef PRISM_LINEAR_AMX
  at::Tensor tail;
  if (k % DEPTH != 0) {  // tiles read 32-deep chunks: the last, partial one from a zero-padded copy
    tail = at::zeros({m, DEPTH}, x.options());
    const bf16* src = x.data_ptr<bf16>() + (k - k % DEPTH);
    bf16* dst = tail.data_ptr<bf16>();
    for (int64_t r = 0; r < m; ++r) std::memcpy(dst + r * DEPTH, src + r * k, (k % DEPTH) * sizeof(bf16));
  }
  const bf16* tail_ptr = tail.defined() ? tail.data_ptr<bf16>() : nullptr;
  const Operands o{x.data_ptr<bf16>(), tail_ptr, packed.data_ptr<bf16>(), b, out.data_ptr<bf16>(),
                   m, k, n, kc};
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) { blocks(o, b0, b1); });
#endif
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(prism_kernels, m) {
  m.def("amx_linear_usable() -> bool", &amx_linear_usable);
  m.def("amx_linear(Tensor x, Tensor packed, int n, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(prism_kernels, CPU, m) { m.impl("amx_linear", &amx_linear); }
