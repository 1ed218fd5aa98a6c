"""Tables keyed by chained block hash that tell watchers which hashes changed (demand and popularity)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class Watcher(Protocol):
    """Told of changed hashes (a ``set[int]`` is one)."""

    def update(self, hashes: Iterable[int], /) -> None: ...


class Watched:
    """A table keyed by chained block hash whose changes the radix tree watches, to re-key only the leaves whose
    tail entry changed (its persistent eviction heap; see ``RadixTree._candidates``)."""

    def __init__(self) -> None:
        self._watchers: list[Watcher] = []

    def watch(self, changed: Watcher) -> None:
        """From now on, give ``changed.update`` each hash whose count changes (a set: its owner drains it)."""
        if not any(w is changed for w in self._watchers):
            self._watchers.append(changed)

    def unwatch(self, changed: Watcher) -> None:
        self._watchers = [w for w in self._watchers if w is not changed]

    def _notify(self, hashes: Iterable[int]) -> Iterable[int]:
        if not self._watchers:
            return hashes
        if not isinstance(hashes, (list, tuple)):
            hashes = list(hashes)  # a generator would be read twice: by the watchers, then the counts
        for w in self._watchers:
            w.update(hashes)
        return hashes
