"""What a generate.v3 Request's ``cache_len`` and ``chunk_len`` ask of the shard, as arithmetic both sides
use: the shard to run it, the router's simulator (:mod:`bench.simulator`) to predict it. Standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence


def prefill_len(prompt_len: int, computed: int, chunk_len: int | None) -> int:
    """Prompt tokens the next forward computes for a request whose first ``computed`` prompt tokens have KV:
    the rest of the prompt, cut at ``chunk_len`` (the first prefill's chunk; None = no cut)."""
    rest = prompt_len - computed
    return rest if chunk_len is None else min(chunk_len, rest)


def plan_continuing(fixed: int, rests: Sequence[int], max_prefill_tokens: int | None) -> list[int | None]:
    """Chunks of the prompts a chunking shard continues in its next forward (the shard schedules later chunks
    of a long prompt itself, under Warmup's ``max_prefill_tokens``):

        left  = max_prefill_tokens - fixed    (fixed: one token per decoding request, plus each newly admitted
                                                request's first piece, which the router budgeted)
        each continuing prompt, in batch order: chunk = min(its rest, left); left -= chunk
        (the first one gets at least 1 token, so a prompt always progresses; 0 = it sits this forward out)

    Args:
        fixed: tokens of the next forward that are not continuing prompts.
        rests: uncomputed prompt tokens of each continuing request, in batch order (each >= 1).
        max_prefill_tokens: tokens per forward; None or 0 = no limit.
    Returns:
        the chunk of each continuing prompt; None = the whole rest (no limit).
    """
    if not max_prefill_tokens:
        return [None] * len(rests)
    left, chunks = max_prefill_tokens - fixed, []
    for i, rest in enumerate(rests):
        take = min(rest, max(left, 0))
        chunks.append(max(take, 1) if i == 0 else take)
        left -= chunks[-1]
    return chunks
