"""``ShardConfig``: every setting of one shard process, validated once. Environment is read only in
:class:`ShardConfig`'s ``env_*`` methods (RANK, WORLD_SIZE, LOCAL_RANK, PREFIX_CACHING, the router's budgets)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_PREFILL_TOKENS = 4096  # the router's default max_batch_prefill_tokens
LOAD_FORMATS = ("safetensors", "dummy")  # dummy: vLLM's name; module initialisation, no checkpoint read


def budget_floor_tokens(environ: Mapping[str, str]) -> tuple[int, str]:
    """The usable tokens the router's budgets need of a KV pool sized from memory, and why: its warmup prefill
    batch (``MAX_BATCH_PREFILL_TOKENS``, default 4096) and one request of ``MAX_TOTAL_TOKENS`` (when set) must
    fit. The launcher passes its --max-batch-prefill-tokens / --max-total-tokens to its shards in these
    variables (TGI's names). Raises ValueError on a value that is not a positive integer."""
    prefill = _positive(environ, "MAX_BATCH_PREFILL_TOKENS") or DEFAULT_PREFILL_TOKENS
    total = _positive(environ, "MAX_TOTAL_TOKENS")
    if total is not None and total > prefill:
        return total, f"MAX_TOTAL_TOKENS {total}"
    named = "MAX_BATCH_PREFILL_TOKENS" if environ.get("MAX_BATCH_PREFILL_TOKENS") else "the default"
    return prefill, f"{named} max_batch_prefill_tokens {prefill}"


def _positive(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


@dataclass(frozen=True)
class ShardConfig:
    model_dir: str
    uds_path: str = "/tmp/text-generation-server"
    dtype: str | None = None  # None: bfloat16 on CUDA and bf16-native CPUs, else float32 (shard.factory)
    device: str | None = None  # None: cuda if available else cpu
    attention_backend: str = "auto"
    num_blocks: int | None = None
    memory_fraction: float | None = None
    block_size: int = 16
    enforce_eager: bool = False
    load_format: str = "safetensors"
    cuda_graphs: tuple[int, ...] | None = None  # decode batch sizes to capture; None: the runner's default
    cpu_threads: int | None = None  # torch intra-op threads on CPU; None: see shard.factory.pick_cpu_threads
    rank: int = 0
    world_size: int = 1
    local_rank: int | None = None  # LOCAL_RANK: device index on CUDA (a data-parallel group's ranks are offset)
    otlp_endpoint: str | None = None
    otlp_service_name: str = "text-generation-inference.server"
    prefix_caching: bool = True  # reported in Info (TGI's PREFIX_CACHING env); the router owns the cache
    kv_host_tokens: int = 0  # host-memory KV tier (docs/kv-tiers-wire.md); 0: none
    kv_disk_tokens: int = 0  # disk KV tier under kv_disk_path; 0: none
    kv_disk_path: str | None = None
    pool_floor: tuple[int, str] | None = None  # (tokens, why) a pool sized from memory must hold; None: default
    rope_factor: float | None = None  # linear RoPE scaling replacing config.json's (TGI's --rope-factor)

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.cuda_graphs is not None and (not self.cuda_graphs or min(self.cuda_graphs) < 1):
            raise ValueError(f"--cuda-graphs sizes must be positive, got {self.cuda_graphs}")
        if self.load_format not in LOAD_FORMATS:
            raise ValueError(f"--load-format must be one of {LOAD_FORMATS}, got {self.load_format!r}")
        if self.num_blocks is not None and self.memory_fraction is not None:
            raise ValueError("give --num-blocks or --memory-fraction, not both")
        if not 1 <= self.block_size <= 256:
            raise ValueError(f"--block-size must be in 1..256, got {self.block_size}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"--cpu-threads must be at least 1, got {self.cpu_threads}")
        if self.rope_factor is not None and not self.rope_factor > 0:
            raise ValueError(f"--rope-factor must be positive, got {self.rope_factor}")
        if self.kv_host_tokens < 0 or self.kv_disk_tokens < 0:
            raise ValueError("--kv-host-tokens and --kv-disk-tokens must be at least 0")
        sizes = (("--kv-host-tokens", self.kv_host_tokens), ("--kv-disk-tokens", self.kv_disk_tokens))
        for flag, tokens in sizes:
            if 0 < tokens < self.block_size:  # NOTE: it would hold no block: the tier silently off
                raise ValueError(
                    f"{flag} {tokens} is less than one KV block ({self.block_size} tokens, --block-size); "
                    f"give 0 for no tier or at least {self.block_size}"
                )
        if self.kv_disk_tokens and not self.kv_disk_path:
            raise ValueError("--kv-disk-tokens needs --kv-disk-path (KV_DISK_PATH)")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"RANK {self.rank} is not below WORLD_SIZE {self.world_size}")

    @property
    def kv_host_blocks(self) -> int:
        """Whole blocks of the host tier (a partial block's tokens are dropped; build_tiers logs it)."""
        return self.kv_host_tokens // self.block_size

    @property
    def kv_disk_blocks(self) -> int:
        """Whole blocks of the disk tier, as :attr:`kv_host_blocks`."""
        return self.kv_disk_tokens // self.block_size

    @property
    def socket_path(self) -> str:
        """The Unix socket file this shard listens on."""
        return f"{self.uds_path}-{self.rank}"

    @property
    def urls(self) -> list[str]:
        """Every shard's URL (ServiceDiscovery)."""
        return [f"unix://{self.uds_path}-{r}" for r in range(self.world_size)]

    @staticmethod
    def env_prefix_caching() -> bool:
        """TGI's ``PREFIX_CACHING`` (default on). Raises ValueError on a value that is not 1/0/true/false."""
        raw = os.environ.get("PREFIX_CACHING", "1").strip().lower()
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"PREFIX_CACHING must be 1/0/true/false, got {raw!r}")

    @staticmethod
    def env_pool_floor() -> tuple[int, str]:
        """:func:`budget_floor_tokens` of MAX_BATCH_PREFILL_TOKENS / MAX_TOTAL_TOKENS (ValueError on a bad value)."""
        return budget_floor_tokens(os.environ)

    @staticmethod
    def env_local_rank() -> int | None:
        """LOCAL_RANK (torchrun's name; the launcher sets it under --data-parallel), None when unset."""
        raw = os.environ.get("LOCAL_RANK", "").strip()
        return int(raw) if raw else None

    @staticmethod
    def env_rank() -> tuple[int, int]:
        """(RANK, WORLD_SIZE) from the environment, defaults (0, 1)."""
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
