// Where a request's K / V rows sit in the paged cache: element offsets through its block table, shared by the
// decode paths (cpu_decode.cpp's AVX512-BF16 path, cpu_decode_avx2.h). Plain C++, no SIMD.
#pragma once
#include <cstdint>

namespace prism_rows {

// off[t] = element offset of the row of position p0 + t, p0 <= p < p1 (a range of one request's context), plus
// shift; returns p1 - p0. table: the request's block ids; bs: tokens per block; row: elements per position.
inline int64_t range_offsets(const int32_t* table, int64_t p0, int64_t p1, int64_t bs, int64_t row,
                             int64_t shift, int64_t* off) {
  int64_t b = p0 / bs, t = p0 % bs;  // one division, not one per position
  for (int64_t p = p0; p < p1; ++p) {
    off[p - p0] = (int64_t(table[b]) * bs + t) * row + shift;
    if (++t == bs) t = 0, ++b;
  }
  return p1 - p0;
}

// off[p] = element offset of position p's row, p < len (>= 1); then, up to a whole chunk of `chunk` keys, the
// last row again (the kernels mask those keys' scores).
inline void row_offsets(const int32_t* table, int64_t len, int64_t bs, int64_t row, int64_t chunk, int64_t* off) {
  int64_t p = range_offsets(table, 0, len, bs, row, 0, off);
  for (; p % chunk != 0; ++p) off[p] = off[len - 1];
}

}  // namespace prism_rows
