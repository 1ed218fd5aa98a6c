"""SGLang's in-batch prefix deduplication, over chained block hashes.

A request whose cached match is at most ``inbatch_check_threshold`` tokens (default 32) but whose first
``inbatch_deprioritize_threshold`` tokens (default 32, rounded up to whole blocks) equal those of a request
earlier in the order is moved behind the others, so only that earlier "pioneer" computes the shared prefix in
this batch and the rest reuse it from the cache in a later one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from router_py.scheduling.waiting import Waiting


class InBatchDedup:
    def __init__(self, params: Mapping[str, float], block_size: int) -> None:
        self.check_tokens = int(params.get("inbatch_check_threshold", 32))
        deprioritize = int(params.get("inbatch_deprioritize_threshold", 32))
        self.shared_blocks = max(1, -(-deprioritize // block_size))

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
