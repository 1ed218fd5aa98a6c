"""Tensor parallelism: the shard's process group and the two collectives the model uses.

Each of the ``world`` shard ranks (launched with ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``)
holds 1/world of the attention heads, KV heads, MLP columns and vocabulary rows (``docs/tensor-parallel.md``).
A :class:`TensorParallel` of world size 1 is the single-rank shard: it never calls ``torch.distributed``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorParallel:
    """This rank's place in the tensor-parallel group; world 1 is the single-rank shard (no collectives)."""

    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def split(self, size: int) -> tuple[int, int]:
        """[start, end) of this rank's even part of ``size`` (callers check divisibility first)."""
        part = size // self.world
        return self.rank * part, (self.rank + 1) * part

    def vocab_part(self, vocab: int) -> int:
        """Rows per rank of a vocab-parallel table: ceil(vocab / world); the last rank's tail is padding."""
        return -(-vocab // self.world)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` (any shape) over the ranks, in place; ``x`` unchanged at world 1."""
        if self.world > 1:
            torch.distributed.all_reduce(x)
        return x

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """(..., k) on each rank -> (..., world * k), rank r's part at [r*k, (r+1)*k), same on every rank."""
        if self.world == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world)]
        torch.distributed.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=-1)

    def min_int(self, value: int, device: torch.device) -> int:
        """The smallest ``value`` over the ranks (e.g. the KV pool's block count, equal on every rank)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return int(t.item())


    def shutdown(self) -> None:
        """Leave the group once every rank is here (a rank that exits first can abort a slower peer)."""
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


SINGLE = TensorParallel()


def init_tensor_parallel(rank: int, world: int, device: torch.device) -> TensorParallel:
    """Join the group (``env://``: MASTER_ADDR/MASTER_PORT), NCCL on CUDA and gloo on CPU; nothing at world 1.

    Raises:
        ValueError: rank outside [0, world).
    """
    if not 0 <= rank < world:
        raise ValueError(f"RANK {rank} is not below WORLD_SIZE {world}")
    if world == 1:
        return SINGLE
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        kw = {"device_id": device} if device.type == "cuda" else {}
        torch.distributed.init_process_group(backend, init_method="env://", rank=rank, world_size=world, **kw)
    log.info("tensor parallel rank %d of %d (%s) on %s", rank, world, backend, device)
    return TensorParallel(rank, world)


def check_divisible(heads: int, kv_heads: int, intermediate: int, world: int) -> None:
    """Raises ValueError naming every size that does not split evenly over ``world`` ranks."""
    bad = [f"{name} {value}" for name, value in
           (("attention heads", heads), ("KV heads", kv_heads), ("intermediate size", intermediate))
           if value % world]
    if bad:
        raise ValueError(
            f"--num-shard {world}: the model's {', '.join(bad)} not divisible by {world}; "
            f"tensor parallelism splits attention heads, KV heads and the MLP evenly over the shards "
            f"(use a --num-shard that divides {heads} attention heads, {kv_heads} KV heads and "
            f"intermediate size {intermediate})"
        )
