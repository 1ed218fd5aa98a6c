"""prism_cache: block pool, DART radix tree, TGI-style allocator, retention policies, hit statistics and the
offline Belady bound. Standard library only."""

from __future__ import annotations

from prism_cache.allocator import Allocation, CacheSizes, RadixAllocator
from prism_cache.block_pool import BlockPool
from prism_cache.demand import Demand, DemandTable
from prism_cache.hashing import block_hashes
from prism_cache.policies import POLICY_NAMES, PolicyConfig, RetentionPolicy, make_policy
from prism_cache.node import Node
from prism_cache.observer import CacheObserver
from prism_cache.radix_tree import RadixTree
from prism_cache.stats import CacheStats, HitCounter

__all__ = [
    "POLICY_NAMES",
    "Allocation",
    "CacheSizes",
    "BlockPool",
    "CacheObserver",
    "CacheStats",
    "Demand",
    "DemandTable",
    "HitCounter",
    "Node",
    "PolicyConfig",
    "RadixAllocator",
    "RadixTree",
    "RetentionPolicy",
    "block_hashes",
    "make_policy",
]
