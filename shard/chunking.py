"""Chunked prefill inside the shard: how many tokens of a partly computed prompt the next forward computes.

TGI v3 with a chunking shard: the router admits a prompt with ``chunk_len`` = what its prefill budget had
left, and "later chunks of a long prompt are scheduled by the shard itself" under ``max_prefill_tokens``
from Warmup, by the arithmetic of :func:`proto.chunking.plan_continuing` (the router's simulator uses the same
function). The same plan gives ``CachedBatch.current_tokens``, which the router subtracts from its prefill
budget before merging new requests in.
"""

from __future__ import annotations

from proto.chunking import plan_continuing
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
    ids = {id(r) for r in continuing}
    fixed = sum(r.next_len for r in requests if id(r) not in ids)
    rests = [r.prompt_len - r.cache_len for r in continuing]
    for r, chunk in zip(continuing, plan_continuing(fixed, rests, max_prefill_tokens)):
        r.chunk_len = chunk
