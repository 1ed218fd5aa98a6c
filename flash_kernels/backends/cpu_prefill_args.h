// The argument checks of the paged prefill ops (cpu_prefill.cpp, cpu_prefill_amx.cpp, cpu_prefill_avx2.cpp):
// their shared contract, AttentionBackend.prefill's (see cpu_prefill.cpp's header), enforced once per call before
// any pointer is read; a tile's row layout; the hand-out of tasks to threads.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cstdint>
#include <vector>

namespace prism_prefill {

// Row r of a tile of R query rows: query head j (of its KV head's G) at position t of the tile's R / G. Not
// `real` (padding) past G x (R / G) rows, where G does not divide R, or past the piece's `rows` positions.
struct TileRow {
  int j, t;
  bool real;
};

template <int G, int R>
inline TileRow tile_row(int r, int64_t rows) {
  constexpr int T = R / G;
  const int j = r / T, t = r % T;
  return {j, t, j < G && t < rows};
}

// Calls f(i, local) for every task of a step over torch's intra-op threads: toff (b + 1) counts the tasks of
// requests before i, local is a task's index in request i counted from its last (0). NOTE: handed out one at a
// time (dynamic), each piece's last tasks first: a causal tile's cost grows with its position, and
// at::parallel_for's even split left one thread ~3x the other's work on a cold prompt.
template <class F>
void each_task(const std::vector<int64_t>& toff, F&& f) {
  const int64_t tasks = toff.back();
#pragma omp parallel for schedule(dynamic, 1) num_threads(at::get_num_threads())
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t i = std::upper_bound(toff.begin(), toff.end(), t) - toff.begin() - 1;
    f(i, toff[i + 1] - 1 - t);
  }
}

struct Args {
  at::Tensor tables, cu, seqlens;  // contiguous int32 copies (or the tensors themselves)
  int64_t group, dim;              // query heads per KV head, head dim
};

inline Args check(const char* op, const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc,
                  const at::Tensor& tables, const at::Tensor& cu, const at::Tensor& seqlens, const at::Tensor& out,
                  at::ScalarType dtype = at::kBFloat16) {
  TORCH_CHECK(q.is_contiguous() && kc.is_contiguous() && vc.is_contiguous() && out.is_contiguous(), op,
              ": q, caches and out must be contiguous");
  TORCH_CHECK(q.scalar_type() == dtype && kc.scalar_type() == dtype && vc.scalar_type() == dtype &&
              out.scalar_type() == dtype, op, ": ", c10::toString(dtype), " only");
  TORCH_CHECK(q.dim() == 3 && kc.dim() == 4 && vc.sizes() == kc.sizes() && q.size(2) == kc.size(3) &&
              q.size(1) % kc.size(2) == 0 && out.sizes() == q.sizes() && tables.size(0) == seqlens.size(0) &&
              cu.size(0) == seqlens.size(0) + 1, op, ": shapes do not match the contract");
  TORCH_CHECK(tables.scalar_type() == at::kInt && seqlens.scalar_type() == at::kInt && cu.scalar_type() == at::kInt,
              op, ": block_tables, cu_seqlens_q and seqlens_k must be int32");
  Args a{tables.contiguous(), cu.contiguous(), seqlens.contiguous(), q.size(1) / kc.size(2), q.size(2)};
  const int32_t* tp = a.tables.data_ptr<int32_t>();
  const int32_t* cp = a.cu.data_ptr<int32_t>();
  const int32_t* lp = a.seqlens.data_ptr<int32_t>();
  const int64_t b = a.seqlens.size(0), mb = a.tables.size(1), bs = kc.size(1);
  TORCH_CHECK(cp[0] == 0 && cp[b] == q.size(0), op, ": cu_seqlens_q must run from 0 to n");
  for (int64_t i = 0; i < b; ++i) {
    const int64_t q_len = cp[i + 1] - cp[i], len = lp[i];
    TORCH_CHECK(0 <= q_len && q_len <= len, op, ": request ", i, " has ", q_len, " queries for ", len, " keys");
    TORCH_CHECK(len <= mb * bs, op, ": a context of ", len, " keys exceeds its block table");
    for (int64_t k = 0; k < (len + bs - 1) / bs; ++k) {
      const int64_t id = tp[i * mb + k];
      TORCH_CHECK(0 <= id && id < kc.size(0), op, ": block id ", id, " outside the pool");
    }
  }
  return a;
}

}  // namespace prism_prefill
