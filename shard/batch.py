"""Shard-side batch state: plain Python per-request lists, with filter and concatenate. No torch here.

One request's token bookkeeping (p = prompt_len, c = cache_len, n = len(token_ids)):

    token_ids:  [0 ............ c) [c ........ p) [p ......... n)
                 KV in the pool     prompt still    generated tokens; the last one's KV is
                                    to compute      written by the next step
    next step computes token_ids[c : c + next_len]; the prompt is "done" once c >= p.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from proto.chunking import prefill_len

if TYPE_CHECKING:
    from shard.grammar import GrammarState
    from shard.sampling import NextTokenChooser, StoppingCriteria


@dataclass
class RequestState:
    """Everything the shard remembers about one request between steps.

    blocks: block ids holding positions [i*bs, (i+1)*bs); slots[p] is the pool slot of position p.
    chunk_len: how many prompt tokens the next step computes (None = the whole rest); set by the router for
        the first step, by :func:`shard.chunking.plan_chunks` for later ones (0 = sit this step out).
    stepped: whether a step has computed some of this request (its later prompt pieces are the shard's).
    """

    id: int
    token_ids: list[int]
    prompt_len: int
    blocks: list[int]
    slots: list[int]
    cache_len: int
    chooser: NextTokenChooser
    stopping: StoppingCriteria
    chunk_len: int | None = None
    prefill_logprobs: bool = False
    top_n_tokens: int = 0
    prompt_logprobs: list[float] = field(default_factory=list)  # accumulated over prompt chunks
    prompt_ranks: list[int] = field(default_factory=list)  # each prompt token's rank by logprob (0: none)
    # with top_n_tokens: prompt position -> its likeliest (ids, logprobs), accumulated as prompt_logprobs
    prompt_tops: dict[int, tuple[list[int], list[float]]] = field(default_factory=dict)
    prefill_emitted: bool = False
    prefix_offset: int = 0  # incremental detokenization offsets (see shard.detokenize)
    read_offset: int = 0
    grammar: GrammarState | None = None  # constrained decoding (see shard.grammar)
    stepped: bool = False

    @property
    def prompt_done(self) -> bool:
        return self.cache_len >= self.prompt_len

    @property
    def generated_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len :]

    @property
    def next_len(self) -> int:
        """Tokens the next step computes for this request."""
        if not self.prompt_done:
            return prefill_len(self.prompt_len, self.cache_len, self.chunk_len)
        return len(self.token_ids) - self.cache_len

    def advance(self, computed: int) -> None:
        """Record that ``computed`` more tokens now have KV in the pool (after a successful forward)."""
        self.cache_len += computed
        self.chunk_len = None
        self.stepped = True


@dataclass
class ShardBatch:
    """A cached batch: an id and its requests, in order."""

    id: int
    requests: list[RequestState]

    @property
    def request_ids(self) -> list[int]:
        return [r.id for r in self.requests]

    @property
    def num_blocks(self) -> int:
        """Blocks the batch's requests hold (shared prefix blocks counted per request, as TGI counts them)."""
        return sum(len(r.blocks) for r in self.requests)

    @property
    def current_tokens(self) -> int:
        """Tokens in the next forward (decode: one per request; chunked prefill: the remaining prompt)."""
        return sum(r.next_len for r in self.requests)

    def filter(self, keep_ids: list[int]) -> ShardBatch:
        """A batch with only ``keep_ids``, in that order (the same id).

        Raises:
            KeyError: an id not in this batch.
        """
        by_id = {r.id: r for r in self.requests}
        missing = [i for i in keep_ids if i not in by_id]
        if missing:
            raise KeyError(f"request ids {missing} are not in batch {self.id} (it holds {self.request_ids})")
        return ShardBatch(self.id, [by_id[i] for i in keep_ids])

    @staticmethod
    def concatenate(batches: list[ShardBatch]) -> ShardBatch:
        """One batch holding all requests in order; it keeps the FIRST batch's id (as TGI's shard)."""
        return ShardBatch(batches[0].id, [r for b in batches for r in b.requests])
