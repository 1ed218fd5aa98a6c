"""vLLM's sampling fields on the OpenAI routes: ``min_tokens``, ``stop_token_ids``, ``min_p``, and
``logit_bias`` (OpenAI's own too). TGI has none of them and ignores unknown fields; ignoring these silently
changes outputs, so they are served, with vLLM's meaning:

- ``min_tokens``: EOS and ``stop_token_ids`` are masked out (logit -inf) until that many tokens were
  generated, and stop strings only match text generated after them. At most ``max_tokens`` when given.
- ``stop_token_ids``: generating one ends the generation (finish reason ``stop``); the token counts in
  ``usage`` but its text is not in the output (vLLM's default, ``include_stop_str_in_output`` false).
- ``min_p``: sampled requests drop the tokens whose probability is below ``min_p`` times the likeliest one's;
  in [0, 1], 0 is off; greedy requests ignore it (as vLLM does at temperature 0).
- ``logit_bias``: ``{"<token id>": bias}``, bias in [-100, 100] (OpenAI's range; vLLM clamps instead),
  added to the logits before any other processor.

Checked here, before a stream starts, so a bad value is one 422 in TGI's format (``Input validation error:
...``, ``error_type`` ``validation``) whether streamed or not. A value of the wrong JSON type is the
deserializer's error, as for every other field (:func:`router_py.http.validation.check_value`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from router_py.http.errors import validation_error

# field -> (check_value kind, nullable), merged into the OpenAI routes' field tables
VLLM_SAMPLING_FIELDS: dict[str, tuple[str, bool]] = {
    "min_tokens": ("i64", True),
    "stop_token_ids": ("i64s", True),
    "min_p": ("f32", True),
    "logit_bias": ("map", True),
}
BIAS_LIMIT = 100.0
TOKEN_ID_MAX = 2**32 - 1  # token ids and min_tokens are uint32 on the wire


def vllm_sampling(
    get: Callable[[str], Any], max_tokens: int | None, vocab_size: int | None = None
) -> dict[str, Any]:
    """GenerateParameters' keyword arguments for the fields above, from a request's ``get`` (values already of
    the right JSON type; absent or null: off).

    Args:
        max_tokens: the request's explicit ``max_tokens`` (None: not given, nothing to compare).
        vocab_size: the tokenizer's; ``logit_bias`` ids must be below it (None: not checked).
    Raises:
        HttpError: 422 validation, naming the field and the value.
    """
    return {
        "min_tokens": _min_tokens(get("min_tokens"), max_tokens),
        "stop_token_ids": _stop_token_ids(get("stop_token_ids") or ()),
        "min_p": _min_p(get("min_p")),
        "logit_bias": _logit_bias(get("logit_bias") or {}, vocab_size),
    }


def _min_tokens(value: int | None, max_tokens: int | None) -> int:
    if value is None:
        return 0
    if value < 0:
        raise validation_error(f"`min_tokens` must be >= 0. Given: {value}")
    if value > TOKEN_ID_MAX:  # NOTE: uint32 on the wire
        raise validation_error(f"`min_tokens` must be <= {TOKEN_ID_MAX}. Given: {value}")
    if max_tokens is not None and value > max_tokens:
        raise validation_error(f"`min_tokens` must be <= `max_tokens` ({max_tokens}). Given: {value}")
    return value


def _stop_token_ids(ids: tuple[int, ...]) -> tuple[int, ...]:
    bad = [i for i in ids if not 0 <= i <= TOKEN_ID_MAX]
    if bad:
        raise validation_error(f"`stop_token_ids` must be token ids (integers >= 0). Given: {bad[0]}")
    return tuple(dict.fromkeys(ids))


def _min_p(value: float | None) -> float:
    if value is None:
        return 0.0
    if not 0.0 <= value <= 1.0:  # NOTE: also refuses NaN
        raise validation_error(f"`min_p` must be >= 0.0 and <= 1.0. Given: {value}")
    return value


def _logit_bias(raw: Mapping[str, Any], vocab_size: int | None) -> tuple[tuple[int, float], ...]:
    out: dict[int, float] = {}
    for key, bias in raw.items():
        token = _bias_token(key, vocab_size)
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
            raise validation_error(f"`logit_bias` values must be numbers. Given: {bias!r} for token {key}")
        if not -BIAS_LIMIT <= bias <= BIAS_LIMIT:
            raise validation_error(
                f"`logit_bias` values must be >= -100 and <= 100. Given: {bias} for token {key}"
            )
        out[token] = float(bias)
    return tuple(out.items())


def _bias_token(key: str, vocab_size: int | None) -> int:
    """A ``logit_bias`` key: a token id written in decimal digits (JSON object keys are strings)."""
    if not (key.isascii() and key.isdigit()) or int(key) > TOKEN_ID_MAX:
        raise validation_error(f"`logit_bias` keys must be token ids (integers >= 0). Given: {key!r}")
    token = int(key)
    if vocab_size is not None and token >= vocab_size:
        raise validation_error(
            f"`logit_bias` token id {token} is out of the vocabulary (size {vocab_size})"
        )
    return token
