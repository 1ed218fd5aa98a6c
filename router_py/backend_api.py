"""Plain data exchanged between the HTTP layer (server, validation) and the generation backend (batcher).

The HTTP layer validates a request into a :class:`ValidRequest` and iterates
``backend.generate_stream(request)``, which yields :class:`PrefillTokens` (only when
``decoder_input_details``), then one :class:`TokenEvent` per generated token, the last one being an
:class:`EndEvent`. Failures raise :class:`InferError`. best_of, return_full_text and response shaping are the
HTTP layer's; continuing past the 1,024-token shard chunk is the backend's (the client sees one stream).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, Union

DEFAULT_GENERATION_LENGTH = 1024  # max_new_tokens per shard request; longer generations continue (TGI)
DEFAULT_PREFILL_TOKENS = 4096  # TGI's router default of --max-batch-prefill-tokens


@dataclass(frozen=True)
class ChooserParams:
    """What the shard gets as NextTokenChooserParameters; defaults mean "off"."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    typical_p: float = 1.0
    do_sample: bool = False
    seed: int = 0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    watermark: bool = False
    grammar: str = ""
    grammar_type: int = 0  # GrammarType enum value
    min_p: float = 0.0  # vLLM's, OpenAI routes only: sampled rows drop tokens under min_p x the top one's
    logit_bias: tuple[tuple[int, float], ...] = ()  # OpenAI's: (token id, bias added to its logit)


@dataclass(frozen=True)
class StoppingParams:
    max_new_tokens: int  # total the client asked for (already defaulted); the backend chunks it by 1,024
    stop_sequences: tuple[str, ...] = ()
    ignore_eos_token: bool = False
    # NOTE: vLLM's, OpenAI routes only. min_tokens: EOS and stop_token_ids cannot end the generation (and stop
    # sequences do not match) before this many tokens; stop_token_ids: generating one ends it ("eos_token")
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class ValidRequest:
    # NOTE: our shard computes on input_ids (Request.input_ids); a TGI shard ignores them and tokenizes the
    # text of input_chunks, which is ``inputs``
    inputs: str  # the prompt's text (a token-id prompt's: its ids decoded)
    input_ids: tuple[int, ...]  # the prompt's ids after truncation: what the shard computes on, the cache
    # matches
    truncate: int
    sampling: ChooserParams
    stopping: StoppingParams
    add_special_tokens: bool = True
    decoder_input_details: bool = False  # = prefill_logprobs; bypasses the prefix cache (TGI)
    top_n_tokens: int = 0
    adapter_id: str | None = None
    namespace: str = ""  # cache namespace (tenant / adapter); never shared across namespaces
    session: str | None = None  # the conversation or user it names (x-session-id, OpenAI user): DART's key
    # NOTE: input_ids' block hashes (prism_cache.block_hashes at the backend's block size) when the backend
    # already computed them (data parallelism, to choose the replica): the replica's scheduler reuses them
    block_hashes: tuple[int, ...] | None = None
    # NOTE: the prompt came as token ids (OpenAI completions): input_ids are the client's, never re-tokenized,
    # also not for the rounds past 1,024 new tokens (those tokenize only the generated text)
    ids_given: bool = False
    # NOTE: vLLM's skip_special_tokens (OpenAI routes; router_py.http.special_text): the router's, not the shard's
    skip_special_tokens: bool = True

    @property
    def input_length(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class Token:
    id: int
    text: str
    logprob: float | None  # None for the first prefill token (NaN on the wire)
    special: bool = False


@dataclass(frozen=True)
class PrefillTokens:
    tokens: list[Token]
    top_tokens: list[list[Token]] = field(default_factory=list)  # per prompt token, with top_n_tokens
    ranks: list[int] = field(default_factory=list)  # per prompt token, by logprob (0: none, the first)


@dataclass(frozen=True)
class TokenEvent:
    token: Token
    top_tokens: list[Token] = field(default_factory=list)


@dataclass(frozen=True)
class EndEvent(TokenEvent):
    generated_text: str = ""
    generated_tokens: int = 0
    finish_reason: str = "length"  # "length" | "eos_token" | "stop_sequence"
    seed: int | None = None  # set only when sampled
    queued_at: float = 0.0  # time.monotonic() when enqueued
    started_at: float = 0.0  # time.monotonic() when first admitted to a batch


InferEvent = Union[PrefillTokens, TokenEvent, EndEvent]


class InferError(Exception):
    """A generation that could not complete. ``error_type`` is TGI's: ``generation`` (shard failure, 424),
    ``overloaded`` (429), ``incomplete_generation`` (stream ended early), ``validation`` (422)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


@dataclass(frozen=True)
class BackendInfo:
    """What Info/Warmup settled, for /info, /metrics and validation."""

    max_input_tokens: int
    max_total_tokens: int
    max_batch_total_tokens: int
    block_size: int
    requires_padding: bool
    dtype: str
    device_type: str
    support_chunking: bool
    use_prefix_caching: bool
    speculate: int = 0
    kv_host_blocks: int = 0  # the shard's KV tiers (docs/kv-tiers-wire.md); 0: none
    kv_disk_blocks: int = 0
    kv_block_bytes: int = 0
    # NOTE: the prefill budget Warmup ran with: the user's, else the default fitted to the KV pool
    max_batch_prefill_tokens: int = DEFAULT_PREFILL_TOKENS


class Backend(Protocol):
    """The generation backend seen by the HTTP layer (implemented by :mod:`router_py.engine.batcher`)."""

    info: BackendInfo

    def generate_stream(self, request: ValidRequest) -> AsyncIterator[InferEvent]:
        """Queue the request and yield its events; raises InferError. Closing the iterator early (client
        gone) removes the request from the queue or batch and releases its blocks."""
        ...

    async def health(self) -> bool:
        """TGI's health state machine: cheap Health RPC when healthy, a 1-token Prefill probe after a failure."""
        ...
