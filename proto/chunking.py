"""What a generate.v3 Request's ``cache_len`` and ``chunk_len`` ask of the shard, as arithmetic both sides
use: the shard to run it, the router's simulator (:mod:`bench.simulator`) to predict it. Standard library only.
"""

from __future__ import annotations


def prefill_len(prompt_len: int, computed: int, chunk_len: int | None) -> int:
    """Prompt tokens the next forward computes for a request whose first ``computed`` prompt tokens have KV:
    the rest of the prompt, cut at ``chunk_len`` (the first prefill's chunk; None = no cut)."""
    rest = prompt_len - computed
    return rest if chunk_len is None else min(chunk_len, rest)
