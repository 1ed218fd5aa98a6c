"""Workload segments as token ids for the simulator: each segment id maps to one fixed pseudo-random token
sequence, so equal segment ids yield equal tokens and a prompt is the concatenation of its segments'
tokens."""

from __future__ import annotations

import random
from functools import lru_cache

from bench.workloads.request import WorkloadRequest

VOCAB = 32_000
FIRST_ID = 16  # keep clear of special-token ids


@lru_cache(maxsize=65_536)
def segment_tokens(segment_id: str, n_tokens: int) -> tuple[int, ...]:
    """The first ``n_tokens`` of ``segment_id``'s sequence (a shorter use of an id is a prefix of a longer
    one)."""
    rng = random.Random(f"segment:{segment_id}")
    return tuple(rng.randrange(FIRST_ID, VOCAB) for _ in range(n_tokens))


def prompt_token_ids(request: WorkloadRequest) -> list[int]:
    ids: list[int] = []
    for segment_id, n in request.segments:
        ids.extend(segment_tokens(segment_id, n))
    return ids
