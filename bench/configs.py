"""Configuration names of a comparison: ``scheduler+policy`` (``fcfs+lru`` is TGI's behaviour, ``lpm+lru``
SGLang's, ``qas+dart`` PRISM's), plus the shorthands ``hotprefix`` and ``lookahead-lru``: HotPrefix was built
on SGLang (so ``lpm+hotprefix``) and PCR's look-ahead LRU on vLLM (so ``fcfs+lookahead-lru``)."""

from __future__ import annotations

from prism_cache.tiers import TierConfig
from router_py.scheduling.interface import Scheduler, SchedulerConfig

ALIASES = {"hotprefix": "lpm+hotprefix", "lookahead-lru": "fcfs+lookahead-lru"}
BASELINES = ("fcfs+lru", "lpm+lru")
PRISM = "qas+dart"


def is_baseline(config: str) -> bool:
    """A configuration with none of PRISM's parts (qas, dart): ablations such as qas+lru are not baselines."""
    sched, _, policy = canonical(config).partition("+")
    return sched != "qas" and policy != "dart"


def canonical(name: str) -> str:
    """``scheduler+policy`` for a config name or shorthand; raises ValueError on a malformed one."""
    full = ALIASES.get(name.strip(), name.strip())
    sched, sep, policy = full.partition("+")
    if not sep or not sched or not policy:
        raise ValueError(f"config {name!r} is not scheduler+policy (or one of {', '.join(ALIASES)})")
    return full


def parse_configs(text: str) -> list[str]:
    return [canonical(c) for c in text.split(",") if c.strip()]


def make(
    config: str,
    num_blocks: int,
    block_size: int,
    params: dict[str, float] | None = None,
    tiers: TierConfig | None = None,
    cache_generated: bool = True,
) -> Scheduler:
    """The router's scheduler for ``config`` over ``num_blocks`` KV blocks (and ``tiers`` below them);
    ``cache_generated``: see ``SchedulerConfig`` (the simulator releases without generated tokens either way)."""
    # NOTE: lazy, the PRISM package may land after bench
    from router_py.scheduling.registry import make_scheduler

    sched, _, policy = canonical(config).partition("+")
    return make_scheduler(
        SchedulerConfig(
            scheduler=sched,
            cache_policy=policy,
            num_blocks=num_blocks,
            block_size=block_size,
            params=dict(params or {}),
            tiers=tiers,
            cache_generated=cache_generated,
        )
    )
