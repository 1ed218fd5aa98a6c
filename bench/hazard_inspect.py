"""Development (issue 14, fifth pass): replay conversation-like workloads with the return hazard on (HZ=1) and
print what it learned; ``--dump F`` saves the tables for HZLOAD=F (frozen: the estimator's ceiling).

    HZ=1 python -m bench.hazard_inspect --workload conversation --seed 0 --capacity-x 0.25 --dump hz.pkl
"""

from __future__ import annotations

import argparse
import pickle

from bench.replay import replay
from bench.replay_workload import prefill_rate, replay_requests, working_set_tokens
from bench.workloads import WorkloadSpec, build
from router_py.scheduling.interface import SchedulerConfig
from router_py.scheduling.registry import make_scheduler


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", default="conversation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--capacity-x", type=float, default=0.25)
    ap.add_argument("--dump", default=None)
    a = ap.parse_args()
    reqs = replay_requests(build(WorkloadSpec(a.workload, None, a.seed)))
    cap = int(a.capacity_x * working_set_tokens(reqs, 16))
    sc = make_scheduler(SchedulerConfig("qas", "dart", True, cap // 16 + 1, 16, params={"qas_window": 32.0}))
    longest = max(len(r.prompt) + r.output_length for r in reqs)
    res = replay(reqs, sc, 32, 16384, max(cap, longest), prefill_rate(reqs, 0.8))
    sr = sc.allocator._demand.sessions  # type: ignore[union-attr]
    hz = sr.hazard
    print("hit", round(res.hit_tokens / res.prompt_tokens, 4), "horizon", sr._horizon, "clock", sr._clock)
    hz._refit()
    print("rho per group", [round(r, 2) for r in hz._rho])
    for g in range(4):
        print(f"turn bucket {g + 1}: Q(age in horizons) =",
              " ".join(f"{e / hz.horizon:.2f}:{hz.probability(g, e):.3f}" for e in hz.edges[:-1]))
    print("returns per age bucket", [sum(g[j] for g in hz.returns) for j in range(len(hz.edges) - 1)])
    if a.dump:
        with open(a.dump, "wb") as f:
            pickle.dump((hz.returns, hz.exposure), f)


if __name__ == "__main__":
    main()
