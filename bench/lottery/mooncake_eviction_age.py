"""Eviction age (admissions since the last request covering it) under qas+dart on the Mooncake trace.

    python -m bench.lottery.mooncake_eviction_age CAPACITY_TOKENS
"""
import sys
from bench import replay as rp
from prism_cache import radix_tree, session_return
from router_py.scheduling.interface import SchedulerConfig
from router_py.scheduling.registry import make_scheduler
cap = int(sys.argv[1])
reqs = rp.load_mooncake('/work/shared/traces/mooncake_synthetic_trace.jsonl')
state = {"n": 0}; last = {}; ages = []
orig_obs = session_return.SessionReturn.observe
def obs(self, hashes, *a, **k):
    state["n"] += 1
    for h in hashes: last[h] = state["n"]
    return orig_obs(self, hashes, *a, **k)
session_return.SessionReturn.observe = obs
class Rec:
    def stored(self, *a): pass
    def removed(self, hashes):
        for h in hashes:
            if h in last: ages.append(state["n"] - last[h])
    def cleared(self): pass
orig_init = radix_tree.RadixTree.__init__
def init(self, *a, **k):
    orig_init(self, *a, **k); self._observer = Rec()
radix_tree.RadixTree.__init__ = init
bs = 16
sched = make_scheduler(SchedulerConfig("qas", "dart", True, cap // bs + 1, bs, params={"qas_window": 256.0}))
res = rp.replay(reqs, sched, 256, 16384, cap)
print("hit", res.hit_tokens / res.prompt_tokens)
ages.sort(); q = lambda p: ages[int(p * (len(ages) - 1))]
print("evicted blocks", len(ages), "age quantiles (admissions) 10%% %d 25%% %d 50%% %d 75%% %d 90%% %d" % tuple(q(p) for p in (.1,.25,.5,.75,.9)))
