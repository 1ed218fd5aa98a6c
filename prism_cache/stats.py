"""Exact-prefix hit statistics: prompt tokens queried and served from the cache, per namespace and in total."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class HitCounter:
    queried: int = 0
    hit: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hit / self.queried if self.queried else 0.0


@dataclass
class CacheStats:
    """Token-weighted counters; ``record`` is called once per admitted request."""

    total: HitCounter = field(default_factory=HitCounter)
    by_namespace: dict[str, HitCounter] = field(default_factory=dict)

    def record(self, namespace: str, prompt_tokens: int, hit_tokens: int) -> None:
        """Args: prompt_tokens: the request's prompt length; hit_tokens: its cache_len (0 <= hit <= prompt)."""
        if not 0 <= hit_tokens <= prompt_tokens:
            raise ValueError(f"hit {hit_tokens} outside [0, {prompt_tokens}]")
        ns = self.by_namespace.setdefault(namespace, HitCounter())
        for c in (self.total, ns):
            c.queried += prompt_tokens
            c.hit += hit_tokens
