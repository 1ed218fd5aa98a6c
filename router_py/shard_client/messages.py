"""Plain data the batcher exchanges with the shards (the generate.v3 messages, minus protobuf).

:mod:`router_py.shard_client.client` converts these to and from the generated stubs; nothing else in the router
sees a protobuf object. Field meanings are TGI's (tgi-compat.md 1.3).
"""

from __future__ import annotations

from dataclasses import dataclass

from router_py.backend_api import ChooserParams, Token

U64_MAX = 2**64 - 1  # request and batch id of the health probe (TGI)


@dataclass(frozen=True)
class ShardInfo:
    requires_padding: bool
    dtype: str
    device_type: str
    window_size: int | None
    speculate: int
    support_chunking: bool
    use_prefix_caching: bool
    attention_impl: str
    block_size: int
    kv_capacity_tokens: int = 0  # prism extension: the KV pool allocated at start, in tokens; 0: unknown


@dataclass(frozen=True)
class ShardRequest:
    """One Request message. ``blocks``/``slots`` empty = the shard allocates (warmup) or pads."""

    id: int
    inputs: str
    truncate: int
    sampling: ChooserParams
    max_new_tokens: int
    stop_sequences: tuple[str, ...] = ()
    ignore_eos_token: bool = False
    min_tokens: int = 0  # of this round (the batcher subtracts the tokens of earlier rounds)
    stop_token_ids: tuple[int, ...] = ()
    prefill_logprobs: bool = False
    top_n_tokens: int = 0
    blocks: tuple[int, ...] = ()
    slots: tuple[int, ...] = ()
    adapter_id: str | None = None
    cache_len: int = 0
    add_special_tokens: bool = True
    chunk_len: int | None = None
    input_ids: tuple[int, ...] = ()  # the router's ids of ``inputs`` (empty: the shard tokenizes)


@dataclass(frozen=True)
class RequestBatch:
    id: int
    requests: tuple[ShardRequest, ...]
    max_tokens: int
    max_blocks: int


@dataclass(frozen=True)
class CachedBatch:
    """A batch the shard keeps; ``request_ids`` still lists finished requests until FilterBatch.
    ``prompt_computed``: per request id, its prompt tokens whose KV the shard has computed (empty from a shard
    that does not say, as TGI's)."""

    id: int
    request_ids: tuple[int, ...]
    max_tokens: int
    current_tokens: int
    prompt_computed: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        return len(self.request_ids)


@dataclass(frozen=True)
class GeneratedText:
    text: str
    generated_tokens: int
    finish_reason: str  # "length" | "eos_token" | "stop_sequence"
    seed: int | None


@dataclass(frozen=True)
class Generation:
    request_id: int
    tokens: tuple[Token, ...]
    prefill_tokens: tuple[Token, ...] = ()
    generated_text: GeneratedText | None = None
    top_tokens: tuple[tuple[Token, ...], ...] = ()
    error: str | None = None  # the request failed alone in the shard, which already dropped it
    prefill_top_tokens: tuple[tuple[Token, ...], ...] = ()  # per prompt position (prism extension)
    prefill_ranks: tuple[int, ...] = ()  # per prompt token, its rank by logprob (prism extension)


@dataclass(frozen=True)
class StepResult:
    """A Prefill or Decode answer, merged over shards (slowest timings)."""

    generations: tuple[Generation, ...]
    batch: CachedBatch | None
    forward_ns: int = 0
    decode_ns: int = 0
    total_ns: int = 0
    concat_ns: int | None = None
    kv_failed: tuple[int, ...] = ()  # indices of the step's kv_copies the shard could not do (a miss)


@dataclass(frozen=True)
class WarmupResult:
    max_supported_total_tokens: int | None  # None: a padded (non-paged) shard
    max_input_tokens: int
    max_total_tokens: int
    kv_host_blocks: int = 0  # the KV tiers the shard allocated (docs/kv-tiers-wire.md); 0: none
    kv_disk_blocks: int = 0
    kv_block_bytes: int = 0
