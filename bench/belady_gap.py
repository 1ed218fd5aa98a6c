"""``python -m bench.belady_gap``: where a policy's hits fall short of the Belady bound on a Mooncake trace.

The replay of :mod:`bench.replay`, then, in its admission order:

1. **lost hits**: per request, the blocks Belady hits and the policy does not, by the block's last earlier
   use: how many admissions ago (the queue window W reaches ``<= W``), whether it was the block's only earlier
   use (a prompt's first reuse) and whether the request extends that earlier prompt whole (``continuation``: a
   session's next turn) or shares only a prefix of it (``branch``: another request on a shared document or
   system prompt, or a prompt whose end was rewritten);
2. **dead cache**: every ``--sample`` admissions, the policy's cached blocks by their uses so far (once, or
   more) and their next use (within W, 4W, later, never): what admission control or bypass could free;
3. with ``--oracle``, a second replay in which the same scheduler's cache evicts by next use in the first
   replay's admission order (:class:`NextUseOracle`): what retention alone could reach if it knew the future
   (the order drifts from the first one, so the oracle is close to, not exactly, Belady's choice);
4. with ``--return-oracle``, replays in which DART's predicted tier is replaced by the truth about *whether*
   a block is used again (ever, or within a horizon of admissions), not *when* (:class:`ReturnOracle`): the
   ceiling of any online predictor of returns that feeds that tier.

    python -m bench.belady_gap TRACE --capacity-tokens 1000000 [--param KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
from collections import Counter
from collections.abc import Sequence

from bench.replay import TraceRequest, load_mooncake, replay
from prism_cache.belady import belady_hits
from prism_cache.hashing import block_hashes
from prism_cache.node import Node
from prism_cache.policies.base import RetentionPolicy
from prism_cache.policies.dart import DartPolicy
from prism_cache.watched import Watched
from router_py.scheduling.interface import SchedulerConfig
from router_py.scheduling.registry import QueueScheduler, make_scheduler

NEXT_USE = ("<=W", "<=4W", "later", "never")


def _band(distance: int, window: int) -> str:
    return NEXT_USE[0] if distance <= window else NEXT_USE[1] if distance <= 4 * window else NEXT_USE[2]


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of two chained-hash lists (chained: once they differ they differ on)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[mid - 1] == b[mid - 1]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def lost_hits(
    hashes: Sequence[Sequence[int]], policy_blocks: Sequence[int], bound_blocks: Sequence[int], window: int
) -> Counter[tuple[str, str, str]]:
    """Blocks the bound hits and the policy does not, per (``first reuse`` | ``reused before``,
    ``continuation`` | ``branch``, distance band), everything in admission order. ``hashes``: each admitted
    prompt's chained block hashes; ``*_blocks``: the leading blocks each one hit."""
    last: dict[int, int] = {}  # hash -> admission index of its latest use
    uses: Counter[int] = Counter()
    out: Counter[tuple[str, str, str]] = Counter()
    for i, (hs, got, best) in enumerate(zip(hashes, policy_blocks, bound_blocks)):
        for h in hs[got:best]:
            j = last[h]  # the bound hit it, so an earlier request used it
            kind = "first reuse" if uses[h] == 1 else "reused before"
            link = "continuation" if _common(hs, hashes[j]) == len(hashes[j]) else "branch"
            out[kind, link, _band(i - j, window)] += 1
        for h in hs:
            last[h] = i
            uses[h] += 1
    return out


def dead_cache(
    hashes: Sequence[Sequence[int]], samples: Sequence[tuple[int, set[int]]], window: int
) -> Counter[tuple[str, str]]:
    """Cached blocks per (``used once`` | ``used 2+`` so far, next use), summed over ``samples`` of
    (admissions so far, cached hashes then)."""
    at: dict[int, list[int]] = {}
    for i, hs in enumerate(hashes):
        for h in hs:
            at.setdefault(h, []).append(i)
    out: Counter[tuple[str, str]] = Counter()
    for t, cached in samples:
        for h in cached:
            uses = at.get(h, ())
            k = bisect.bisect_left(uses, t)
            used = "used once" if k <= 1 else "used 2+"
            out[used, NEXT_USE[3] if k == len(uses) else _band(uses[k] - t + 1, window)] += 1
    return out


class NextUseOracle:
    """A retention policy that evicts the block whose next use, in a given admission order, is furthest (never
    used again first); ``admitted`` must follow the replay (``after_step``). Keys are not stable: when the
    replay's order drifts from the foreseen one, a foreseen use can pass without touching the block."""

    name = "next-use-oracle"
    stable_keys = False

    def __init__(self, hashes: Sequence[Sequence[int]]) -> None:
        """``hashes``: each admitted prompt's chained block hashes, in the admission order to foresee."""
        self.admitted = 0
        self._uses: dict[int, list[int]] = {}
        for i, hs in enumerate(hashes):
            for h in hs:
                self._uses.setdefault(h, []).append(i)

    def demand_tables(self) -> tuple[Watched, ...]:
        return ()

    def key(self, node: Node, n_blocks: int, tick: int) -> tuple[float, ...]:
        uses = self._uses.get(node.hashes[n_blocks - 1], ())
        k = bisect.bisect_left(uses, self.admitted)
        return (-(uses[k] if k < len(uses) else float("inf")),)


class ReturnOracle(NextUseOracle):
    """A policy's key with the truth about a block's return put in DART's predicted tier: under DART,
    ``(demand, used again within horizon admissions (0/1), history, recency)``; under another policy, the flag
    first. ``horizon`` None: ever. It knows whether, not when (within the horizon): what a perfect return
    predictor would give the policy."""

    name = "return-oracle"

    def __init__(self, hashes: Sequence[Sequence[int]], policy: RetentionPolicy, horizon: int | None) -> None:
        super().__init__(hashes)
        self._policy, self._horizon = policy, horizon
        self._after = 1 if isinstance(policy, DartPolicy) else 0  # where the flag goes: after DART's demand

    def demand_tables(self) -> tuple[Watched, ...]:
        return self._policy.demand_tables()

    def key(self, node: Node, n_blocks: int, tick: int) -> tuple[float, ...]:
        own = tuple(self._policy.key(node, n_blocks, tick))
        nxt = -super().key(node, n_blocks, tick)[0]
        back = nxt < float("inf") and (self._horizon is None or nxt - self.admitted < self._horizon)
        return (*own[: self._after], float(back), *own[self._after :])


def oracle_hit_rate(
    requests: Sequence[TraceRequest],
    scheduler: QueueScheduler,
    foreseen: Sequence[int],
    capacity_tokens: int,
    window: int = 256,
    prefill_tokens: int = 16384,
    return_horizon: int | None = None,
) -> tuple[float, float]:
    """(hit rate, Belady bound for its own order) of ``scheduler`` (fresh) replaying ``requests`` with its
    cache evicting by :class:`NextUseOracle` over the admission order ``foreseen`` (trace indices), or, with
    ``return_horizon``, by :class:`ReturnOracle` over the scheduler's own policy with that horizon (0:
    ever)."""
    allocator = scheduler.allocator
    assert allocator is not None
    bs = allocator.block_size
    hashes = [block_hashes("", requests[i].tokens(), bs) for i in foreseen]
    oracle = (
        NextUseOracle(hashes)
        if return_horizon is None
        else ReturnOracle(hashes, allocator._policy, return_horizon or None)
    )
    allocator._policy = oracle  # NOTE: a benchmark's swap; the scheduler still reads its own demand tables

    def step(admitted: int) -> None:
        oracle.admitted = admitted

    result = replay(requests, scheduler, window, prefill_tokens, capacity_tokens, after_step=step)
    seq = [requests[i] for i in result.order]
    bound = belady_hits([r.units(bs) for r in seq], capacity_tokens // bs)
    total = max(1, result.prompt_tokens)
    return result.hit_tokens / total, sum(min(h * bs, r.input_length - 1) for h, r in zip(bound, seq)) / total


def gap_report(
    requests: Sequence[TraceRequest],
    scheduler: QueueScheduler,
    capacity_tokens: int,
    window: int = 256,
    prefill_tokens: int = 16384,
    sample_every: int = 200,
) -> dict[str, object]:
    """Replay ``requests`` through ``scheduler`` and split the distance to the bound (see the module
    docstring); shares are of all prompt tokens (lost hits) and of all sampled cached blocks (dead cache);
    ``order``: the admission order (trace indices)."""
    allocator = scheduler.allocator
    assert allocator is not None
    bs = allocator.block_size
    samples: list[tuple[int, set[int]]] = []

    def sample(admitted: int) -> None:
        if admitted // sample_every > len(samples):
            samples.append((admitted, allocator.cached_hashes()))

    result = replay(requests, scheduler, window, prefill_tokens, capacity_tokens, after_step=sample)
    seq = [requests[i] for i in result.order]
    bound = belady_hits([r.units(bs) for r in seq], capacity_tokens // bs)
    hashes = [block_hashes("", r.tokens(), bs) for r in seq]
    capped = [min(b, (r.input_length - 1) // bs) for b, r in zip(bound, seq)]  # cache_len <= input - 1
    lost = lost_hits(hashes, [h // bs for h in result.hits], capped, window)
    dead = dead_cache(hashes, samples, window)
    total, cached = max(1, result.prompt_tokens), max(1, sum(dead.values()))
    return {
        "hit_rate": result.hit_tokens / total,
        "belady_hit_rate": sum(min(h * bs, r.input_length - 1) for h, r in zip(bound, seq)) / total,
        "lost": {" / ".join(k): n * bs / total for k, n in sorted(lost.items())},
        "cached_by_next_use": {" / ".join(k): n / cached for k, n in sorted(dead.items())},
        "order": result.order,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.belady_gap", description=__doc__.split("\n")[0])
    parser.add_argument("trace")
    parser.add_argument("--capacity-tokens", type=int, required=True)
    parser.add_argument("--config", default="qas+dart", help="scheduler+policy")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--limit", type=int, default=None, help="the first N requests only")
    parser.add_argument("--sample", type=int, default=200, help="admissions between cache samples")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="scheduler param")
    parser.add_argument("--oracle", action="store_true", help="also replay with next-use eviction")
    parser.add_argument(
        "--return-oracle", type=int, action="append", default=[], metavar="H",
        help="also replay the policy told whether each block is used again within H admissions (0: ever)",
    )
    args = parser.parse_args(argv)
    sched, _, policy = args.config.partition("+")
    params = {"qas_window": float(args.window)}
    params.update({k: float(v) for k, _, v in (p.partition("=") for p in args.param)})
    num_blocks = args.capacity_tokens // args.block_size + 1
    config = SchedulerConfig(sched, policy, True, num_blocks, args.block_size, params=params)
    scheduler = make_scheduler(config)
    assert isinstance(scheduler, QueueScheduler)
    requests = load_mooncake(args.trace, args.limit)
    report = gap_report(requests, scheduler, args.capacity_tokens, args.window, sample_every=args.sample)
    order = report.pop("order")
    if args.oracle:
        fresh = make_scheduler(config)
        assert isinstance(fresh, QueueScheduler) and isinstance(order, list)
        hit, bound = oracle_hit_rate(requests, fresh, order, args.capacity_tokens, args.window)
        report.update(oracle_hit_rate=hit, oracle_belady_hit_rate=bound)
    for h in args.return_oracle:
        fresh = make_scheduler(config)
        assert isinstance(fresh, QueueScheduler) and isinstance(order, list)
        hit, bound = oracle_hit_rate(
            requests, fresh, order, args.capacity_tokens, args.window, return_horizon=h
        )
        name = f"return_oracle_{h or 'ever'}"
        report[name] = {"hit_rate": hit, "belady_hit_rate": bound, "ratio": hit / bound}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
