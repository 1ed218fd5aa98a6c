"""The tree's observer on the router side: gathers the events of one scheduling step and hands them to the
publisher as one ``EventBatch``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from router_py.kv_events.wire import RawEvent


class KvEventCollector:
    """A :class:`prism_cache.CacheObserver`. Events are plain tuples appended to a list; a batch goes out at
    :meth:`flush`. Inside a running event loop the first event of a step schedules the flush with
    ``call_soon``, so every event of one synchronous stretch of the loop (one ``next_batch`` with its
    evictions, one step's prefill publications and releases) forms one batch, without the batching loop
    knowing about events. Outside a loop (tests, the simulator) the caller flushes.

    Args: publish: ``(ts, events)`` -> None, e.g. :meth:`ZmqEventPublisher.publish`; clock: wall time for
    ``EventBatch.ts``."""

    def __init__(
        self, publish: Callable[[float, Sequence[RawEvent]], None], clock: Callable[[], float] = time.time
    ) -> None:
        self._publish, self._clock = publish, clock
        self._pending: list[RawEvent] = []
        self._scheduled = False

    def stored(
        self, namespace: str, parent_hash: int | None, hashes: Sequence[int], tokens: Sequence[int]
    ) -> None:
        self._add(("stored", namespace, parent_hash, tuple(hashes), tuple(tokens)))

    def removed(self, hashes: Sequence[int]) -> None:
        self._add(("removed", tuple(hashes)))

    def cleared(self) -> None:
        self._pending.clear()  # NOTE: what was pending is void; consumers drop everything anyway
        self._add(("cleared",))

    def _add(self, event: RawEvent) -> None:
        self._pending.append(event)
        if not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._scheduled = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Publish the pending events as one batch (nothing when none are pending)."""
        self._scheduled = False
        if self._pending:
            events, self._pending = self._pending, []
            self._publish(self._clock(), events)
