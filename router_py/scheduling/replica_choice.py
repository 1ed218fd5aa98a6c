"""Which replica serves a request: PRISM's cache-aware choice among the shard groups one router drives
(``--data-parallel N``, docs/data-parallel.md).

The router owns every replica's tree, so what each replica has cached for a prompt is known exactly
(``Scheduler.peek_prefix``), not guessed from past routing as SGLang's gateway does. Each replica's load is
the work the router has sent it and not yet seen done: prompt tokens still to prefill (each request's uncached
part, until its first token) plus ``decode_tokens`` per running request. Among the replicas that keep the
imbalance bound, a request goes to the one that

1. reuses the most of its prompt (cached in that replica's tree, or in flight there: below);
2. then is the prompt's home: the replica that last took a prompt sharing more than half of this one
   (remembered routing, :class:`HomeMemory`; SGLang's threshold), so a conversation whose history was
   evicted everywhere goes back where its earlier turns went instead of moving: each conversation keeps one
   replica, as SGLang's approximate trees keep it (docs/data-parallel.md: what this changed);
3. then is under the least cache pressure: the uncached prompt tokens it took in lately (``written``,
   halving every ``written_half_life`` routed requests) plus its live working set, the prompt tokens homed
   there among the most recently routed prefixes that all replicas' caches together could hold (what its
   conversations will come back for). A new prefix goes where it displaces the least, so every replica
   keeps its prefixes about as long, and a replica holding a large live conversation is not handed more;
4. then is the least loaded; then round-robin.

The bound: a replica whose load plus this request's new tokens would exceed the least loaded replica's load by
more than ``max_imbalance_tokens`` is not eligible (the least loaded replica always is). So affinity may queue
a request behind at most that much extra work, and no replica drifts further than that from the others.

Prompts routed but not yet prefilled count as cached on their replica ("in flight"): a burst of requests
sharing a new prefix goes to one replica, where the first one's prefill serves the others, instead of being
spread before any of them reached a tree. Plain Python over ints; no clock, no I/O, so the simulator
(:mod:`bench.dp_sim`) runs the server's code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prism_cache import block_hashes

PeekPrefix = Callable[[str, Sequence[int]], int]  # (namespace, block hashes) -> cached prefix tokens


@dataclass(frozen=True)
class ReplicaChoiceParams:
    """Knobs of :class:`ReplicaChooser` (the measurements behind the defaults: docs/data-parallel.md)."""

    # NOTE: 2**19, about SGLang's 32-request bound in tokens of the Mooncake trace's mean prompt (15k)
    max_imbalance_tokens: int = 524_288  # the bound: load after the choice <= least load + this
    decode_tokens: int = 64  # load of one running request beyond its prefill
    written_half_life: int = 1_000  # routed requests after which a replica's written tokens count half
    home_share: float = 0.5  # a remembered prefix names the home when it covers more than this of the prompt
    home_stride_tokens: int = 512  # routing is remembered at prefix lengths that are multiples of this
    home_entries: int = 1 << 17  # remembered prefixes (LRU): 2**17 x 512 tokens = 64M tokens of prompts

    def __post_init__(self) -> None:
        if self.max_imbalance_tokens < 0 or self.decode_tokens < 0 or self.written_half_life < 1:
            raise ValueError("max_imbalance_tokens and decode_tokens must be >= 0, written_half_life >= 1")
        if not 0 <= self.home_share < 1 or self.home_stride_tokens < 1 or self.home_entries < 0:
            raise ValueError("home_share must be in [0, 1), home_stride_tokens >= 1, home_entries >= 0")


@dataclass
class _Routed:
    replica: int
    prefill: int  # tokens counted in the replica's prefill load until the first token
    inflight: list[int]  # block hashes counted as in flight on the replica until the first token


@dataclass
class ReplicaLoad:
    """What the router sent one replica and has not seen done."""

    prefill_tokens: int = 0  # uncached prompt tokens of requests still before their first token
    running: int = 0  # requests routed and not finished
    written: float = 0.0  # uncached prompt tokens routed here, decayed: what this replica's tree takes in lately
    inflight: dict[int, int] = field(default_factory=dict)  # block hash -> routed requests not yet prefilled

    def tokens(self, decode_tokens: int) -> int:
        return self.prefill_tokens + decode_tokens * self.running

    def inflight_blocks(self, hashes: Sequence[int]) -> int:
        """Leading blocks of ``hashes`` that a request routed here and not yet prefilled also starts with."""
        n = 0
        for h in hashes:
            if h not in self.inflight:
                break
            n += 1
        return n


class HomeMemory:
    """Where prompts were routed, by prefix: the chained hash of every ``stride``-th block of each routed
    prompt maps to the replica that took it last, LRU-bounded to ``entries`` prefixes. This is what SGLang's
    gateway keeps as its approximate trees; here it only breaks ties between replicas whose exact caches
    are equal, so it never outranks what a replica really holds. ``live[r]``: how many of the ``window``
    most recently routed prefixes are homed at replica r."""

    def __init__(self, stride: int, entries: int, replicas: int, window: int) -> None:
        self.stride, self.entries, self.window = stride, entries, window
        self._replica: dict[int, int] = {}  # NOTE: insertion order is recency (oldest first)
        self._recent: dict[int, int] = {}  # the last ``window`` of them, likewise
        self.live = [0] * replicas

    def home(self, hashes: Sequence[int], min_blocks: int) -> int | None:
        """The replica that last took the longest remembered prefix of ``hashes``, if that prefix has more
        than ``min_blocks`` blocks; else None."""
        home, depth = None, 0
        for i in range(self.stride - 1, len(hashes), self.stride):
            replica = self._replica.get(hashes[i])
            if replica is None:
                break
            home, depth = replica, i + 1
        return home if depth > min_blocks else None

    def routed(self, hashes: Sequence[int], replica: int) -> None:
        for i in range(self.stride - 1, len(hashes), self.stride):
            self._replica.pop(hashes[i], None)
            self._replica[hashes[i]] = replica
            was = self._recent.pop(hashes[i], None)
            if was is not None:
                self.live[was] -= 1
            self._recent[hashes[i]] = replica
            self.live[replica] += 1
        while len(self._replica) > self.entries:
            del self._replica[next(iter(self._replica))]
        while len(self._recent) > self.window:
            self.live[self._recent.pop(next(iter(self._recent)))] -= 1


class ReplicaChooser:
    """Chooses replicas and keeps their loads. ``peeks[r]`` reads replica r's tree (exact, touching nothing);
    ``block_size`` is the replicas' block size (equal for all); ``capacity_tokens[r]`` the tokens replica r's
    KV pool holds (their sum bounds the live working sets; without it there are none, only ``written``).

    Call :meth:`choose` when a request arrives, :meth:`first_token` when its first token comes back and
    :meth:`finished` when it ends (also after a failure; both ignore unknown ids and repeated calls)."""

    def __init__(
        self,
        peeks: Sequence[PeekPrefix],
        block_size: int,
        params: ReplicaChoiceParams = ReplicaChoiceParams(),
        capacity_tokens: Sequence[int] = (),
    ) -> None:
        if not peeks:
            raise ValueError("no replica to choose from")
        self.peeks, self.block_size, self.params = list(peeks), block_size, params
        self.loads = [ReplicaLoad() for _ in peeks]
        self._routed: dict[int, _Routed] = {}
        self._turn = 0  # full ties go round-robin from here
        stride = max(1, params.home_stride_tokens // block_size)
        self._entry_tokens = stride * block_size
        window = sum(capacity_tokens) // self._entry_tokens
        self._homes = HomeMemory(stride, params.home_entries, len(peeks), window)
        self._decay = 0.5 ** (1 / params.written_half_life)

    def load(self, replica: int) -> int:
        return self.loads[replica].tokens(self.params.decode_tokens)

    def choose(
        self,
        request_id: int,
        namespace: str,
        prompt: Sequence[int],
        hashes: Sequence[int] | None = None,
        down: Sequence[bool] = (),
    ) -> int:
        """The replica for this request (recorded as routed there). ``hashes``: the prompt's block hashes
        when the caller has them; ``[]`` when the request must not use the cache (it then goes by load).
        ``down[r]``: replica r has lost its shard; it is chosen only when every replica is down (a request
        sent there waits for the restart while the others could serve it). Raises ValueError if the id is
        already routed."""
        if request_id in self._routed:
            raise ValueError(f"request {request_id} is already routed")
        if hashes is None:
            hashes = block_hashes(namespace, prompt, self.block_size)
        n = len(self.loads)
        for replica_load in self.loads:
            replica_load.written *= self._decay
        loads = [self.load(r) for r in range(n)]
        candidates = [r for r in range(n) if not (down and down[r])] or list(range(n))
        floor = min(loads[r] for r in candidates)  # NOTE: over the candidates, so one of them is eligible
        home = self._homes.home(hashes, int(self.params.home_share * len(prompt)) // self.block_size)
        best: tuple[int, bool, float, int, int] | None = None
        for r in candidates:
            load = loads[r]
            new = len(prompt) - self._reused(r, namespace, hashes, len(prompt))
            if load > floor and load + new > floor + self.params.max_imbalance_tokens:
                continue
            # NOTE: a no-cache request writes nothing and comes back for nothing
            pressure = self.loads[r].written + self._homes.live[r] * self._entry_tokens if hashes else 0
            key = (new, r != home, pressure, load, (r - self._turn) % n)  # NOTE: least new = most reused
            if best is None or key < best:
                best = key
        assert best is not None  # NOTE: a least-loaded candidate is always eligible
        replica = (best[-1] + self._turn) % n
        self._turn = (replica + 1) % n
        self._route(request_id, replica, best[0], hashes)
        self._homes.routed(hashes, replica)
        return replica

    def _reused(self, replica: int, namespace: str, hashes: Sequence[int], prompt_len: int) -> int:
        if not hashes:
            return 0
        cached = self.peeks[replica](namespace, hashes)
        inflight = self.loads[replica].inflight_blocks(hashes) * self.block_size
        return max(0, min(max(cached, inflight), prompt_len - 1))  # NOTE: the last prompt token is always computed

    def _route(self, request_id: int, replica: int, new: int, hashes: Sequence[int]) -> None:
        load = self.loads[replica]
        load.prefill_tokens += new
        load.written += new if hashes else 0
        load.running += 1
        for h in hashes:
            load.inflight[h] = load.inflight.get(h, 0) + 1
        self._routed[request_id] = _Routed(replica, new, list(hashes))

    def replica_of(self, request_id: int) -> int | None:
        routed = self._routed.get(request_id)
        return None if routed is None else routed.replica

    def first_token(self, request_id: int) -> None:
        """Its prompt is prefilled: no longer prefill load, and in the tree rather than in flight."""
        routed = self._routed.get(request_id)
        if routed is None:
            return
        load = self.loads[routed.replica]
        load.prefill_tokens -= routed.prefill
        for h in routed.inflight:
            left = load.inflight[h] - 1
            if left:
                load.inflight[h] = left
            else:
                del load.inflight[h]
        routed.prefill, routed.inflight = 0, []

    def finished(self, request_id: int) -> None:
        """It ended (or failed, or its client left): its replica's load drops."""
        if request_id not in self._routed:
            return
        self.first_token(request_id)
        routed = self._routed.pop(request_id)
        self.loads[routed.replica].running -= 1
