"""``python -m bench.workload_gap``: the oracles of :mod:`bench.belady_gap` on a generated workload.

The replay of :mod:`bench.replay_workload` (timed workloads on the virtual clock), then, in its admission
order, the same scheduler with its cache evicting by next use (:class:`bench.belady_gap.NextUseOracle`) and
with DART's predicted tier replaced by the truth about whether each block is used again within H admissions
(:class:`bench.belady_gap.ReturnOracle`; 0: ever): what retention could reach knowing the future, and what
a perfect online return predictor could. Each line: hit rate, its own Belady bound, ratio.

    python -m bench.workload_gap --workload conversation --capacity-x 0.25 --return-oracle 0 \
        --return-oracle 64
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from bench.belady_gap import NextUseOracle, ReturnOracle
from bench.replay import _params, replay
from bench.replay_workload import (
    _Replayed, belady_hit_tokens, prefill_rate, replay_requests, working_set_tokens,
)
from bench.workloads import WorkloadSpec, build
from prism_cache.hashing import block_hashes
from router_py.scheduling.interface import SchedulerConfig
from router_py.scheduling.registry import QueueScheduler, make_scheduler


def _run(
    requests: Sequence[_Replayed],
    make: Callable[[], QueueScheduler],
    capacity_tokens: int,
    window: int,
    rate: float | None,
    oracle: Callable[[QueueScheduler], NextUseOracle] | None = None,
) -> tuple[list[int], float, float]:
    """(admission order, hit rate, Belady bound for that order) of a fresh scheduler, its cache evicting by
    ``oracle(scheduler)`` if given."""
    scheduler = make()
    step = None
    if oracle is not None:
        assert scheduler.allocator is not None
        policy = oracle(scheduler)
        scheduler.allocator._policy = policy  # NOTE: a benchmark's swap, as in bench.belady_gap

        def step(admitted: int) -> None:
            policy.admitted = admitted

    bs = scheduler.allocator.block_size if scheduler.allocator is not None else 16
    longest = max(len(r.prompt) + r.output_length for r in requests)
    result = replay(requests, scheduler, window, 16384, max(capacity_tokens, longest), rate, after_step=step)
    total = max(1, result.prompt_tokens)
    best = belady_hit_tokens(requests, result.order, capacity_tokens // bs, bs) / total
    return result.order, result.hit_tokens / total, best


def workload_gap(
    requests: Sequence[_Replayed],
    config: SchedulerConfig,
    capacity_tokens: int,
    window: int,
    rate: float | None,
    horizons: Sequence[int] = (),
) -> dict[str, dict[str, float]]:
    """The policy's row, the next-use oracle's, and one per return-oracle horizon (0: ever)."""

    def make() -> QueueScheduler:
        s = make_scheduler(config)
        assert isinstance(s, QueueScheduler)
        return s

    def row(hit: float, bound: float) -> dict[str, float]:
        return {"hit_rate": hit, "belady_hit_rate": bound, "ratio": hit / max(1e-9, bound)}

    order, hit, bound = _run(requests, make, capacity_tokens, window, rate)
    hashes = [block_hashes("", requests[i].prompt, config.block_size) for i in order]
    out = {"policy": row(hit, bound)}
    _, hit, bound = _run(requests, make, capacity_tokens, window, rate, lambda s: NextUseOracle(hashes))
    out["next_use_oracle"] = row(hit, bound)
    for h in horizons:

        def told(s: QueueScheduler, h: int = h) -> NextUseOracle:
            assert s.allocator is not None
            return ReturnOracle(hashes, s.allocator._policy, h or None)

        _, hit, bound = _run(requests, make, capacity_tokens, window, rate, told)
        out[f"return_oracle_{h or 'ever'}"] = row(hit, bound)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workload_gap", description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="conversation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--capacity-x", type=float, default=0.25, help="x the working set")
    parser.add_argument("--config", default="qas+dart", help="scheduler+policy")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--utilization", type=float, default=0.8, help="virtual clock's load (0: no clock)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="scheduler param")
    parser.add_argument(
        "--return-oracle", type=int, action="append", default=[], metavar="H",
        help="also replay the policy told whether each block is used again within H admissions (0: ever)",
    )
    args = parser.parse_args(argv)
    requests = replay_requests(build(WorkloadSpec(args.workload, None, args.seed)))
    capacity = int(args.capacity_x * working_set_tokens(requests, args.block_size))
    sched, _, policy = args.config.partition("+")
    params = _params(args.param, args.window)
    blocks = capacity // args.block_size + 1
    config = SchedulerConfig(sched, policy, True, blocks, args.block_size, params=params)
    rate = prefill_rate(requests, args.utilization) if args.utilization else None
    report = workload_gap(requests, config, capacity, args.window, rate, args.return_oracle)
    print(json.dumps({"capacity_tokens": capacity, **report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
