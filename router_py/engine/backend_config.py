"""What the router asks of its backend before Warmup settles the limits (TGI's router flags)."""

from __future__ import annotations

from dataclasses import dataclass

from router_py.backend_api import DEFAULT_PREFILL_TOKENS


@dataclass(frozen=True)
class BackendConfig:
    """Token limits and batching knobs. ``None`` limits are left to the shard (Warmup) or derived as TGI does;
    the settled values are in :class:`router_py.backend_api.BackendInfo`."""

    max_input_tokens: int | None = None
    max_total_tokens: int | None = None
    max_batch_prefill_tokens: int = DEFAULT_PREFILL_TOKENS
    # NOTE: False when the user left --max-batch-prefill-tokens unset: the handshake then lowers the default
    # to what the shard's KV pool holds (router_py.engine.warmup.fit_prefill_budget); a value the user set is
    # kept as given, and a pool that cannot hold it stays a startup error naming the flag
    max_batch_prefill_tokens_set: bool = True
    max_batch_total_tokens: int | None = None
    max_batch_size: int | None = None
    waiting_served_ratio: float = 1.2
    max_waiting_tokens: int = 20
    # Seconds queued requests wait for a lost shard to come back before they are refused.
    shard_recovery_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_batch_prefill_tokens <= 0:
            raise ValueError("`max_batch_prefill_tokens` must be > 0")
        if self.max_batch_size is not None and self.max_batch_size <= 0:
            raise ValueError("`max_batch_size` must be > 0")
        if self.waiting_served_ratio < 0:
            raise ValueError("`waiting_served_ratio` must be >= 0")
