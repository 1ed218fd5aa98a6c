"""The replica routers the data-parallel simulator compares (:mod:`bench.dp_sim`), each over N replicas:

- ``round-robin``: request i to replica i mod N.
- ``session-sticky``: a session to one replica (a stable hash of the session key, the request's first
  segment: a Mooncake conversation's first block, a multi-turn session's system prompt + history head).
- ``sglang-approx``: SGLang's router ``cache_aware`` policy: an approximate tree per replica of the prompts
  routed there (not what the replica cached), LRU-trimmed to ``max_tree_size`` every ``eviction_interval_s``;
  when the loads (requests in flight) are imbalanced (``max - min > balance_abs_threshold`` and
  ``max > min * balance_rel_threshold``) the least loaded replica; else the replica with the longest match when
  the match covers more than ``cache_threshold`` of the prompt, otherwise the replica with the smallest tree.
  Defaults are sgl-router's: 0.5, 32, 1.0001, 60 s, 2**24 (SGLang counts characters; here tokens, at block
  granularity).
- ``dynamo-cost``: NVIDIA Dynamo's KV router cost, ``overlap_score_weight * prefill_blocks + decode_blocks``:
  blocks of the prompt not cached on that replica (known exactly, as Dynamo knows it from KV events) plus the
  blocks of the requests active there (routed, not finished); the least cost, temperature 0 (deterministic;
  ties at random, seeded).
- ``prism``: :class:`router_py.scheduling.replica_choice.ReplicaChooser`, the server's own code.

Each router is told when a routed request gets its first token and when it ends (the simulator's forward
ends), which is what the real routers see from the responses they proxy.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from router_py.scheduling.replica_choice import PeekPrefix, ReplicaChoiceParams, ReplicaChooser

ROUTERS = ("round-robin", "session-sticky", "sglang-approx", "dynamo-cost", "prism")


@dataclass(frozen=True)
class RouteRequest:
    id: int
    prompt: Sequence[int]
    hashes: Sequence[int]  # chained block hashes of the prompt (namespace "")
    output_len: int
    session: str  # session key (sticky routing)
    arrival: float  # seconds


class Router(Protocol):
    def choose(self, req: RouteRequest) -> int: ...

    def first_token(self, request_id: int) -> None: ...

    def finished(self, request_id: int) -> None: ...


class _InFlight:
    """Per replica, requests routed and not finished (SGLang's load) and their blocks (Dynamo's)."""

    def __init__(self, n: int) -> None:
        self.requests, self.blocks = [0] * n, [0] * n
        self._where: dict[int, tuple[int, int]] = {}

    def add(self, request_id: int, replica: int, blocks: int) -> int:
        self.requests[replica] += 1
        self.blocks[replica] += blocks
        self._where[request_id] = (replica, blocks)
        return replica

    def first_token(self, request_id: int) -> None:
        pass

    def finished(self, request_id: int) -> None:
        replica, blocks = self._where.pop(request_id)
        self.requests[replica] -= 1
        self.blocks[replica] -= blocks


class RoundRobin(_InFlight):
    def choose(self, req: RouteRequest) -> int:
        return self.add(req.id, req.id % len(self.requests), 0)


class SessionSticky(_InFlight):
    def choose(self, req: RouteRequest) -> int:
        return self.add(req.id, zlib.crc32(req.session.encode()) % len(self.requests), 0)


@dataclass(frozen=True)
class SglangParams:
    cache_threshold: float = 0.5
    balance_abs_threshold: int = 32
    balance_rel_threshold: float = 1.0001
    eviction_interval_s: float = 60.0
    max_tree_size: int = 2**24  # tokens per replica tree


class SglangApprox(_InFlight):
    def __init__(self, n: int, block_size: int, params: SglangParams = SglangParams()) -> None:
        super().__init__(n)
        self.block_size, self.params = block_size, params
        self.trees: list[dict[int, float]] = [{} for _ in range(n)]  # block hash -> last routed (LRU)
        self._next_eviction = params.eviction_interval_s

    def choose(self, req: RouteRequest) -> int:
        self._maybe_evict(req.arrival)
        loads, p = self.requests, self.params
        hi, lo = max(loads), min(loads)
        if hi - lo > p.balance_abs_threshold and hi > lo * p.balance_rel_threshold:
            replica = loads.index(lo)
        else:
            matched = [self._matched(tree, req.hashes) for tree in self.trees]
            best = max(range(len(matched)), key=lambda r: (matched[r], -r))
            rate = matched[best] * self.block_size / max(1, len(req.prompt))
            sizes = [len(t) for t in self.trees]
            replica = best if rate > p.cache_threshold else sizes.index(min(sizes))
        tree = self.trees[replica]
        for h in req.hashes:
            tree[h] = req.arrival
        return self.add(req.id, replica, 0)

    @staticmethod
    def _matched(tree: dict[int, float], hashes: Sequence[int]) -> int:
        n = 0
        for h in hashes:
            if h not in tree:
                break
            n += 1
        return n

    def _maybe_evict(self, now: float) -> None:
        if now < self._next_eviction:
            return
        self._next_eviction = now + self.params.eviction_interval_s
        limit = self.params.max_tree_size // self.block_size
        for r, tree in enumerate(self.trees):
            if len(tree) > limit:
                # NOTE: a prefix's blocks are stamped at least as late as its extensions, so LRU trims leaves first
                kept = sorted(tree.items(), key=lambda kv: kv[1])[len(tree) - limit :]
                self.trees[r] = dict(kept)


class DynamoCost(_InFlight):
    def __init__(
        self, peeks: Sequence[PeekPrefix], block_size: int, overlap_score_weight: float = 1.0, seed: int = 0
    ) -> None:
        super().__init__(len(peeks))
        self.peeks, self.block_size, self.weight = list(peeks), block_size, overlap_score_weight
        self._rng = random.Random(seed)

    def choose(self, req: RouteRequest) -> int:
        bs = self.block_size
        blocks = -(-len(req.prompt) // bs)
        costs = []
        for r, peek in enumerate(self.peeks):
            prefill_blocks = blocks - peek("", req.hashes) // bs
            costs.append(self.weight * prefill_blocks + self.blocks[r])
        least = min(costs)
        replica = self._rng.choice([r for r, c in enumerate(costs) if c == least])
        return self.add(req.id, replica, -(-(len(req.prompt) + req.output_len) // bs))


class Prism:
    def __init__(
        self, peeks: Sequence[PeekPrefix], block_size: int, params: ReplicaChoiceParams,
        capacity_tokens: Sequence[int],
    ) -> None:
        self.chooser = ReplicaChooser(peeks, block_size, params, capacity_tokens)

    def choose(self, req: RouteRequest) -> int:
        return self.chooser.choose(req.id, "", req.prompt, req.hashes)

    def first_token(self, request_id: int) -> None:
        self.chooser.first_token(request_id)

    def finished(self, request_id: int) -> None:
        self.chooser.finished(request_id)


def make_router(
    name: str,
    peeks: Sequence[PeekPrefix],
    block_size: int,
    prism: ReplicaChoiceParams = ReplicaChoiceParams(),
    capacity_tokens: Sequence[int] = (),
) -> Router:
    """One of :data:`ROUTERS` over the replicas whose trees ``peeks`` read (``capacity_tokens``: their KV
    pools' tokens, which ``prism`` reads as the live working sets' bound). Raises ValueError for another."""
    n = len(peeks)
    if name == "round-robin":
        return RoundRobin(n)
    if name == "session-sticky":
        return SessionSticky(n)
    if name == "sglang-approx":
        return SglangApprox(n, block_size)
    if name == "dynamo-cost":
        return DynamoCost(peeks, block_size)
    if name == "prism":
        return Prism(peeks, block_size, prism, capacity_tokens)
    raise ValueError(f"unknown router {name!r}: one of {', '.join(ROUTERS)}")
