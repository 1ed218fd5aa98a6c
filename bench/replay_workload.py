"""``prism-bench replay-workload``: a generated workload (``zipf-rag``, ``multi-turn``, ``conversation``,
``agent``) through the real scheduler and allocator, beside the Belady bound: the model of
:mod:`bench.replay` (requests enqueued in arrival order, at most ``--window`` waiting, one batch a step),
with the prompt tokens of :mod:`bench.workloads.token_ids` and the Belady units per block (keyed by chained
block hash). Timed workloads (conversation, agent) replay on a virtual clock (``--utilization``): a turn is
enqueued at its arrival, after the turn it extends has run, as on a server.

    python -m bench.replay_workload --workload conversation --capacity-x 0.25 --utilization 0.8
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from bench import configs
from bench.replay import replay
from bench.workloads import WorkloadRequest, WorkloadSpec, build
from bench.workloads.token_ids import prompt_token_ids
from prism_cache.belady import belady_hits
from prism_cache.hashing import block_hashes
from router_py.scheduling.interface import SchedulerConfig
from router_py.scheduling.registry import QueueScheduler, make_scheduler


@dataclass(frozen=True)
class _Replayed:
    """What :func:`bench.replay.replay` reads of a request."""

    prompt: tuple[int, ...]
    output_length: int
    arrival: float

    def tokens(self) -> tuple[int, ...]:
        return self.prompt


def replay_requests(requests: Sequence[WorkloadRequest]) -> list[_Replayed]:
    return [_Replayed(tuple(prompt_token_ids(r)), r.output_len, r.arrival) for r in requests]


def prefill_rate(requests: Sequence[_Replayed], utilization: float) -> float:
    """Prompt tokens per second that a server busy ``utilization`` of the time without any cache hit needs."""
    span = requests[-1].arrival - requests[0].arrival
    if span <= 0 or utilization <= 0:
        raise ValueError("a clocked replay needs timed requests and a utilization > 0")
    return sum(len(r.prompt) for r in requests) / span / utilization


def working_set_tokens(requests: Sequence[_Replayed], block_size: int, span: int = 256) -> int:
    """The workload's working set: distinct full prompt blocks among ``span`` consecutive requests (the
    mean over consecutive spans), in tokens. 1x holds what one default queue window of requests touches."""
    sizes = []
    for i in range(0, len(requests), span):
        seen: set[int] = set()
        for r in requests[i : i + span]:
            seen.update(block_hashes("", r.prompt, block_size))
        sizes.append(len(seen))
    return int(sum(sizes) / max(1, len(sizes))) * block_size


def replay_point(
    requests: Sequence[_Replayed],
    config: str,
    capacity_tokens: int,
    window: int = 256,
    block_size: int = 16,
    prefill_tokens: int = 16384,
    params: dict[str, float] | None = None,
    bound: bool = True,
    utilization: float | None = None,
) -> dict[str, float]:
    """One configuration's exact-prefix hit rate (token-weighted, ``cache_len`` <= input - 1) and, with
    ``bound``, the Belady bound for its admission order. ``utilization``: replay on a virtual clock whose
    prefill rate keeps a cacheless server that busy (:func:`prefill_rate`); None: no clock, every request
    waiting from the start (:mod:`bench.replay`)."""
    sched, _, policy = configs.canonical(config).partition("+")
    num_blocks = capacity_tokens // block_size + 1
    knobs = {"qas_window": float(window), **(params or {})}
    scheduler = make_scheduler(SchedulerConfig(sched, policy, True, num_blocks, block_size, params=knobs))
    assert isinstance(scheduler, QueueScheduler)
    longest = max(len(r.prompt) + r.output_length for r in requests)
    rate = None if utilization is None else prefill_rate(requests, utilization)
    result = replay(requests, scheduler, window, prefill_tokens, max(capacity_tokens, longest), rate)
    total = max(1, result.prompt_tokens)
    if not bound:
        return {"hit_rate": result.hit_tokens / total}
    best = belady_hit_tokens(requests, result.order, num_blocks - 1, block_size)
    return {"hit_rate": result.hit_tokens / total, "belady_hit_rate": best / total}


def belady_hit_tokens(
    requests: Sequence[_Replayed], order: Sequence[int], capacity_blocks: int, block_size: int
) -> int:
    """Prompt tokens Belady's choice hits over ``requests`` admitted in ``order`` (indices), each capped at its
    prompt's length - 1 (:func:`bench.replay.belady_hit_tokens` for generated workloads)."""
    seq = [requests[i] for i in order]
    units = [[(h, 1) for h in block_hashes("", r.prompt, block_size)] for r in seq]
    hits = belady_hits(units, capacity_blocks)
    return sum(min(h * block_size, len(r.prompt) - 1) for h, r in zip(hits, seq))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prism-bench replay-workload", description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="conversation")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--capacity-tokens", type=int, default=None, help="default: --capacity-x x the working set"
    )
    parser.add_argument("--capacity-x", type=float, default=0.5)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--configs", default="qas+dart,fcfs+lru,lpm+lru,lpm+hotprefix,fcfs+lookahead-lru")
    parser.add_argument(
        "--utilization", type=float, default=None,
        help="replay on a virtual clock at this load (timed workloads)",
    )
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="scheduler param")
    args = parser.parse_args(argv)
    params = {k: float(v) for k, _, v in (p.partition("=") for p in args.param)}
    requests = replay_requests(build(WorkloadSpec(args.workload, args.requests, args.seed)))
    working = working_set_tokens(requests, args.block_size)
    capacity = args.capacity_tokens or int(args.capacity_x * working)
    for config in configs.parse_configs(args.configs):
        row = replay_point(
            requests, config, capacity, args.window, args.block_size, params=params,
            utilization=args.utilization,
        )
        row.update(config=config, workload=args.workload, capacity_tokens=capacity)
        row["working_set_tokens"] = working
        row["ratio"] = row["hit_rate"] / max(1e-9, row["belady_hit_rate"])
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
