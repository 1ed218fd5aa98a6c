"""One block copy between tiers, as the router sends it (``generate.v3.KvCopy``), and its checks."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from shard.errors import InvalidRequest


class Tier(enum.IntEnum):
    """Same numbers as proto ``KvTier`` and ``prism_cache.tiers.Tier``."""

    DEVICE = 0
    HOST = 1
    DISK = 2


@dataclass(frozen=True, slots=True)
class Copy:
    src_tier: Tier
    src_slot: int
    dst_tier: Tier
    dst_slot: int
    block_hash: int


def from_pb(copies: Iterable) -> list[Copy]:
    """``KvCopy`` messages -> Copy. Raises InvalidRequest for an unknown tier number."""
    out = []
    for c in copies:
        try:
            out.append(Copy(Tier(c.src_tier), c.src_slot, Tier(c.dst_tier), c.dst_slot, c.block_hash))
        except ValueError as err:
            raise InvalidRequest(f"kv_copies: {err}") from err
    return out


def check(copies: list[Copy], sizes: dict[Tier, int]) -> None:
    """Every copy names two different tiers this shard has and slots inside them (device block 0 is the
    router's health-probe block and never holds cached KV). Raises InvalidRequest (nothing done yet)."""
    for i, c in enumerate(copies):
        if c.src_tier == c.dst_tier:
            raise InvalidRequest(f"kv_copies[{i}]: source and destination are both {c.src_tier.name}")
        for tier, slot in ((c.src_tier, c.src_slot), (c.dst_tier, c.dst_slot)):
            size = sizes.get(tier, 0)
            if size == 0:
                raise InvalidRequest(
                    f"kv_copies[{i}]: this shard has no {tier.name} tier (start it with --kv-host-tokens / "
                    "--kv-disk-tokens)"
                )
            lowest = 1 if tier == Tier.DEVICE else 0
            if not lowest <= slot < size:
                raise InvalidRequest(
                    f"kv_copies[{i}]: {tier.name} slot {slot} is outside {lowest}..{size - 1}"
                )
