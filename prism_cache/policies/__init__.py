"""Retention policies by name (``lru``, ``lfu``, ``hotprefix``, ``lookahead-lru``, ``dart``), built from a
typed :class:`PolicyConfig`. The registry says what each policy needs (segment popularity, a look-ahead
window), so no caller checks a policy's name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from prism_cache.demand import Demand
from prism_cache.params import parse_knobs
from prism_cache.policies.base import Key, RetentionPolicy
from prism_cache.policies.dart import DartParams, DartPolicy
from prism_cache.policies.hotprefix import HotPrefixParams, HotPrefixPolicy
from prism_cache.policies.lfu import LfuPolicy
from prism_cache.policies.lookahead_lru import LookaheadLruPolicy
from prism_cache.policies.lru import LruPolicy


@dataclass(frozen=True)
class PolicyConfig:
    """A retention policy's name and the knobs of every policy (a policy reads its own).

    Raises ValueError for an unknown name."""

    name: str = "lru"
    hotprefix: HotPrefixParams = field(default_factory=HotPrefixParams)
    dart: DartParams = field(default_factory=DartParams)

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise ValueError(f"unknown cache policy {self.name!r}; choose one of {', '.join(POLICY_NAMES)}")

    @classmethod
    def parse(cls, name: str, flat: Mapping[str, float] | None = None) -> PolicyConfig:
        """From flat ``--scheduler-param`` settings (keys of other components are ignored)."""
        p = flat or {}
        return cls(name, parse_knobs(HotPrefixParams, p), parse_knobs(DartParams, p))

    @property
    def uses_popularity(self) -> bool:
        """The policy reads segment popularity, so the cache must count it as requests are enqueued."""
        return POLICIES[self.name].uses_popularity(self)

    @property
    def uses_sessions(self) -> bool:
        """The policy reads session return, so the cache must observe sessions as requests are enqueued."""
        return self.name == "dart" and bool(self.dart.session_weight)

    @property
    def uses_lookahead(self) -> bool:
        """The policy reads look-ahead demand, so the scheduler must keep a look-ahead window."""
        return POLICIES[self.name].uses_lookahead


class _Entry(NamedTuple):
    build: Callable[[Demand, PolicyConfig], RetentionPolicy]
    uses_popularity: Callable[[PolicyConfig], bool]
    uses_lookahead: bool = False


def _never(config: PolicyConfig) -> bool:
    return False


def _hotprefix(demand: Demand, c: PolicyConfig) -> RetentionPolicy:
    return HotPrefixPolicy(c.hotprefix.max_age, c.hotprefix.decay_period)


def _dart(demand: Demand, c: PolicyConfig) -> RetentionPolicy:
    d = c.dart
    session_weight = d.session_weight if c.uses_sessions else 0.0
    return DartPolicy(demand, d.popularity_weight, session_weight, d.length_penalty)


POLICIES: dict[str, _Entry] = {
    "lru": _Entry(lambda demand, c: LruPolicy(), _never),
    "lfu": _Entry(lambda demand, c: LfuPolicy(), _never),
    "hotprefix": _Entry(_hotprefix, _never),
    "lookahead-lru": _Entry(lambda demand, c: LookaheadLruPolicy(demand), _never, uses_lookahead=True),
    "dart": _Entry(_dart, lambda c: bool(c.dart.popularity_weight)),
}
POLICY_NAMES = tuple(POLICIES)
POLICY_KNOBS = (HotPrefixParams, DartParams)  # the knob classes PolicyConfig.parse reads


def make_policy(config: PolicyConfig, demand: Demand) -> RetentionPolicy:
    """Build the policy ``config`` names over the cache's demand tables."""
    return POLICIES[config.name].build(demand, config)


__all__ = [
    "POLICIES", "POLICY_KNOBS", "POLICY_NAMES", "Key", "PolicyConfig", "RetentionPolicy", "make_policy",
]
