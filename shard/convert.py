"""``generate.v3`` messages <-> shard domain types. Only it and the servicer see pb."""

from __future__ import annotations

import logging

from proto.generate.v3 import generate_pb2 as pb
from shard.batch import RequestState, ShardBatch
from shard.detokenize import Detokenizer
from shard.errors import InvalidRequest
from shard.generation import GenerationOut, TokensOut
from shard.grammar import GRAMMAR_TYPE_NONE, GrammarCompiler, GrammarError
from shard.sampling import MinTokens, NextTokenChooser, SamplingParams, StoppingCriteria

log = logging.getLogger(__name__)


def prompt_text(r: pb.Request) -> str:
    """The text chunks joined; image chunks are dropped (text-only models, as TGI)."""
    texts = [c.text for c in r.input_chunks.chunks if c.WhichOneof("chunk") == "text"]
    if not texts:
        raise InvalidRequest(f"request {r.id}: input_chunks has no text chunk")
    return "".join(texts)


def _unset_as(value: float, neutral: float) -> float:
    """proto3 cannot tell 0 from unset; 0 is invalid for these fields (TGI's router refuses it): 0 = off."""
    return neutral if value <= 0 else value


def sampling_params(p: pb.NextTokenChooserParameters) -> SamplingParams:
    return SamplingParams(
        temperature=_unset_as(p.temperature, 1.0),
        top_k=p.top_k,
        top_p=_unset_as(p.top_p, 1.0),
        typical_p=_unset_as(p.typical_p, 1.0),
        do_sample=p.do_sample,
        seed=p.seed,
        repetition_penalty=_unset_as(p.repetition_penalty, 1.0),
        frequency_penalty=p.frequency_penalty,
        watermark=p.watermark,
        min_p=p.min_p,
        logit_bias=tuple(sorted(p.logit_bias.items())),
    )


def min_tokens_mask(
    s: pb.StoppingCriteriaParameters, eos_ids: frozenset[int], prompt_len: int
) -> MinTokens | None:
    """vLLM's min_tokens: EOS (even when ignored, as there) and the stop_token_ids masked for the first
    ``min_tokens`` generated tokens; None without min_tokens."""
    if s.min_tokens == 0:
        return None
    return MinTokens(tuple(sorted(eos_ids | set(s.stop_token_ids))), prompt_len + s.min_tokens)


def request_state(
    r: pb.Request, detok: Detokenizer, eos_ids: frozenset[int], grammars: GrammarCompiler | None = None
) -> RequestState:
    """Tokenize and wrap one Request (not yet validated against the pool); compile its grammar if it has one.

    Raises:
        InvalidRequest: no text chunk, invalid sampling values, or a grammar that does not compile (or any
            grammar when ``grammars`` is None).
    """
    try:
        params = sampling_params(r.parameters)
    except ValueError as err:
        raise InvalidRequest(f"request {r.id}: {err}") from err
    if r.input_ids:  # NOTE: our router's ids (same tokenizer files): tokenizing again cost ~1.5-3 ms per 1k tokens
        ids = list(r.input_ids)[-r.truncate:] if r.truncate > 0 else list(r.input_ids)
    else:
        ids = detok.encode(prompt_text(r), r.add_special_tokens, r.truncate)
    s = r.stopping_parameters
    chooser = NextTokenChooser(params, min_tokens_mask(s, eos_ids, len(ids)))
    stopping = StoppingCriteria(
        eos_ids, s.max_new_tokens, tuple(s.stop_sequences), s.ignore_eos_token, frozenset(s.stop_token_ids),
        s.min_tokens,
    )
    prefix_offset, read_offset = detok.initial_offsets(len(ids))
    return RequestState(
        id=r.id,
        token_ids=ids,
        prompt_len=len(ids),
        blocks=list(r.blocks),
        slots=list(r.slots),
        cache_len=r.cache_len,
        chooser=chooser,
        stopping=stopping,
        chunk_len=r.chunk_len if r.HasField("chunk_len") else None,
        prefill_logprobs=r.prefill_logprobs,
        top_n_tokens=r.top_n_tokens,
        prompt_logprobs=[float("nan")] * len(ids),
        prompt_ranks=[0] * len(ids),
        prefix_offset=prefix_offset,
        read_offset=read_offset,
        grammar=grammar_state(r, grammars),
    )


def grammar_state(r: pb.Request, grammars: GrammarCompiler | None):
    """The request's compiled grammar state, or None without a grammar. A grammar that does not compile ends
    its request at once (EOS, empty text) rather than failing the whole Prefill: TGI's router does not check
    grammars with our engine (ours refuses them with a 422 before they reach the shard).

    Raises:
        InvalidRequest: this shard has no grammar support.
    """
    p = r.parameters
    if p.grammar_type == GRAMMAR_TYPE_NONE and not p.grammar:
        return None
    if grammars is None:
        raise InvalidRequest(f"request {r.id}: grammars are not supported by this shard")
    try:
        return grammars.state(p.grammar_type, p.grammar)
    except GrammarError as err:
        log.warning("request %d: grammar does not compile, ending the request: %s", r.id, err)
        return grammars.refused()


def cached_batch(b: ShardBatch, block_size: int, current_tokens: int | None = None) -> pb.CachedBatch:
    """TGI's CachedBatch: ``max_tokens`` = the batch's blocks x block size (the router subtracts it from its
    token budget), ``current_tokens`` = tokens in the next forward (``b``'s own count unless given); and
    ``prompt_computed``, each request's prompt tokens with KV in the pool (our extension)."""
    return pb.CachedBatch(
        id=b.id,
        request_ids=b.request_ids,
        size=len(b.requests),
        max_tokens=b.num_blocks * block_size,
        current_tokens=b.current_tokens if current_tokens is None else current_tokens,
        prompt_computed=[min(r.cache_len, r.prompt_len) for r in b.requests],
    )


def _fill_tokens(out: pb.Tokens, t: TokensOut) -> None:
    out.SetInParent()  # NOTE: present even when empty (a failed request's tokens)
    out.ids.extend(t.ids)
    out.logprobs.extend(t.logprobs)
    out.texts.extend(t.texts)
    out.is_special.extend(t.is_special)


def add_generations(out, generations: list[GenerationOut]) -> None:
    """Append each generation to ``out``, a repeated ``pb.Generation`` field (a response's ``generations``),
    built in place (a decode step answers for every request, and building each message apart and copying it
    in costs twice as much)."""
    for g in generations:
        msg = out.add(request_id=g.request_id)
        _fill_tokens(msg.tokens, g.tokens)
        for t in g.top_tokens:
            _fill_tokens(msg.top_tokens.add(), t)
        if g.error is not None:
            msg.error = g.error
        if g.prefill_tokens is not None:
            _fill_tokens(msg.prefill_tokens, g.prefill_tokens)
            for t in g.prefill_top_tokens:
                _fill_tokens(msg.prefill_top_tokens.add(), t)
            msg.prefill_ranks.extend(g.prefill_ranks)
        if g.finished is not None:
            f = g.finished
            text = msg.generated_text
            text.SetInParent()
            text.text, text.generated_tokens = f.text, f.generated_tokens
            text.finish_reason = int(f.finish_reason)
            if f.seed is not None:
                text.seed = f.seed

