"""Eviction age (s since the last request covering it) of blocks under qas+dart, generated workload replay.

    [GM=median_s] python -m bench.lottery.eviction_age conversation CAPACITY_X SEED
"""
import sys, statistics
from bench import replay_workload as rw
from bench.workloads import WorkloadSpec, build
from prism_cache import radix_tree, session_return

wl, x, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
import os
from dataclasses import replace
from bench.workloads.conversation import ConversationParams
GM = float(os.environ.get("GM", "30"))
reqs = rw.replay_requests(build(WorkloadSpec(wl, None, seed, conversation=replace(ConversationParams(), gap_median_s=GM))))
arr = [r.arrival for r in reqs]
state = {"n": 0, "t": 0.0}
last = {}
ages = []
orig_obs = session_return.SessionReturn.observe
def obs(self, hashes, *a, **k):
    state["n"] += 1
    # time: arrivals are enqueued in order, roughly: use the max arrival seen so far
    t = arr[min(state["n"] - 1, len(arr) - 1)]
    state["t"] = t
    for h in hashes:
        last[h] = t
    return orig_obs(self, hashes, *a, **k)
session_return.SessionReturn.observe = obs
class Rec:
    def stored(self, *a): pass
    def removed(self, hashes):
        for h in hashes:
            if h in last: ages.append(state["t"] - last[h])
    def cleared(self): pass
orig_init = radix_tree.RadixTree.__init__
def init(self, *a, **k):
    orig_init(self, *a, **k)
    self._observer = Rec()
radix_tree.RadixTree.__init__ = init
work = rw.working_set_tokens(reqs, 16)
row = rw.replay_point(reqs, "qas+dart", int(x * work), 32, utilization=0.8, bound=False)
ages.sort()
q = lambda p: ages[int(p * (len(ages) - 1))]
print(row, "evicted", len(ages), "age quantiles s: 10%% %.1f 25%% %.1f 50%% %.1f 75%% %.1f 90%% %.1f" % tuple(q(p) for p in (.1,.25,.5,.75,.9)))
print("span s", arr[-1]-arr[0], "requests", len(arr))
