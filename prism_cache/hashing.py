"""Chained block hashes: the key that demand counts (queued, planned, look-ahead) are kept under."""

from __future__ import annotations

from collections.abc import Sequence


def block_hashes(
    namespace: str, tokens: Sequence[int], block_size: int, known: Sequence[int] = ()
) -> list[int]:
    """One chained hash per *full* block of ``tokens``; ``known``: the hashes of its leading blocks, already
    computed (a prompt's, when its generated tokens are appended), so only the blocks after them are hashed.

    Two prompts get the same value at index i exactly when (up to hash collisions) their first i+1 blocks and
    their namespace are equal, so the value names a radix-tree position independently of how the tree is split.
    Demand is bookkeeping only: a collision can misorder an eviction, never serve a wrong block (the tree
    compares token ids).
    """
    h = known[-1] if known else hash(namespace)
    out: list[int] = list(known)
    for start in range(len(known) * block_size, len(tokens) - block_size + 1, block_size):
        h = hash((h, tuple(tokens[start : start + block_size])))
        out.append(h)
    return out
