"""The contract between the batching loop (or the simulator) and the schedulers. Pure Python, no I/O, no
clock: ``now`` is passed in, so :mod:`bench`'s simulator runs exactly the code the server runs.

Life of a request, as the batcher drives it:

    enqueue(req, now) ─▶ next_batch(now, ...) returns it in a BatchPlan with blocks/slots/cache_len/chunk_len
         │                     │
         └─ cancel(id)         ├─ prefill_done(id) when its first token comes back (prompt blocks shareable)
            (still waiting)    └─ release(id) when it finishes, fails or its client goes away
                                  (prompt's full blocks go into the tree, the rest is freed; a prompt left
                                  mid-prefill: the full blocks of its computed pieces)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prism_cache import CacheObserver
from prism_cache.tiers import BlockCopy, TierConfig


@dataclass
class SchedRequest:
    id: int
    prompt_ids: Sequence[int]  # router tokenization after truncation
    max_new_tokens: int  # tokens this round may generate (the batcher sends at most 1,024 per round)
    arrival: float  # seconds, on the caller's clock
    namespace: str = ""  # tenant / adapter: no cache sharing across namespaces
    use_prefix_cache: bool = True  # False (decoder_input_details): no match, nothing inserted on release
    session: str | None = None  # the conversation or user the request names (DART's session return), if any
    block_hashes: Sequence[int] | None = None  # prompt_ids' block hashes at this block size if known (DP)

    @property
    def input_length(self) -> int:
        return len(self.prompt_ids)


@dataclass(frozen=True)
class Admission:
    """One request admitted into a prefill batch.

    blocks: the request's lifetime block table (empty when the shard requires padding).
    slots: ``input_length + max_new_tokens + speculate - 1`` slot ids (empty when padding).
    cache_len: leading prompt tokens whose KV is already in ``blocks``: at most the full blocks before the
        last prompt token, so a request writes only into blocks of its own.
    chunk_len: tokens after ``cache_len`` computed by this first prefill; None = the whole rest of the prompt.
    copies: KV tier copies the shard runs, in order, before this prefill (TIERS-CONTRACT.md; () without tiers).
    """

    request: SchedRequest
    blocks: tuple[int, ...]
    slots: tuple[int, ...]
    cache_len: int
    chunk_len: int | None = None
    copies: Sequence[BlockCopy] = ()


@dataclass(frozen=True)
class BatchPlan:
    admissions: list[Admission]
    prefill_tokens: int  # tokens computed by this prefill (after cache_len, within chunk_len)
    max_tokens: int  # TGI Batch.max_tokens
    max_blocks: int  # TGI Batch.max_blocks

    @property
    def copies(self) -> list[BlockCopy]:
        """Every admission's tier copies, in admission order (the order the allocator made them)."""
        return [c for adm in self.admissions for c in adm.copies]


@dataclass(frozen=True)
class SchedulerConfig:
    scheduler: str = "qas"  # fcfs | lpm | dfs-weight | qas
    cache_policy: str = "dart"  # lru | lfu | hotprefix | lookahead-lru | dart
    prefix_caching: bool = True
    num_blocks: int | None = None  # None: the shard requires padding (no allocator, TGI's padded budget)
    block_size: int = 16
    speculate: int = 0
    support_chunking: bool = True
    params: dict[str, float] = field(default_factory=dict)  # scheduler/policy knobs, documented by each
    cache_observer: CacheObserver | None = None  # told of blocks stored/evicted (KV cache events; None: off)
    tiers: TierConfig | None = None  # host/disk KV tiers below the device pool (None: off)
    cache_generated: bool = True  # release caches generated tokens after the prompt (False: the prompt only)


class Scheduler(Protocol):
    def enqueue(self, request: SchedRequest, now: float) -> None:
        """Add a request to the waiting queue (DART adds its queued demand here)."""
        ...

    def cancel(self, request_id: int) -> bool:
        """Remove a waiting request (client gone). Returns False if it is not waiting."""
        ...

    def next_batch(
        self,
        now: float,
        prefill_budget: int,
        token_budget: int,
        max_size: int | None = None,
        min_size: int = 0,
    ) -> BatchPlan | None:
        """Choose and allocate the next prefill batch within the budgets (TGI next_batch semantics), or None.
        Requests not chosen stay queued; allocation never leaves half-done state."""
        ...

    def prefill_done(self, request_id: int) -> None:
        """An admitted request's whole prompt has been prefilled (its first token came back): its full prompt
        blocks may be shared with waiting requests from now on. Unknown ids are ignored."""
        ...

    def release(
        self, request_id: int, computed: bool = True, computed_prefix: int = 0, generated: Sequence[int] = ()
    ) -> None:
        """An admitted request ended: insert its prompt's full blocks into the tree, free the rest, unlock.
        ``generated``: the token ids it generated, in order (with ``computed``): every one but the last was fed
        back, so its KV is in the allocation, and the full blocks of the prompt and those tokens are cached
        (vLLM and SGLang cache them too: a chat's next turn or an agent's next step sends them back).
        ``computed=False``: it ended in a failed or cancelled step, so its prompt's KV is not known to be
        computed: unless :meth:`prefill_done` published the prompt, nothing is cached and the allocation is
        rolled back (its tier copies count as sent; the batcher reported them failed). ``computed_prefix``
        (with ``computed=False``): its leading prompt tokens known computed all the same (a chunked prefill's
        finished pieces, its client gone): their full blocks are cached, the rest freed."""
        ...

    def waiting_count(self) -> int: ...

    def peek_prefix(self, namespace: str, hashes: Sequence[int]) -> int:
        """Tokens of the prompt with these block ``hashes`` (``prism_cache.block_hashes`` at this scheduler's
        block size) already cached in ``namespace``'s tree, touching nothing: no recency stamp, no split, no
        lock. 0 without a prefix cache. For ranking replicas (``replica_choice``), valid until the next call
        that changes the tree."""
        ...

    def cache_stats(self) -> dict[str, int]:
        """Counters for /metrics: prompt_tokens_queried, prompt_tokens_hit, blocks_total, blocks_free,
        blocks_cached, blocks_in_use, evictions."""
        ...
