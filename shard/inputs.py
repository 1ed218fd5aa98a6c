"""Pure functions from a batch's requests to the flat host arrays one forward needs, and the device copy.

Rows of the flat token arrays follow request order; request i's new tokens are rows
``cu_seqlens_q[i] .. cu_seqlens_q[i+1]``.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shard.batch import RequestState

# NOTE: host lists become tensors through array's C conversion: torch.tensor takes ~70 ns per Python int (a
# decode step's block table alone is b x blocks ints), array ~10x less; torch.frombuffer shares its memory.
INT32, INT64 = "i", "q"
assert array(INT32).itemsize == 4 and array(INT64).itemsize == 8

if TYPE_CHECKING:
    import torch

    from shard.layers.attention import AttentionMetadata


@dataclass(frozen=True)
class StepInputs:
    """Host-side (plain int lists) inputs of one forward over ``b`` requests and ``n`` new tokens.

    input_ids, positions, slots: length n.  block_tables: b rows padded with block 0 to the widest row.
    cu_seqlens_q: b + 1.  seqlens_k: b (context length after this step).
    last_rows: row of each request's last new token (its next-token logits).
    """

    input_ids: list[int]
    positions: list[int]
    slots: list[int]
    block_tables: list[list[int]]
    cu_seqlens_q: list[int]
    seqlens_k: list[int]

    @property
    def is_decode(self) -> bool:
        """One new token per request: the decode kernel (and CUDA graph) path applies."""
        return len(self.input_ids) == len(self.seqlens_k)

    @property
    def last_rows(self) -> list[int]:
        return [end - 1 for end in self.cu_seqlens_q[1:]]


def build_step_inputs(requests: list[RequestState]) -> StepInputs:
    """Flat arrays for computing ``r.next_len`` tokens of every request from position ``r.cache_len``.

    Slots/positions must have been validated (see :mod:`shard.validation`); this only indexes.
    """
    ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    cu = [0]
    seqlens: list[int] = []
    for r in requests:
        start, end = r.cache_len, r.cache_len + r.next_len
        ids.extend(r.token_ids[start:end])
        positions.extend(range(start, end))
        slots.extend(r.slots[start:end])
        cu.append(cu[-1] + end - start)
        seqlens.append(end)
    width = max(len(r.blocks) for r in requests)
    tables = [r.blocks + [0] * (width - len(r.blocks)) for r in requests]
    return StepInputs(ids, positions, slots, tables, cu, seqlens)


def to_device(s: StepInputs, device: torch.device, block_size: int) -> tuple[torch.Tensor, AttentionMetadata]:
    """input_ids (n,) int64 and the attention metadata, on ``device``; the block tables cut to the blocks that
    hold the context (``max_seqlen_k`` tokens)."""
    import torch

    from shard.layers.attention import AttentionMetadata

    def t(values: array, dtype: torch.dtype, shape: tuple[int, ...] = (-1,)) -> torch.Tensor:
        host = torch.frombuffer(values, dtype=dtype) if len(values) else torch.empty(0, dtype=dtype)
        return host.view(shape).to(device, non_blocking=True)

    # NOTE: only the blocks up to max_seqlen_k are read; a request holds its blocks for all its tokens to come
    width = min(-(-max(s.seqlens_k) // block_size), len(s.block_tables[0]))
    pieces = [b - a for a, b in zip(s.cu_seqlens_q, s.cu_seqlens_q[1:])]
    tables = array(INT32)
    for row in s.block_tables:
        tables.extend(row[:width])
    meta = AttentionMetadata(
        positions=t(array(INT64, s.positions), torch.int64),
        slots=t(array(INT64, s.slots), torch.int64),
        block_tables=t(tables, torch.int32, (len(s.block_tables), width)),
        seqlens_k=t(array(INT32, s.seqlens_k), torch.int32),
        cu_seqlens_q=None if s.is_decode else t(array(INT32, s.cu_seqlens_q), torch.int32),
        max_seqlen_q=max(pieces),
        max_seqlen_k=max(s.seqlens_k),
        min_seqlen_q=min(pieces),
    )
    return t(array(INT64, s.input_ids), torch.int64), meta
