"""Chunked prefill inside the shard: how many tokens of a partly computed prompt the next forward computes.

TGI v3 with a chunking shard: the router admits a prompt with ``chunk_len`` = what its prefill budget had
left, and "later chunks of a long prompt are scheduled by the shard itself" under ``max_prefill_tokens``
from Warmup. Each forward here computes at most ``max_prefill_tokens`` tokens in all:

    fixed   = tokens of requests not continuing a prompt: one per decoding request, plus each newly admitted
              request's first piece (``chunk_len``, or its whole uncached prompt; the router budgeted those)
    left    = max_prefill_tokens - fixed
    continuing prompts, in batch order: chunk = min(rest of the prompt, left); left -= chunk
              (the first one gets at least 1 token, so a prompt always progresses)

A continuing prompt given 0 tokens sits this forward out. The same arithmetic gives ``CachedBatch.
current_tokens``, which the router subtracts from its prefill budget before merging new requests in.
"""

from __future__ import annotations

from shard.batch import RequestState


def plan_chunks(requests: list[RequestState], max_prefill_tokens: int | None) -> None:
    """Set ``chunk_len`` of every request continuing a chunked prompt (see the module docstring).

    Args:
        requests: the batch of the next forward, in order.
        max_prefill_tokens: tokens per forward (Warmup's ``max_prefill_tokens``); None or 0 = no limit,
            a continuing prompt is then computed whole.
    """
    continuing = [r for r in requests if r.stepped and not r.prompt_done]
    if not continuing:
        return
    if not max_prefill_tokens:
        for r in continuing:
            r.chunk_len = None
        return
    ids = {id(r) for r in continuing}
    left = max_prefill_tokens - sum(r.next_len for r in requests if id(r) not in ids)
    for i, r in enumerate(continuing):
        take = min(r.prompt_len - r.cache_len, max(left, 0))
        if i == 0:
            take = max(take, 1)
        r.chunk_len = take
        left -= take
