"""SGLang's in-batch prefix deduplication, over chained block hashes.

A request whose cached match is at most ``check_threshold`` tokens but whose first ``deprioritize_threshold``
tokens (rounded up to whole blocks; both :class:`InBatchDedupParams`) equal those of a request earlier in the
order is moved behind the others, so only that earlier "pioneer" computes the shared prefix in this batch and
the rest reuse it from the cache in a later one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from router_py.scheduling.waiting import Waiting


@dataclass(frozen=True)
class InBatchDedupParams:
    """``inbatch_*`` knobs (lpm, dfs-weight)."""

    PREFIX: ClassVar[str] = "inbatch_"
    check_threshold: int = 32  # only requests with at most this many cached tokens can be followers
    deprioritize_threshold: int = 32  # shared leading tokens that make a request a follower


class InBatchDedup:
    def __init__(self, params: InBatchDedupParams, block_size: int) -> None:
        self.check_tokens = params.check_threshold
        self.shared_blocks = max(1, -(-params.deprioritize_threshold // block_size))

    def apply(self, order: list[Waiting], cached: Callable[[Waiting], int]) -> list[Waiting]:
        """Returns ``order`` with the followers moved to the end (stable within both parts)."""
        seen: set[int] = set()
        first: list[Waiting] = []
        later: list[Waiting] = []
        k = self.shared_blocks - 1
        for entry in order:
            key = entry.hashes[k] if len(entry.hashes) > k else None
            if key is not None and key in seen and cached(entry) <= self.check_tokens:
                later.append(entry)
                continue
            if key is not None:
                seen.add(key)
            first.append(entry)
        return first + later
