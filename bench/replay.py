"""``prism-bench replay``: a Mooncake trace through the real scheduler and allocator, no timing.

Requests are enqueued in the order logged; the scheduler sees at most ``--window`` waiting requests (a
reordering scheduler can move a request at most that far); each step admits one batch (``next_batch`` with
``--prefill-tokens`` of prefill budget and the whole capacity as token budget), reports its prompts as prefilled
(``prefill_done``), then releases them. A ``hash_id`` becomes 512 fixed token ids (id * 512 + 0..511; a partial
last block is a prefix of them). There is no clock: every request arrives at 0 and ``now`` stays 0, so QAS's
wait bound never fires and only its bypass bound (``qas_max_bypass`` later arrivals) limits reordering; timing
effects belong to the simulator. (``replay(..., tokens_per_s=R)`` runs a virtual clock instead, for timed
generated workloads: :mod:`bench.replay_workload`.)

Prints the token-weighted exact-prefix hit rate (sum of cache_len / sum of prompt tokens) beside the Belady
bound for the same admission order and capacity (:mod:`prism_cache.belady`), with cache_len capped at
``input - 1`` in both. With KV tiers (``--host-capacity-tokens``, ``--disk-capacity-tokens``) ``hit_rate``
counts hits from any tier, ``hit_rate_by_tier`` splits it, and the Belady bound is the single-tier bound at
the summed capacity (an upper bound for the tiers: moving blocks between tiers costs nothing there).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prism_cache import POLICY_NAMES
from prism_cache.belady import belady_hits
from prism_cache.tiers import TIER_NAMES, TIER_POLICIES, TierConfig
from router_py.scheduling.registry import SCHEDULERS, QueueScheduler, make_scheduler
from router_py.scheduling.interface import SchedRequest, SchedulerConfig

MOONCAKE_BLOCK = 512


@dataclass(frozen=True)
class TraceRequest:
    arrival: float  # seconds
    hash_ids: tuple[int, ...]
    input_length: int
    output_length: int

    def tokens(self) -> tuple[int, ...]:
        out: list[int] = []
        for h in self.hash_ids:
            out.extend(range(h * MOONCAKE_BLOCK, (h + 1) * MOONCAKE_BLOCK))
        return tuple(out[: self.input_length])

    def units(self, block_size: int) -> list[tuple[tuple[int, int], int]]:
        """Belady units: per hash id, the full blocks of this prompt inside it (keyed by id and block count,
        since a partial last id holds fewer blocks)."""
        out: list[tuple[tuple[int, int], int]] = []
        full = self.input_length // block_size
        for i, h in enumerate(self.hash_ids):
            n = min(full, (i + 1) * MOONCAKE_BLOCK // block_size) - i * MOONCAKE_BLOCK // block_size
            if n <= 0:
                break
            out.append(((h, i), n))
        return out


def load_mooncake(path: str, limit: int | None = None) -> list[TraceRequest]:
    """Rows in file order. Raises ValueError on a row whose hash_ids do not match its input_length."""
    rows: list[TraceRequest] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            r = json.loads(line)
            ids, n = tuple(int(h) for h in r["hash_ids"]), int(r["input_length"])
            if -(-n // MOONCAKE_BLOCK) != len(ids):
                raise ValueError(f"row {len(rows)}: {len(ids)} hash_ids for {n} tokens")
            rows.append(TraceRequest(float(r["timestamp"]) / 1000.0, ids, n, max(1, int(r["output_length"]))))
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", help="Mooncake JSONL trace")
    parser.add_argument("--capacity-tokens", type=int, required=True, help="KV capacity in tokens")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--scheduler", default="qas", choices=sorted(SCHEDULERS))
    parser.add_argument("--cache-policy", default="dart", choices=POLICY_NAMES)
    parser.add_argument("--window", type=int, default=256, help="waiting requests the scheduler can see")
    parser.add_argument("--prefill-tokens", type=int, default=16384, help="prefill budget of one batch")
    parser.add_argument("--limit", type=int, default=None, help="replay only the first N requests")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="scheduler param")
    parser.add_argument("--host-capacity-tokens", type=int, default=0, help="host KV tier, tokens (0: none)")
    parser.add_argument("--disk-capacity-tokens", type=int, default=0, help="disk KV tier, tokens (0: none)")
    parser.add_argument("--tier-policy", default="dart", choices=TIER_POLICIES, help="placement across tiers")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


@dataclass
class ReplayResult:
    order: list[int]  # trace indices in admission order
    hit_tokens: int
    prompt_tokens: int
    hits: list[int] = field(default_factory=list)  # cache_len of each admission, in admission order


def replay(
    requests: Sequence[TraceRequest],
    scheduler: QueueScheduler,
    window: int,
    prefill_tokens: int,
    capacity_tokens: int,
    tokens_per_s: float | None = None,
    after_step: Callable[[int], None] | None = None,
) -> ReplayResult:
    """Drive ``scheduler`` through ``requests`` (see the module docstring). With ``tokens_per_s``, a virtual
    clock instead: a request is enqueued only once its ``arrival`` has come, and each batch lasts its
    computed prompt tokens / ``tokens_per_s`` (so a conversation's next turn never waits beside the turn
    it extends). ``after_step(admitted so far)`` runs after each batch (to sample the cache). Raises
    RuntimeError if a request can never be admitted (larger than the capacity)."""
    result = ReplayResult([], 0, 0)
    nxt, now = 0, 0.0
    while nxt < len(requests) or scheduler.waiting_count():
        if tokens_per_s is not None and not scheduler.waiting_count():
            now = max(now, requests[nxt].arrival)
        while nxt < len(requests) and scheduler.waiting_count() < window:
            r = requests[nxt]
            if tokens_per_s is not None and r.arrival > now:
                break
            scheduler.enqueue(SchedRequest(nxt, r.tokens(), r.output_length, now), now)
            nxt += 1
        plan = scheduler.next_batch(now, prefill_tokens, capacity_tokens)
        if plan is None:
            raise RuntimeError("a waiting request does not fit the capacity even with an empty cache")
        for adm in plan.admissions:
            result.order.append(adm.request.id)
            result.hit_tokens += adm.cache_len
            result.hits.append(adm.cache_len)
            result.prompt_tokens += adm.request.input_length
            scheduler.prefill_done(adm.request.id)
        for adm in plan.admissions:
            scheduler.release(adm.request.id)
        if tokens_per_s is not None:
            now += plan.prefill_tokens / tokens_per_s
        if after_step is not None:
            after_step(len(result.order))
    return result


def belady_hit_tokens(
    requests: Sequence[TraceRequest], order: Sequence[int], capacity_blocks: int, block_size: int
) -> int:
    seq = [requests[i] for i in order]
    hits = belady_hits([r.units(block_size) for r in seq], capacity_blocks)
    return sum(min(h * block_size, r.input_length - 1) for h, r in zip(hits, seq))


def _params(pairs: Sequence[str], window: int) -> dict[str, float]:
    params = {"qas_window": float(window)}
    for pair in pairs:
        key, _, value = pair.partition("=")
        params[key] = float(value)
    return params


def run(args: argparse.Namespace) -> int:
    requests = load_mooncake(args.trace, args.limit)
    bs = args.block_size
    num_blocks = args.capacity_tokens // bs + 1  # + the reserved block 0
    tiers = TierConfig(args.host_capacity_tokens // bs, args.disk_capacity_tokens // bs, args.tier_policy)
    config = SchedulerConfig(
        args.scheduler, args.cache_policy, True, num_blocks, bs, params=_params(args.param, args.window),
        tiers=tiers if tiers.enabled else None,
    )
    scheduler = make_scheduler(config)
    assert isinstance(scheduler, QueueScheduler)
    result = replay(requests, scheduler, args.window, args.prefill_tokens, args.capacity_tokens)
    summed = num_blocks - 1 + tiers.host_blocks + tiers.disk_blocks
    bound = belady_hit_tokens(requests, result.order, summed, bs)
    prompt_tokens = max(1, result.prompt_tokens)
    out = {
        "scheduler": args.scheduler,
        "cache_policy": args.cache_policy,
        "requests": len(result.order),
        "capacity_tokens": args.capacity_tokens,
        "block_size": bs,
        "window": args.window,
        "params": config.params,
        "hit_rate": result.hit_tokens / prompt_tokens,
        "belady_hit_rate": bound / prompt_tokens,
        "prompt_tokens": result.prompt_tokens,
        "hit_tokens": result.hit_tokens,
        "evicted_blocks": scheduler.cache_stats()["evictions"],
    }
    if tiers.enabled:
        out.update(
            host_capacity_tokens=args.host_capacity_tokens,
            disk_capacity_tokens=args.disk_capacity_tokens,
            tier_policy=args.tier_policy,
            hit_rate_by_tier={TIER_NAMES[t]: n / prompt_tokens for t, n in scheduler.tier_hits.items()},
        )
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{args.scheduler}+{args.cache_policy} capacity={args.capacity_tokens} block={bs} "
            f"window={args.window} requests={out['requests']}: hit rate {out['hit_rate']:.4f}, "
            f"Belady (same order) {out['belady_hit_rate']:.4f}"
            + (f", by tier {out['hit_rate_by_tier']}" if tiers.enabled else "")
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prism-bench replay", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
