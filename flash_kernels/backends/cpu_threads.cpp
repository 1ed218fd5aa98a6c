// Pins torch's intra-op (OpenMP) threads of the calling thread's team to CPUs, one each, for CPU shards
// (shard/cpu_affinity.py says when and to which CPUs). Built with the other CPU kernels by
// flash_kernels/backends/cpu_decode.py. Why: with two busy threads on a two-core VM, Linux at times left both
// on one core for tens of milliseconds while the other idled (docs/performance.md), a cold prefill's tail.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <sched.h>
#include <atomic>
#include <cstdint>
#include <vector>

namespace {

// Runs one parallel region of cpus.size() threads (the team's size must already be that: torch's
// set_num_threads); thread i binds itself to cpus[i]. Returns how many threads bound themselves: fewer than
// cpus.size() when the team is smaller, or a CPU is not allowed to the process (sched_setaffinity failed).
int64_t pin_team(std::vector<int64_t> cpus) {
  const int64_t n = static_cast<int64_t>(cpus.size());
  std::atomic<int64_t> pinned{0};
  // grain 1 over n items with a team of n: torch's OpenMP backend gives thread i exactly item i
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    if (end - begin != 1 || at::get_thread_num() != begin) {
      return;  // not one item per thread (a smaller team): leave the threads unpinned
    }
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(static_cast<int>(cpus[begin]), &set);
    if (sched_setaffinity(0, sizeof(set), &set) == 0) {
      pinned.fetch_add(1);
    }
  });
  return pinned.load();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(prism_kernels, m) { m.def("pin_team(int[] cpus) -> int", &pin_team); }
