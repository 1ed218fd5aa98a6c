"""Warmup: settle the token limits against the KV pool, then run the router's max-size batch once.

Limits not given by the router are chosen here, as TGI's shard does: max_total = min(usable pool capacity,
max_position_embeddings), max_input = max_total - 1. The usable capacity excludes block 0, which the router
reserves for its health probe: a request reserving the whole reported capacity could never be admitted.
"""

from __future__ import annotations

from dataclasses import dataclass

from shard.batch import RequestState
from shard.errors import InvalidRequest


@dataclass(frozen=True)
class Limits:
    max_input_tokens: int
    max_total_tokens: int
    reason: str = ""  # how they were chosen, for the log


def usable_capacity(num_blocks: int, block_size: int) -> int:
    """Tokens one request can hold: every block but the reserved block 0."""
    return max(num_blocks - 1, 0) * block_size


def settle_limits(
    max_input: int | None, max_total: int | None, max_prefill: int, capacity: int, max_positions: int
) -> Limits:
    """Validate (or choose) the router's limits. ``capacity``: the usable pool (:func:`usable_capacity`).

    Raises:
        InvalidRequest: a limit that cannot fit the pool / the model's positions, or input >= total.
    """
    total = max_total if max_total is not None else min(capacity, max_positions)
    inp = max_input if max_input is not None else total - 1
    if total > capacity:
        raise InvalidRequest(
            f"max_total_tokens {total} exceeds the KV pool capacity of {capacity} tokens (block 0 reserved); "
            f"lower it or start the shard with more --num-blocks / --memory-fraction"
        )
    if total > max_positions:
        raise InvalidRequest(
            f"max_total_tokens {total} exceeds the model's max_position_embeddings {max_positions}"
        )
    if not 0 < inp < total:
        raise InvalidRequest(f"max_input_tokens {inp} must be positive and below max_total_tokens {total}")
    if max_prefill > capacity:
        raise InvalidRequest(
            f"max_batch_prefill_tokens {max_prefill} exceeds the KV pool capacity of {capacity} tokens "
            "(block 0 reserved); lower --max-batch-prefill-tokens or start the shard with more "
            "--num-blocks / --memory-fraction"
        )
    return Limits(inp, total, _reason(max_input, max_total, capacity, max_positions))


def _reason(max_input: int | None, max_total: int | None, capacity: int, max_positions: int) -> str:
    if max_total is not None:
        total = "max_total_tokens as the router asked"
    else:
        bound = "the usable KV pool" if capacity <= max_positions else "max_position_embeddings"
        total = (f"max_total_tokens = min(usable KV pool {capacity}, max_position_embeddings "
                 f"{max_positions}) (bound by {bound})")
    inp = "max_input_tokens as the router asked" if max_input is not None else "max_input_tokens = total - 1"
    return f"{total}; {inp}"


def clamp_warmup_prompts(requests: list, limits: Limits) -> None:
    """Cut the warmup batch's prompts to ``max_input_tokens``: a router that left the limits to the shard
    builds its warmup prompts from the prefill budget alone, which may exceed the model's positions.
    ``requests``: pb ``Request`` messages, changed in place (truncate, max_new_tokens)."""
    for r in requests:
        if r.truncate == 0 or r.truncate > limits.max_input_tokens:
            r.truncate = limits.max_input_tokens
        room = limits.max_total_tokens - r.truncate
        if r.stopping_parameters.max_new_tokens > room:
            r.stopping_parameters.max_new_tokens = max(room, 1)


def assign_scratch_memory(requests: list[RequestState], num_blocks: int, block_size: int) -> None:
    """Give requests that arrived with no blocks/slots (warmup) consecutive blocks from 1 (0 stays reserved).

    Raises:
        InvalidRequest: the batch does not fit in the pool.
    """
    next_block = 1
    for r in requests:
        if r.blocks:
            continue
        count = -(-r.prompt_len // block_size)
        if next_block + count > num_blocks:
            raise InvalidRequest(f"warmup batch needs more than the {num_blocks - 1} usable KV blocks")
        r.blocks = list(range(next_block, next_block + count))
        r.slots = [b * block_size + o for b in r.blocks for o in range(block_size)][: r.prompt_len]
        next_block += count
