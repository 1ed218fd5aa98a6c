"""Gap CDF of private block reuses (system prompts left out) of a generated workload: F(T) and F(T)/T, T in s.

    [GM=median_s] python -m bench.lottery.workload_gaps conversation SEED
"""
import sys, bisect
from bench import replay_workload as rw
from bench.workloads import WorkloadSpec, build
from prism_cache.hashing import block_hashes
wl, seed = sys.argv[1], int(sys.argv[2])
import os
from dataclasses import replace
from bench.workloads.conversation import ConversationParams
GM = float(os.environ.get("GM", "30"))
reqs = rw.replay_requests(build(WorkloadSpec(wl, None, seed, conversation=replace(ConversationParams(), gap_median_s=GM))))
last = {}; gaps = []; total = 0; shared = set(); cnt = {}
for r in reqs:
    for h in block_hashes("", r.prompt, 16): cnt[h] = cnt.get(h, 0) + 1
for r in reqs:
    hs = block_hashes("", r.prompt, 16)
    for k, h in enumerate(hs):
        if k < 32 and wl == "conversation": continue  # system prompts
        total += 1
        if h in last: gaps.append(r.arrival - last[h])
        last[h] = r.arrival
gaps.sort()
print(wl, seed, "private block uses", total, "reused %.3f" % (len(gaps) / total), "median gap %.1f s" % gaps[len(gaps)//2])
for T in (2, 5, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 150):
    F = bisect.bisect_right(gaps, T) / total
    print("T %4d s F %.3f F/T*100 %.3f" % (T, F, 100 * F / T))
