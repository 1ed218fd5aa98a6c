"""The cache's observer on the router side: gathers the events of one scheduling step and hands them to the
publisher as one ``EventBatch``.

With KV tiers it also publishes each block copy the host and disk tiers take or give up (medium "CPU",
"DISK"), under the block's own chained hash, with the parent hash and token ids of its device ``BlockStored``,
so that a subscriber matches a tier copy with the device block it was. The tier index reports copies one hash
at a time; a step's consecutive copies into one medium are queued as one pending event and become
``BlockStored`` events at :meth:`KvEventCollector.flush` (:meth:`Chains.events`: one per stretch of a stored
run)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from prism_cache.tiers.types import Tier
from router_py.kv_events.chains import Chains, Run, lone_copy
from router_py.kv_events.wire import MEDIUM_GPU, MEDIUMS, RawEvent

COPIED = "copied"  # a pending event of tier copies taken, ("copied", [hashes], medium); never on the wire


class KvEventCollector:
    """A :class:`prism_cache.CacheObserver`. Events are plain tuples appended to a list; a batch goes out at
    :meth:`flush`. Inside a running event loop the first event of a step schedules the flush with
    ``call_soon``, so every event of one synchronous stretch of the loop (one ``next_batch`` with its
    evictions, one step's prefill publications and releases) forms one batch, without the batching loop
    knowing about events. Outside a loop (tests, the simulator) the caller flushes.

    Consecutive tier copies of one medium merge into one event (a demoted node's tail is one ``BlockStored``,
    as the tree's own runs are); events are never reordered.

    Args: publish: ``(ts, events)`` -> None, e.g. :meth:`ZmqEventPublisher.publish`; clock: wall time for
    ``EventBatch.ts``; tiers: the cache has host/disk tiers, so remember each block's parent and tokens for
    its tier copies' events (without it a tier copy goes out as vLLM's offloading publishes one: no parent,
    no tokens)."""

    def __init__(
        self,
        publish: Callable[[float, Sequence[RawEvent]], None],
        clock: Callable[[], float] = time.time,
        tiers: bool = False,
    ) -> None:
        self._publish, self._clock = publish, clock
        self._pending: list[RawEvent] = []
        self._scheduled = False
        self.chains = Chains() if tiers else None
        self._open: tuple[Any, ...] | None = None  # the last pending event if a tier one (it may still grow)

    # ---------------------------------------------------------------- the tree (device pool, medium GPU)
    def stored(
        self, namespace: str, parent_hash: int | None, hashes: Sequence[int], tokens: Sequence[int]
    ) -> None:
        run: Run = (namespace, parent_hash, tuple(hashes), tuple(tokens))
        self._add(("stored", *run, MEDIUM_GPU))
        if self.chains is not None:
            self.chains.stored(run)

    def removed(self, hashes: Sequence[int]) -> None:
        run = tuple(hashes)
        self._add(("removed", run, MEDIUM_GPU))
        if self.chains is not None:
            self.chains.removed(run)

    def cleared(self) -> None:
        self._pending.clear()  # NOTE: what was pending is void; consumers drop everything anyway
        if self.chains is not None:
            self.chains.clear()
        self._add(("cleared",))

    # ---------------------------------------------------------------- the host and disk tiers
    def tier_stored(self, tier: Tier, h: int) -> None:
        if self.chains is not None:
            self.chains.tier_stored(tier, h)
        self._grow(COPIED, MEDIUMS[tier], h)

    def tier_removed(self, tier: Tier, h: int) -> None:
        if self.chains is not None:
            self.chains.tier_removed(tier, h)
        self._grow("removed", MEDIUMS[tier], h)

    def _grow(self, kind: str, medium: str, h: int) -> None:
        """Add ``h`` to the last pending event if it is a tier event of this kind and medium, else open
        one."""
        last = self._open
        if last is not None and last[0] == kind and last[-1] == medium:
            last[1].append(h)
        else:
            self._add((kind, [h], medium), grows=True)

    def _resolved(self, events: list[RawEvent]) -> list[RawEvent]:
        """The pending events, each tier copy event cut into ``BlockStored`` events (one per run stretch)."""
        out: list[RawEvent] = []
        for e in events:
            if e[0] != COPIED:
                out.append(e)
                continue
            _, hashes, medium = cast("tuple[str, list[int], str]", e)
            if self.chains is not None:
                out += self.chains.events(hashes, medium)
            else:
                out += [lone_copy(h, medium) for h in hashes]
        return out

    # ---------------------------------------------------------------- batches
    def _add(self, event: RawEvent, grows: bool = False) -> None:
        self._pending.append(event)
        self._open = event if grows else None
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
        events, self._pending, self._open = self._pending, [], None  # NOTE: the thread's from now on
        if events:
            events = self._resolved(events)
        if self.chains is not None:
            self.chains.forget()  # NOTE: after the copies' events were cut: a block may have left since
        if events:
            self._publish(self._clock(), events)

