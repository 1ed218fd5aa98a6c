"""Constrained decoding with llguidance: compile a request's grammar, mask its logits, advance its state.

The grammar arrives in ``NextTokenChooserParameters.grammar`` / ``grammar_type`` as TGI's router sends it:
``GRAMMAR_TYPE_JSON`` with the JSON schema as a string, or ``GRAMMAR_TYPE_REGEX`` with a regex the whole
output must match. Two hooks in :meth:`shard.model_runner.ModelRunner.step` drive it: :func:`apply_masks`
before the tokens are chosen (disallowed tokens get -inf, EOS stays allowed only where the grammar accepts),
and :func:`advance` after (each request's matcher consumes its token; where cores are spare, the next step's
masks are then computed on a worker thread while the next forward runs: see :class:`MaskWorker`).

Compiled grammars are cached (LRU keyed by type and text); each request gets a copy of the cached matcher.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import llguidance
import torch

from shard.generation import TokensOut

if TYPE_CHECKING:
    from shard.generation import GenerationOut

GRAMMAR_TYPE_NONE, GRAMMAR_TYPE_JSON, GRAMMAR_TYPE_REGEX = 0, 1, 2
CACHE_SIZE = 256
COMPILE_THREADS = 2
# NOTE: no free whitespace between JSON tokens: a model (random weights included) cannot pad output forever.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarError(ValueError):
    """A grammar that does not compile (bad type, invalid JSON, unsupported schema keyword, limits)."""


def grammar_source(kind: int, text: str) -> str:
    """The llguidance grammar for one proto (grammar_type, grammar) pair.

    Raises:
        GrammarError: unknown type, or a JSON grammar that is not a JSON object.
    """
    if kind == GRAMMAR_TYPE_JSON:
        try:
            schema = json.loads(text)
        except ValueError as err:
            raise GrammarError(f"JSON grammar is not valid JSON: {err}") from err
        if not isinstance(schema, dict):
            raise GrammarError("JSON grammar must be a JSON object (a JSON schema)")
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    if kind == GRAMMAR_TYPE_REGEX:
        return llguidance.LLMatcher.grammar_from_regex(text)
    raise GrammarError(f"unknown grammar type {kind}")


class Tokenizer(Protocol):
    def to_str(self) -> str: ...


class GrammarCompiler:
    """Compiles grammars against one tokenizer and vocabulary width; thread-safe; caches compiled matchers.

    Args:
        tokenizer: the model's ``tokenizers.Tokenizer``.
        vocab_size: width of the model's logits (may exceed the tokenizer's vocabulary: the rest is masked).
        eos_token_ids: ids that end generation; the mask allows them only where the grammar accepts.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        vocab_size: int,
        eos_token_ids: Sequence[int],
        cache_size: int = CACHE_SIZE,
        masks: MaskWorker | None = None,
    ):
        self.masks = masks or MaskWorker()
        self.vocab_size = vocab_size
        self.eos_token_ids = tuple(sorted(eos_token_ids))
        self.tokenizer = llguidance.LLTokenizer(
            tokenizer.to_str(), n_vocab=vocab_size, eos_token=sorted(eos_token_ids)
        )
        self.limits = llguidance.LLParserLimits(verbose_errors=False)
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[int, str], llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()
        self._threads = ThreadPoolExecutor(max_workers=COMPILE_THREADS, thread_name_prefix="grammar-compile")
        self.compiles = 0  # cache misses, for tests and logs

    def state(self, kind: int, text: str) -> GrammarState:
        """A request's state at the start of the grammar.

        Raises:
            GrammarError: the grammar does not compile.
        """
        return GrammarState(self.matcher(kind, text), self.vocab_size, self.eos_token_ids, self.masks)

    def refused(self) -> GrammarState:
        """The state of a request whose grammar does not compile: only EOS is allowed, so it ends at once
        without failing the other requests of its batch (the proto has no per-request error)."""
        return self.state(GRAMMAR_TYPE_REGEX, "")

    def precompile(self, grammars: Sequence[tuple[int, str]]) -> None:
        """Compile the uncached ones among ``grammars`` in parallel (llguidance drops the GIL while it builds
        a grammar); errors are left for :meth:`state` to raise for their own request."""
        with self._lock:
            missing = list(dict.fromkeys(g for g in grammars if g not in self._cache))
        if len(missing) > 1:
            list(self._threads.map(self._try_compile, missing))

    def _try_compile(self, grammar: tuple[int, str]) -> None:
        try:
            self.matcher(*grammar)
        except GrammarError:
            pass

    def matcher(self, kind: int, text: str) -> llguidance.LLMatcher:
        """A fresh matcher at the start of the grammar.

        Raises:
            GrammarError: the grammar does not compile.
        """
        key = (kind, text)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached.deep_copy()
        compiled = llguidance.LLMatcher(
            self.tokenizer, grammar_source(kind, text), log_level=0, limits=self.limits
        )
        if compiled.is_error():
            raise GrammarError(compiled.get_error())
        with self._lock:
            self.compiles += 1
            self._cache[key] = compiled
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return compiled.deep_copy()


@dataclass
class GrammarState:
    """One request's matcher, plus the mask precomputed for its next step (if any)."""

    matcher: llguidance.LLMatcher
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    masks: MaskWorker
    consumed: int = 0  # tokens consumed so far
    _prefetched: tuple[Future, torch.Tensor, int, int] | None = field(default=None, repr=False)

    def mask_row(self) -> torch.Tensor | None:
        """The (words,) int32 bitmask for the next token, when it was precomputed for this position."""
        pre, self._prefetched = self._prefetched, None
        if pre is None:
            return None
        future, bitmask, row, position = pre
        future.result()  # NOTE: always waited for: the worker must be done with this matcher first
        return bitmask[row] if position == self.consumed else None


class MaskWorker:
    """Computes bitmasks (llguidance drops the GIL meanwhile).

    Args:
        prefetch: compute the next step's masks on a worker thread while the next forward runs.
        parallel: spread one step's masks over llguidance's thread pool.

    NOTE: measured on the 2-core CPU box (docs/structured-output.md): the mask thread and the pool compete
    with torch's own threads for the cores, so by default both are used only where cores are spare (a GPU
    host: the forward runs on the device, the CPU is free meanwhile; more than 4 cores).
    """

    def __init__(self, prefetch: bool | None = None, parallel: bool | None = None) -> None:
        self.prefetch = torch.cuda.is_available() if prefetch is None else prefetch
        self.parallel = (os.cpu_count() or 1) > 4 if parallel is None else parallel
        self._executor: llguidance.LLExecutor | None = None
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-mask")

    @staticmethod
    def words(vocab_size: int) -> int:
        return (vocab_size + 31) // 32

    def fill(self, states: list[GrammarState], vocab_size: int) -> torch.Tensor:
        """(len(states), words) int32 bitmasks, computed now."""
        bitmask = torch.empty((len(states), self.words(vocab_size)), dtype=torch.int32)
        self._fill_into(states, bitmask)
        return bitmask

    def _fill_into(self, states: list[GrammarState], bitmask: torch.Tensor) -> None:
        row_bytes = bitmask.shape[1] * 4
        if self.parallel and len(states) > 1:
            pairs = [(s.matcher, i) for i, s in enumerate(states)]
            if self._executor is None:
                self._executor = llguidance.LLExecutor()
            self._executor.unsafe_compute_mask_ptr(pairs, bitmask.data_ptr(), row_bytes, len(states))
            return
        for i, s in enumerate(states):
            s.matcher.unsafe_compute_mask_ptr(bitmask[i].data_ptr(), row_bytes)

    def prefetch_next(self, states: list[GrammarState], vocab_size: int) -> None:
        """Start computing the next masks of ``states`` on the worker thread (overlaps the next forward)."""
        if not states:
            return
        bitmask = torch.empty((len(states), self.words(vocab_size)), dtype=torch.int32)
        future = self.thread.submit(self._fill_into, list(states), bitmask)
        for i, s in enumerate(states):
            s._prefetched = (future, bitmask, i, s.consumed)


def allowed_tokens(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """(n, vocab) bool from (n, words) int32 bitmasks: bit j of word w allows token 32 * w + j."""
    bits = torch.arange(32, dtype=torch.int32)
    return ((bitmask.unsqueeze(-1) >> bits) & 1).flatten(-2)[..., :vocab].bool()


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Set disallowed logits to -inf in place.

    Args:
        logits: (n, vocab) fp32.
        bitmask: (n, words) int32.
    """
    logits.masked_fill_(~allowed_tokens(bitmask, logits.shape[-1]), float("-inf"))


class GrammarRequest(Protocol):
    """What the hooks read of a shard request (``shard.batch.RequestState``; a Protocol, so no import cycle)."""

    id: int
    grammar: GrammarState | None
    cache_len: int
    prompt_len: int


def apply_masks(requests: Sequence[GrammarRequest], cu_seqlens_q: Sequence[int], logits) -> None:
    """Hook before token choice: mask the logits row of every grammar request that chooses a token this step.

    Args:
        requests: the step's requests, in batch order.
        cu_seqlens_q: (len(requests) + 1) flat row offsets of the step's inputs.
        logits: a ``StepLogits``: ``values`` (rows, vocab) fp32, ``row_index`` flat row -> row of ``values``.
    """
    index, states = [], []
    for r, start, end in zip(requests, cu_seqlens_q, cu_seqlens_q[1:]):
        if r.grammar is not None and r.cache_len + (end - start) >= r.prompt_len:
            index.append(logits.row_index[end - 1])
            states.append(r.grammar)
    if not states:
        return
    values = logits.values
    bitmask = _bitmasks(states, values.shape[-1])
    with torch.inference_mode():  # the step's logits are inference tensors
        rows = torch.tensor(index, dtype=torch.int64)
        allowed = allowed_tokens(bitmask, values.shape[-1])
        masked = values.index_select(0, rows).masked_fill_(~allowed, float("-inf"))
        dead = torch.isneginf(masked).all(-1)
        if bool(dead.any()):  # a matcher in error (a parser limit): EOS, then advance() fails the request
            eos = torch.tensor(states[0].eos_token_ids, dtype=torch.int64)
            masked[dead.nonzero().flatten()[:, None], eos] = 0.0
        values.index_copy_(0, rows, masked)


def _bitmasks(states: list[GrammarState], vocab: int) -> torch.Tensor:
    """(len(states), words) int32: the prefetched rows where they are ready, the others computed now."""
    masks = states[0].masks
    ready = [s.mask_row() for s in states]
    missing = [s for s, m in zip(states, ready) if m is None]
    if len(missing) == len(states):
        return masks.fill(states, vocab)
    if missing:
        computed = iter(masks.fill(missing, vocab))
        ready = [m if m is not None else next(computed) for m in ready]
    return torch.stack(ready)


def advance(requests: Sequence[GrammarRequest], generations: Sequence[GenerationOut]) -> None:
    """Hook after token choice: each grammar request that got a token consumes it; then (when its mask worker
    prefetches) the next masks of the unfinished ones start on the worker thread.

    A request whose matcher is in its error state (a parser limit hit, or a schema no document satisfies,
    found only while generating) fails alone: its Generation becomes an error, never a finished
    ``eos_token`` output that does not match its grammar."""
    by_id = {r.id: r for r in requests if r.grammar is not None}
    if not by_id:
        return
    advanced = []
    for g in generations:
        r = by_id.get(g.request_id)
        if r is None or g.error is not None:  # a request that failed alone is dropped from the batch
            continue
        state = r.grammar
        if not state.matcher.is_stopped():
            state.matcher.consume_tokens(list(g.tokens.ids))
        state.consumed += len(g.tokens.ids)
        if state.matcher.is_error():
            _fail(g, state.matcher.get_error())
        elif g.finished is None:
            advanced.append(state)
    if advanced and advanced[0].masks.prefetch:
        advanced[0].masks.prefetch_next(advanced, advanced[0].vocab_size)


def _fail(g: GenerationOut, error: str) -> None:
    """``g`` as its request's failure: the servicer drops the request, the router answers an error."""
    detail = next((line.strip() for line in error.splitlines() if line.strip()), "unknown error")
    g.tokens, g.finished, g.top_tokens = TokensOut(), None, []
    g.error = f"GrammarError: the grammar failed while generating: {detail}"
