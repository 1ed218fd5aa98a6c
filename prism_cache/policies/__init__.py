"""Retention policies by name: ``lru``, ``lfu``, ``hotprefix``, ``lookahead-lru``, ``dart``."""

from __future__ import annotations

from collections.abc import Mapping

from prism_cache.demand import Demand
from prism_cache.policies.base import Key, RetentionPolicy
from prism_cache.policies.dart import POPULARITY_WEIGHT, DartPolicy
from prism_cache.policies.hotprefix import HotPrefixPolicy
from prism_cache.policies.lfu import LfuPolicy
from prism_cache.policies.lookahead_lru import LookaheadLruPolicy
from prism_cache.policies.lru import LruPolicy

POLICY_NAMES = ("lru", "lfu", "hotprefix", "lookahead-lru", "dart")


def make_policy(name: str, demand: Demand, params: Mapping[str, float] | None = None) -> RetentionPolicy:
    """Build a policy by name. ``params`` may hold ``hotprefix_max_age``, ``hotprefix_decay_period`` and
    ``dart_popularity_weight``.
    Raises ValueError for an unknown name."""
    p = params or {}
    if name == "lru":
        return LruPolicy()
    if name == "lfu":
        return LfuPolicy()
    if name == "hotprefix":
        return HotPrefixPolicy(p.get("hotprefix_max_age", 8.0), p.get("hotprefix_decay_period", 16.0))
    if name == "lookahead-lru":
        return LookaheadLruPolicy(demand)
    if name == "dart":
        return DartPolicy(demand, p.get("dart_popularity_weight", POPULARITY_WEIGHT))
    raise ValueError(f"unknown cache policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")


__all__ = ["POLICY_NAMES", "Key", "RetentionPolicy", "make_policy"]
