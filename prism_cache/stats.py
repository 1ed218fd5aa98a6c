"""Exact-prefix hit statistics: prompt tokens queried and served from the cache, per namespace and in total."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_NAMESPACES = 1024  # namespaces whose own counters are kept: the most recently recorded ones


@dataclass
class HitCounter:
    queried: int = 0
    hit: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hit / self.queried if self.queried else 0.0


@dataclass
class CacheStats:
    """Token-weighted counters; ``record`` is called once per admitted request. ``by_namespace`` keeps the
    :data:`MAX_NAMESPACES` namespaces recorded most recently (a namespace is a tenant and its ``cache_salt``,
    which clients choose: one per user or per request would grow it without end); ``total`` counts all."""

    total: HitCounter = field(default_factory=HitCounter)
    by_namespace: dict[str, HitCounter] = field(default_factory=dict)

    def record(self, namespace: str, prompt_tokens: int, hit_tokens: int) -> None:
        """Args: prompt_tokens: the request's prompt length; hit_tokens: its cache_len (0 <= hit <= prompt)."""
        if not 0 <= hit_tokens <= prompt_tokens:
            raise ValueError(f"hit {hit_tokens} outside [0, {prompt_tokens}]")
        table = self.by_namespace
        ns = table.pop(namespace, None)  # NOTE: re-inserted last: the table's order is recency
        if ns is None:
            ns = HitCounter()
            if len(table) >= MAX_NAMESPACES:
                del table[next(iter(table))]
        table[namespace] = ns
        for c in (self.total, ns):
            c.queried += prompt_tokens
            c.hit += hit_tokens
