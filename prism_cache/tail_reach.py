"""Tail reach: how far into a prompt its next reuse goes, learned online; DART's admission control for tails.

A later request that reuses a prompt's blocks often stops short of its end: a chat's next turn repeats the
whole previous prompt, but a new question on the same document, a RAG prompt with other passages or a
rewritten last block shares only a prefix. The blocks past where reuses stop are cached like the rest and
never hit again (on the Mooncake trace, a prompt's last 512-token block is used again 5 % of the time, its
other blocks 35-85 %): Belady bypasses them. So :class:`TailReach`

1. learns, from each request that reuses the last :data:`SPAN` blocks of an earlier prompt at least in part
   (its deepest recorded position ``lo`` lies in the latest prompt through it, of ``depth`` blocks, and
   ``depth - lo < SPAN``), the unreached length ``d = depth - lo`` (0 when it covers it all), in log2 buckets
   of blocks. The caller leaves out a request whose common prefix is already shared by two sessions (another
   chat on the same system prompt): it reuses that segment, which says nothing about the earlier prompt's
   tail;
2. records each observed prompt's last :data:`SPAN` positions, ``e`` blocks before its end, with
   ``ln P(a reuse reaching the span reaches e)``: ``(reuses with d <= e, + 1) / (reuses + 2)``, those in e's
   log2 bucket counted half, fixed when recorded (a time-invariant key). A position a later prompt covers
   short of its own tail is no tail any more.

DART adds the value to the history of a leaf whose last block is a recorded tail, so a tail that reuses seldom
reach is inserted low and evicted first ("inserted at the bottom"), and on traffic whose reuses take whole
prompts (chats, agents) every value is about 0 once learned (ln 1/2 before any reuse is seen).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

SPAN = 64  # blocks from a prompt's end that can be a tail
BUCKETS = SPAN.bit_length()  # e = 0, 1, 2-3, 4-7, ..., 32-63


def _bucket(blocks: int) -> int:
    return blocks.bit_length()


class TailReach:
    """The learned reach and the tail records; memory: SPAN records per prompt, dropped with the session
    records (:meth:`forget`) or when a later prompt covers them in its body."""

    def __init__(self) -> None:
        self.unreached = [0] * BUCKETS  # reuses by bucket of d
        self._tail: dict[int, float] = {}  # position -> ln P(a reuse reaches it)
        self.value_of = self._tail.get  # NOTE: DART's key reads it (the eviction hot path)

    def reused(self, depth: int, lo: int) -> None:
        """A request covers the first ``lo`` blocks of an earlier prompt of ``depth`` blocks (``lo`` >= 1)."""
        if depth - lo < SPAN:
            self.unreached[_bucket(max(0, depth - lo))] += 1

    def reach(self, e: int) -> float:
        """P(a reuse reaching the span reaches the position ``e`` blocks before its prompt's end)."""
        return math.exp(self._log_reach()[_bucket(e)])

    def _log_reach(self) -> list[float]:
        """ln P(reach) per bucket of e."""
        total, below, out = sum(self.unreached) + 2, 0, []
        for c in self.unreached:
            out.append(math.log((below + c / 2 + 1) / total))
            below += c
        return out

    def record(self, hashes: Sequence[int]) -> None:
        """A prompt entered the queue: its last :data:`SPAN` positions are tails, the others none."""
        tail, n = self._tail, len(hashes)
        body = n - min(n, SPAN)
        for h in tail.keys() & hashes[:body]:  # NOTE: found in C; most body positions are no tail
            del tail[h]
        for b, value in enumerate(self._log_reach()):  # e in [2^(b-1), 2^b): one C-level update per bucket
            start = max(body, n - (1 << b))
            tail.update(dict.fromkeys(hashes[start : max(start, n - (b and 1 << (b - 1)))], value))

    def forget(self, positions: Iterable[int]) -> None:
        for h in positions:
            self._tail.pop(h, None)

    def __len__(self) -> int:
        return len(self._tail)

