"""Where a replica router's hit rate goes (``prism-bench dp --losses``): per request, at routing time, how
many of its prompt's leading tokens

- ``seen``: any earlier request started with (what one infinite cache would hit);
- ``cached_anywhere``: some replica's tree holds (the most any choice could hit now);
- ``cached_chosen``: the chosen replica's tree holds;
- ``routed_chosen``: had been routed to the chosen replica before (cached there or since evicted).

Summed over the measured requests and divided by their prompt tokens, ``seen - cached_anywhere`` is lost
to eviction everywhere, ``cached_anywhere - cached_chosen`` to the choice, and ``hit_rate - cached_chosen``
is what prompts in flight added (or, negative, what was evicted between routing and prefill); ``seen -
routed_chosen`` is the part of known prefixes sent to a replica that had never taken them (a moved
conversation). Each is capped at the prompt's length minus one, as a hit is.
"""

from __future__ import annotations

from collections.abc import Sequence

from router_py.scheduling.replica_choice import PeekPrefix

FIELDS = ("seen", "cached_anywhere", "cached_chosen", "routed_chosen")


def _leading(known: set[int], hashes: Sequence[int]) -> int:
    n = 0
    for h in hashes:
        if h not in known:
            break
        n += 1
    return n


class LossProbe:
    """Call :meth:`before` just before a request is routed and :meth:`after` once it is; requests whose
    ``measured`` flag is false (the warm-up) update the state but not the sums."""

    def __init__(self, peeks: Sequence[PeekPrefix], block_size: int) -> None:
        self.peeks, self.block_size = list(peeks), block_size
        self._seen: set[int] = set()
        self._routed: list[set[int]] = [set() for _ in peeks]
        self._cached: list[int] = []
        self.sums = dict.fromkeys((*FIELDS, "prompt"), 0)

    def before(self, hashes: Sequence[int]) -> None:
        self._cached = [peek("", hashes) for peek in self.peeks]

    def after(self, hashes: Sequence[int], prompt_len: int, replica: int, measured: bool) -> None:
        bs, cap = self.block_size, max(0, prompt_len - 1)
        if measured:
            counts = (_leading(self._seen, hashes) * bs, max(self._cached), self._cached[replica],
                      _leading(self._routed[replica], hashes) * bs)
            for name, tokens in zip(FIELDS, counts):
                self.sums[name] += min(tokens, cap)
            self.sums["prompt"] += prompt_len
        self._seen.update(hashes)
        self._routed[replica].update(hashes)

    def rates(self) -> dict[str, float]:
        """Each field's tokens over the measured prompt tokens, as ``{field}_rate``."""
        prompt = max(1, self.sums["prompt"])
        return {f"{name}_rate": self.sums[name] / prompt for name in FIELDS}
