"""TGI's ``next_batch`` admission loop (tgi-compat 2.4), over candidates in the order a scheduler chose.

Paged path (an allocator): each candidate reserves ``input + max_new + speculate - 1`` tokens up front; its
``cache_len`` is the matched prefix of the full blocks before its last token; when the uncached rest would
overflow the prefill budget (rounded up to a block multiple) the candidate is admitted with ``chunk_len`` =
what is left of the budget if chunking is supported, else it stays queued; batch building stops at the first
candidate that does not fit.
Padded path (no allocator): the batch costs ``(n + 1) * max_input_length`` prefill tokens and
``prefill + decode + speculate`` total tokens. A batch smaller than ``min_size`` is undone entirely.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

from prism_cache import Allocation, RadixAllocator
from router_py.scheduling.waiting import Waiting
from router_py.scheduling.interface import Admission


@dataclass
class Built:
    """The admitted candidates with their allocations (None on the padded path), and TGI's batch totals."""

    admitted: list[tuple[Waiting, Allocation | None, Admission]] = field(default_factory=list)
    prefill_tokens: int = 0  # computed tokens, chunks included
    max_tokens: int = 0  # TGI Batch.max_tokens: prefill (chunked entry excluded) + padded decode tokens
    max_blocks: int = 0


@dataclass(frozen=True)
class Limits:
    prefill_budget: int
    token_budget: int
    max_size: int | None
    min_size: int


class BatchBuilder:
    def __init__(
        self, allocator: RadixAllocator | None, block_size: int, speculate: int, support_chunking: bool
    ) -> None:
        self.allocator = allocator
        self.block_size = block_size
        self.speculate = speculate
        self.support_chunking = support_chunking

    def build(
        self, candidates: Iterable[Waiting], limits: Limits, planned: Sequence[list[int]] = ()
    ) -> Built | None:
        """Admit candidates in order until one does not fit. Returns None (holding nothing) if none was
        admitted or fewer than ``limits.min_size``. ``planned``: block hashes counted as planned demand while
        the batch evicts (:meth:`RadixAllocator.batch`)."""
        bs = self.block_size
        budget = -(-limits.prefill_budget // bs) * bs
        built = Built()
        with self.allocator.batch(planned) if self.allocator is not None else nullcontext():
            for entry in candidates:
                if self.allocator is None:
                    stop = self._admit_padded(entry, built, budget, limits)
                else:
                    stop = self._admit_paged(entry, built, budget)
                if stop or (limits.max_size is not None and len(built.admitted) >= limits.max_size):
                    break
        if not built.admitted or len(built.admitted) < limits.min_size:
            self.undo(built)
            return None
        return built

    def undo(self, built: Built) -> None:
        """Give back every allocation of ``built`` without caching anything."""
        assert self.allocator is not None or all(a is None for _, a, _ in built.admitted)
        for _, alloc, _ in built.admitted:
            if alloc is not None and self.allocator is not None:
                self.allocator.rollback(alloc)
        built.admitted.clear()

    def _admit_padded(self, entry: Waiting, built: Built, budget: int, limits: Limits) -> bool:
        """Returns True to stop building."""
        req = entry.request
        n = len(built.admitted)
        max_input = max([req.input_length] + [w.request.input_length for w, _, _ in built.admitted])
        prefill = (n + 1) * max_input
        decode = built.max_tokens - built.prefill_tokens + req.max_new_tokens
        if prefill > budget or prefill + decode + self.speculate > limits.token_budget:
            return True
        built.admitted.append((entry, None, Admission(req, (), (), 0)))
        built.prefill_tokens, built.max_tokens = prefill, prefill + decode
        return False

    def _admit_paged(self, entry: Waiting, built: Built, budget: int) -> bool:
        """Returns True to stop building."""
        assert self.allocator is not None
        req = entry.request
        tokens = req.input_length + req.max_new_tokens + self.speculate - 1
        # NOTE: the last prompt token is always computed (its logits start the output), so the block holding
        # it is never matched: a request writes only into blocks of its own (vLLM's rule), and two requests of
        # one prompt in a batch never write one slot
        reused = min(len(entry.hashes), max(req.input_length - 1, 0) // self.block_size)
        prompt = entry.tokens[: reused * self.block_size] if reused else None
        alloc = self.allocator.allocate(tokens, req.namespace, prompt, entry.hashes[:reused] if reused else None)
        if alloc is None:
            return True
        cache_len = alloc.prefix_len
        postfix = req.input_length - cache_len
        chunk_len: int | None = None
        if built.prefill_tokens + postfix > budget:
            chunk = budget - built.prefill_tokens
            if not self.support_chunking or chunk <= 0:
                self.allocator.rollback(alloc)
                return True
            chunk_len = chunk
        admission = Admission(req, alloc.blocks, alloc.slots, cache_len, chunk_len, alloc.copies)
        built.admitted.append((entry, alloc, admission))
        built.max_blocks = max(built.max_blocks, len(alloc.blocks))
        if chunk_len is not None:
            built.prefill_tokens += chunk_len
            return True
        built.prefill_tokens += postfix
        built.max_tokens += postfix
        return False
