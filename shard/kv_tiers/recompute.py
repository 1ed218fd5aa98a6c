"""A copy into the device failed (a corrupt or missing disk block, a failed chain): the shard computes those
tokens itself before the step, so the step finds the prefix it was promised and its output does not change.

For the first request (batch order) whose cached prefix holds a bad block, positions from that block's start
to its ``cache_len`` are computed by a prompt-only step of a copy of the request (nothing sampled or emitted;
the request itself is untouched). Requests sharing those blocks share the same tokens (the router shares a
block only along one prefix), so one computation serves them all. One forward per request repaired: repairs
never write the same slot twice in a forward.
"""

from __future__ import annotations

from dataclasses import replace

from shard.batch import RequestState


def recompute_missing(runner, requests: list[RequestState], bad_device: set[int]) -> int:
    """Fill every block of ``bad_device`` that a request of the step reads as cached; returns tokens computed.
    ``runner``: the :class:`shard.model_runner.ModelRunner` of the step."""
    bad, bs, computed = set(bad_device), runner.kv.block_size, 0
    for r in requests:
        if not bad:
            break
        cached = -(-r.cache_len // bs)
        first = next((i for i, b in enumerate(r.blocks[:cached]) if b in bad), None)
        if first is None:
            continue
        start = first * bs
        prompt_only = replace(
            r, token_ids=r.token_ids[: r.cache_len + 1], prompt_len=r.cache_len + 1, cache_len=start,
            chunk_len=r.cache_len - start, prefill_logprobs=False, top_n_tokens=0, prompt_logprobs=[],
            grammar=None, stepped=False,
        )
        runner.step([prompt_only])
        computed += r.cache_len - start
        bad.difference_update(r.blocks[first:cached])
    return computed
