"""vLLM's ``prompt_logprobs`` on the OpenAI routes: each prompt token's logprob, rank and text, and its
position's ``prompt_logprobs`` likeliest tokens', as vLLM answers them:
``[null, {"<id>": {"logprob", "rank", "decoded_token"}, ...}, ...]`` (the prompt's token first; none for the
first position; -inf as -9999.0), per choice on completions and on the response on chat.

The request runs as TGI's ``decoder_input_details`` (the whole prompt computed: the prefix cache is bypassed),
with ``top_n_tokens`` raised to ``prompt_logprobs`` where the generated tokens ask for fewer (their lists are
cut back: :func:`trim_alternatives`). As vLLM, a value above 0 is refused when streaming; so is -1 (vLLM's
whole vocabulary) and anything above the router's ``max_top_n_tokens``: a 422.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from router_py.backend_api import Token
from router_py.http.errors import validation_error
from router_py.http.generation_runner import FinishedSequence

FIELD = {"prompt_logprobs": ("i64", True)}  # merged into the OpenAI routes' field tables
LOWEST = -9999.0  # vLLM's (and OpenAI's) stand-in for -inf, which JSON cannot carry


def check_prompt_logprobs(value: int | None, stream: bool, limit: int) -> int | None:
    """The request's ``prompt_logprobs`` (None: not asked). Raises HttpError 422 (validation)."""
    if value is None:
        return None
    if not 0 <= value <= limit:
        raise validation_error(f"`prompt_logprobs` must be >= 0 and <= {limit}. Given: {value}")
    if stream and value > 0:
        raise validation_error("`prompt_logprobs` are not available when `stream=True`")
    return value


def alternatives_asked(generated: int | None, prompt: int | None) -> int | None:
    """``top_n_tokens`` for a request whose generated tokens ask ``generated`` alternatives each and whose
    prompt asks ``prompt`` (None: not asked)."""
    asked = [k for k in (generated, prompt) if k is not None]
    return max(asked) if asked else None


def trim_alternatives(gen: FinishedSequence, k: int | None) -> FinishedSequence:
    """``gen`` with at most ``k`` alternatives per generated token (None: none asked, so none)."""
    return replace(gen, top_tokens=[top[: k or 0] for top in gen.top_tokens])


def prompt_logprobs_json(gen: FinishedSequence, k: int) -> list[dict[str, dict[str, Any]] | None]:
    """vLLM's ``prompt_logprobs`` of a finished sequence asked with ``decoder_input_details``."""
    out: list[dict[str, dict[str, Any]] | None] = [None]
    tops = gen.prefill_top or [[] for _ in gen.prefill]
    for token, rank, top in zip(gen.prefill[1:], gen.prefill_ranks[1:], tops[1:]):
        entry = {str(token.id): _logprob(token, rank)}
        for place, alternative in enumerate(top[:k], 1):
            entry.setdefault(str(alternative.id), _logprob(alternative, place))
        out.append(entry)
    return out


def _logprob(token: Token, rank: int) -> dict[str, Any]:
    logprob = token.logprob if token.logprob is not None else LOWEST
    return {"logprob": max(logprob, LOWEST), "rank": rank, "decoded_token": token.text}
