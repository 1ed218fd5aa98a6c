"""Batch state (filter, concatenate, chunk bookkeeping) and the flat step inputs built from it."""

from __future__ import annotations

import pytest

from shard.batch import RequestState, ShardBatch
from shard.errors import InvalidRequest
from shard.inputs import build_step_inputs
from shard.sampling import NextTokenChooser, SamplingParams, StoppingCriteria
from shard.validation import PoolLimits, check_new_request, check_step

BS = 4


def _req(
    rid: int,
    prompt: list[int],
    blocks: list[int],
    cache_len: int = 0,
    chunk_len: int | None = None,
    slots: list[int] | None = None,
) -> RequestState:
    if slots is None:
        slots = [b * BS + o for b in blocks for o in range(BS)]
    return RequestState(
        rid,
        list(prompt),
        len(prompt),
        blocks,
        slots,
        cache_len,
        NextTokenChooser(SamplingParams()),
        StoppingCriteria(frozenset(), 10),
        chunk_len,
    )


def test_filter_keeps_given_order_and_id_and_refuses_strangers() -> None:
    b = ShardBatch(3, [_req(1, [1], [1]), _req(2, [1], [2]), _req(5, [1], [3])])
    assert b.filter([5, 1]).request_ids == [5, 1] and b.filter([5, 1]).id == 3
    with pytest.raises(KeyError, match=r"\[9\]"):
        b.filter([1, 9])


def test_concatenate_keeps_the_first_id() -> None:
    merged = ShardBatch.concatenate([ShardBatch(4, [_req(1, [1], [1])]), ShardBatch(2, [_req(2, [1], [2])])])
    assert (merged.id, merged.request_ids) == (4, [1, 2])


def test_chunk_then_rest_then_one_token_per_step() -> None:
    r = _req(1, list(range(10)), [1, 2, 3], cache_len=2, chunk_len=3)
    assert (r.next_len, r.prompt_done) == (3, False)
    r.advance(3)
    assert (r.next_len, r.prompt_done) == (5, False)  # the rest of the prompt in one step
    r.advance(5)
    r.token_ids.append(42)
    assert (r.next_len, r.prompt_done, r.generated_ids) == (1, True, [42])


def test_step_inputs_are_flat_and_ragged() -> None:
    a = _req(1, [10, 11, 12, 13, 14], [7, 8], cache_len=3)
    b = _req(2, [20, 21], [9])
    s = build_step_inputs([a, b])
    assert s.input_ids == [13, 14, 20, 21]
    assert s.positions == [3, 4, 0, 1]
    assert s.slots == [7 * BS + 3, 8 * BS + 0, 9 * BS + 0, 9 * BS + 1]
    assert s.block_tables == [[7, 8], [9, 0]]
    assert (s.cu_seqlens_q, s.seqlens_k, s.last_rows, s.is_decode) == ([0, 2, 4], [5, 2], [1, 3], False)


def test_validation_messages_name_the_problem() -> None:
    limits = PoolLimits(num_blocks=8, block_size=BS, max_positions=64, max_input_tokens=6)
    check_new_request(_req(1, [1, 2, 3], [1]), limits)
    cases = {
        "outside the KV pool": _req(1, [1, 2], [9]),
        "cache_len 2 must be below": _req(1, [1, 2], [1], cache_len=2),
        "over max_input_tokens 6": _req(1, list(range(7)), [1, 2]),
        "is not in block 1": _req(1, [1, 2], [1], slots=[4, 9]),
        "empty input": _req(1, [], [1]),
    }
    for fragment, req in cases.items():
        with pytest.raises(InvalidRequest, match=fragment):
            check_new_request(req, limits)
    with pytest.raises(InvalidRequest, match="beyond max_position_embeddings 2"):
        check_step([_req(1, [1, 2, 3], [1])], PoolLimits(8, BS, 2))
