"""KV tiers below the device pool (host memory, disk) under the one router-owned tree. Stdlib only."""

from __future__ import annotations

from prism_cache.tiers.types import TIER_NAMES, TIER_POLICIES, BlockCopy, Tier, TierConfig

__all__ = ["TIER_NAMES", "TIER_POLICIES", "BlockCopy", "Tier", "TierConfig"]
