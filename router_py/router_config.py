"""The router's configuration: one frozen dataclass, validated once (TGI's launcher/router flags)."""

from __future__ import annotations

from dataclasses import dataclass

from router_py.tenancy import Tenants

VERSION = "3.3.6-dev0"  # TGI version we are wire-compatible with; reported in /info and OpenAPI
ROUTER_NAME = "text-generation-router"


@dataclass(frozen=True)
class RouterConfig:
    """Limits and settings of the router's HTTP front. ``max_input_tokens``/``max_total_tokens`` are the
    values settled at Warmup (the shard may choose them); batching limits live in
    :class:`~router_py.engine.backend_config.BackendConfig`, scheduling in
    :class:`~router_py.scheduling.interface.SchedulerConfig`; ``block_size`` comes from shard Info."""

    model_id: str = "prism-demo"
    model_pipeline_tag: str | None = "text-generation"
    model_sha: str | None = None
    max_concurrent_requests: int = 128
    max_best_of: int = 2
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    max_input_tokens: int = 4095
    max_total_tokens: int = 4096
    max_client_batch_size: int = 4
    validation_workers: int = 2  # threads that tokenize prompts (Validator), off the event loop
    payload_limit: int = 2_000_000
    api_key: str | None = None
    cors_allow_origin: tuple[str, ...] = ()
    compute_type: str = "gpu+optimized"
    # Multi-tenancy: requests are put in a cache namespace from the API key (when one is configured) or
    # from this request header when the operator names one; None = one shared namespace.
    tenant_header: str | None = None
    # Several API keys, each its own tenant (and cache namespace), from --api-keys-file.
    tenants: Tenants | None = None
    disable_grammar_support: bool = False  # grammars (json/regex, response_format, tools) refused as in TGI
    prefix_caching: bool = True  # reported for operators; the scheduler's SchedulerConfig is what acts on it
    docker_label: str | None = None
    sha: str | None = None

    def __post_init__(self) -> None:
        if self.max_input_tokens >= self.max_total_tokens:
            raise ValueError(
                f"`max_input_tokens` must be < `max_total_tokens`. Given: {self.max_input_tokens} and "
                f"{self.max_total_tokens}"
            )
        if self.max_concurrent_requests <= 0:
            raise ValueError("`max_concurrent_requests` must be > 0")
        if self.validation_workers <= 0:
            raise ValueError("`validation_workers` must be > 0")
