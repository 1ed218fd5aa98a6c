"""qas+dart on conversation traffic of a given think-time median and log-sd, at 0.25x / 0.5x, seeds 0-1, per
lottery span (horizons; LOTA=1 in the environment adds the adaptive span).

    [LOTA=1] python -m bench.lottery.think_time MEDIAN_S SPAN,SPAN,... [SIGMA]
"""
import sys
from dataclasses import replace
from bench.replay_workload import replay_point, replay_requests, working_set_tokens
from bench.workloads import WorkloadSpec, build
from bench.workloads.conversation import ConversationParams
from prism_cache import session_return
gm = float(sys.argv[1]); sig = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0; spans = [float(x) for x in sys.argv[2].split(",")]
for seed in (0, 1):
    reqs = replay_requests(build(WorkloadSpec("conversation", seed=seed, conversation=replace(ConversationParams(), gap_median_s=gm, gap_sigma=sig))))
    work = working_set_tokens(reqs, 16)
    for x in (0.25, 0.5):
        out = []
        for sp in spans:
            session_return.LOT_SPAN = sp
            r = replay_point(reqs, "qas+dart", int(x * work), 32, utilization=0.8, bound=(sp == spans[0]))
            if sp == spans[0]: bel = r["belady_hit_rate"]
            out.append("LOT=%g %.2f%% (%.3f)" % (sp, 100 * r["hit_rate"], r["hit_rate"] / bel))
        print("gap_median %g sigma %g seed %d %gx Belady %.2f%%: " % (gm, sig, seed, x, 100 * bel) + ", ".join(out), flush=True)
