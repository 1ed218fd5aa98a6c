"""Types shared by the router's tier bookkeeping and the shard that moves blocks (TIERS-CONTRACT.md).

A slot is an index into one tier's pool: on the device it is the existing block id; on the host, a row of the
pinned host pool; on disk, a file slot. ``block_hash`` is the tree's chained block hash: a disk file records it,
and a mismatch on read means a corrupt or foreign file (treated as a miss, never served)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Tier(enum.IntEnum):
    """Where a block's KV lives; the same numbers as the proto's ``KvTier``."""

    DEVICE = 0
    HOST = 1
    DISK = 2


TIER_NAMES = {Tier.DEVICE: "device", Tier.HOST: "host", Tier.DISK: "disk"}
TIER_POLICIES = ("dart", "hotprefix", "lru-offload")


@dataclass(frozen=True, slots=True)
class BlockCopy:
    """Copy one block's KV from ``src_slot`` of ``src_tier`` to ``dst_slot`` of ``dst_tier`` (src_tier !=
    dst_tier). The shard executes a list of copies in list order."""

    src_tier: Tier
    src_slot: int
    dst_tier: Tier
    dst_slot: int
    block_hash: int


@dataclass(frozen=True, slots=True)
class TierConfig:
    """Sizes of the tiers below the device pool, in blocks, and the placement policy. Tiers are off (the
    allocator behaves exactly as without them) when both sizes are 0. Raises ValueError on a negative size or an
    unknown policy."""

    host_blocks: int = 0
    disk_blocks: int = 0
    policy: str = "dart"

    def __post_init__(self) -> None:
        if self.host_blocks < 0 or self.disk_blocks < 0:
            raise ValueError(f"tier sizes must be >= 0, got host={self.host_blocks} disk={self.disk_blocks}")
        if self.policy not in TIER_POLICIES:
            raise ValueError(f"unknown tier policy {self.policy!r}; expected one of {', '.join(TIER_POLICIES)}")

    @property
    def enabled(self) -> bool:
        return self.host_blocks > 0 or self.disk_blocks > 0
