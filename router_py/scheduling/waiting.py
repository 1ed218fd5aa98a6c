"""The waiting queue: arrival-ordered entries with what each scheduler caches about them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

from router_py.scheduling.interface import SchedRequest


@dataclass(eq=False)
class Waiting:
    """One queued request.

    tokens: the prompt as a tuple (the radix tree's key type); uses_cache: the request queries the prefix
    cache (a cache exists, is on, and the request allows it), so it counts in the hit statistics even when its
    prompt is shorter than one block; hashes: chained hashes of its full blocks, [] when it does not use the
    cache or has no full block (nothing to match or insert then); bypassed: later arrivals admitted while it
    waited (QAS's starvation count);
    peek/peek_version: its cached-prefix length in tokens and the tree version it was computed at.
    """

    request: SchedRequest
    seq: int
    tokens: tuple[int, ...]
    hashes: list[int]
    uses_cache: bool
    bypassed: int = 0
    peek: int = 0
    peek_version: int = -1


class WaitingQueue:
    """Insertion-ordered map id -> entry: O(1) append, remove by id, and ordered iteration from the head."""

    def __init__(self) -> None:
        self._entries: dict[int, Waiting] = {}
        self._next_seq = 0

    def push(
        self, request: SchedRequest, tokens: tuple[int, ...], hashes: list[int], uses_cache: bool
    ) -> Waiting:
        """Raises ValueError if the id is already waiting, or on ``hashes`` without ``uses_cache``."""
        if hashes and not uses_cache:
            raise ValueError("block hashes given for a request that does not use the cache")
        if request.id in self._entries:
            raise ValueError(f"request {request.id} is already waiting")
        entry = Waiting(request, self._next_seq, tokens, hashes, uses_cache)
        self._next_seq += 1
        self._entries[request.id] = entry
        return entry

    def pop(self, request_id: int) -> Waiting | None:
        return self._entries.pop(request_id, None)

    def head(self, n: int) -> list[Waiting]:
        """The first n entries in arrival order (O(n))."""
        return list(islice(self._entries.values(), n))

    def __iter__(self) -> Iterator[Waiting]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
