"""Checks that keep one request from breaking the shard or another request's KV. All run BEFORE any write.

Contract of a request's memory (TGI v3): ``slots[p] == blocks[p // bs] * bs + p % bs`` for every position p
the request will hold, every block id < num_blocks. Checking that equality means a request can only write into
its own blocks; prefix blocks shared between requests are only read (positions < cache_len are never written).
"""

from __future__ import annotations

from dataclasses import dataclass

from shard.batch import RequestState
from shard.errors import InvalidRequest


@dataclass(frozen=True)
class PoolLimits:
    num_blocks: int
    block_size: int
    max_positions: int
    max_input_tokens: int | None = None  # set by Warmup


def check_new_request(r: RequestState, limits: PoolLimits) -> None:
    """Validate a request entering the shard (its prompt already tokenized)."""
    where = f"request {r.id}"
    if r.prompt_len == 0:
        raise InvalidRequest(f"{where}: empty input (the prompt has no tokens)")
    if limits.max_input_tokens is not None and r.prompt_len > limits.max_input_tokens:
        raise InvalidRequest(
            f"{where}: prompt has {r.prompt_len} tokens, over max_input_tokens {limits.max_input_tokens}"
        )
    if r.cache_len >= r.prompt_len:
        raise InvalidRequest(
            f"{where}: cache_len {r.cache_len} must be below the prompt length {r.prompt_len}"
        )
    if r.chunk_len is not None and r.chunk_len < 1:
        raise InvalidRequest(f"{where}: chunk_len must be at least 1, got {r.chunk_len}")
    check_memory(r, limits)


def check_memory(r: RequestState, limits: PoolLimits) -> None:
    """blocks inside the pool, slots consistent with blocks, and enough slots for the prompt."""
    where, bs = f"request {r.id}", limits.block_size
    bad = [b for b in r.blocks if b >= limits.num_blocks]
    if bad:
        raise InvalidRequest(
            f"{where}: block ids {bad[:4]} outside the KV pool of {limits.num_blocks} blocks"
        )
    if len(r.slots) < r.prompt_len:
        raise InvalidRequest(f"{where}: {len(r.slots)} slots for a prompt of {r.prompt_len} tokens")
    if len(r.slots) > len(r.blocks) * bs:
        raise InvalidRequest(f"{where}: {len(r.slots)} slots do not fit in {len(r.blocks)} blocks of {bs}")
    for p, slot in enumerate(r.slots):
        if slot != r.blocks[p // bs] * bs + p % bs:
            raise InvalidRequest(
                f"{where}: slot {slot} at position {p} is not in block {r.blocks[p // bs]} "
                f"(slots must be block * {bs} + offset)"
            )


def check_step(requests: list[RequestState], limits: PoolLimits) -> None:
    """Every position the next step computes has a slot and a RoPE entry; no slot is written twice."""
    written: set[int] = set()
    for r in requests:
        end = r.cache_len + r.next_len
        if end > len(r.slots):
            raise InvalidRequest(
                f"request {r.id}: position {end - 1} has no slot ({len(r.slots)} slots "
                f"allocated); filter finished requests before decoding further"
            )
        if end > limits.max_positions:
            raise InvalidRequest(
                f"request {r.id}: position {end - 1} beyond max_position_embeddings {limits.max_positions}"
            )
        new = r.slots[r.cache_len : end]
        if written.intersection(new):
            raise InvalidRequest(f"request {r.id}: writes KV slots another request in the batch also writes")
        written.update(new)


def check_block_ownership(new: list[RequestState], live: list[RequestState], block_size: int) -> None:
    """A new request may write (positions >= its cache_len, over all its slots) only into blocks that no other
    live request holds, with one exception: re-writing an identical prompt prefix in the same block position
    (a router that shares a fully matched prompt sends cache_len = prompt_len - 1, so the last prompt token is
    written again, with the same value, into a shared block).

    Raises:
        InvalidRequest: the request would overwrite KV another live request reads.
    """
    holders: dict[int, tuple[RequestState, int]] = {}
    for r in live:
        for i, b in enumerate(r.blocks):
            holders.setdefault(b, (r, i))
    for r in new:
        for i in range(r.cache_len // block_size, len(r.blocks)):
            holder = holders.get(r.blocks[i])
            if holder is not None and holder[0] is not r and not _same_prefix(r, i, *holder, block_size):
                raise InvalidRequest(
                    f"request {r.id}: would write KV block {r.blocks[i]} held by live request {holder[0].id}"
                )
        for i, b in enumerate(r.blocks):
            holders.setdefault(b, (r, i))


def _same_prefix(writer: RequestState, i: int, holder: RequestState, j: int, block_size: int) -> bool:
    """The writer writes only prompt tokens into block index i, identical (with their whole prefix) to the
    holder's tokens at the same positions."""
    end = min((i + 1) * block_size, len(writer.slots))
    return i == j and end <= writer.prompt_len and holder.token_ids[:end] == writer.token_ids[:end]
