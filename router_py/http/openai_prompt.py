"""The ``prompt`` of ``/v1/completions`` in the four shapes OpenAI and vLLM accept.

    "text"                 one text prompt
    ["a", "b"]             several text prompts
    [1, 2, 3]              one prompt of token ids
    [[1, 2], [3, 4]]       several prompts of token ids

A token-id prompt is the prompt exactly as given: nothing is added (no BOS) and it is never tokenized
again; the shard computes on these ids (``Request.input_ids``), the prefix cache matches them,
``usage.prompt_tokens`` is their number and ``echo`` shows them decoded. TGI's router refuses them (it
deserializes a string or a list of strings only).

A ``prompt`` that is not a string or a list is the deserializer's text/plain 422, as for every other field;
a list of the wrong shape is TGI's JSON 422 (``Input validation error: ...``): an empty list or id list, a
mix of strings and ids, a nesting deeper than a list of id lists, an element that is neither, an id that is
negative or not below the tokenizer's vocabulary size. Its length is checked later, as a text prompt's is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from router_py.http.errors import deserialize_error, validation_error
from router_py.http.validation import unexpected

SHAPES = "a string, a list of strings, a list of token ids or a list of token-id lists"


@dataclass(frozen=True)
class Prompt:
    """One completion prompt: ``text``, or ``ids`` (token ids, as given; ``text`` is then None)."""

    text: str | None = None
    ids: tuple[int, ...] | None = None


def parse_prompts(raw: Any, vocab_size: int | None = None) -> list[Prompt]:
    """The prompts of a ``prompt`` value, in order.

    Args:
        raw: the body's ``prompt``.
        vocab_size: ids must be below it (None: not checked).

    Raises:
        FrameworkError: ``raw`` is neither a string nor a list (422, text/plain).
        HttpError: a list of the wrong shape or a token id out of range (422, validation).
    """
    if isinstance(raw, str):
        return [Prompt(text=raw)]
    if not isinstance(raw, list):
        raise deserialize_error("prompt: data did not match any variant of untagged enum Prompt")
    if not raw:
        raise validation_error(f"`prompt` cannot be empty: give {SHAPES}")
    kinds = {_kind(i, item) for i, item in enumerate(raw)}
    if len(kinds) > 1:
        raise validation_error(f"`prompt` mixes {' and '.join(sorted(kinds))}: give {SHAPES}")
    kind = kinds.pop()
    if kind == "strings":
        return [Prompt(text=item) for item in raw]
    if kind == "token ids":
        return [Prompt(ids=check_token_ids("prompt", raw, vocab_size))]
    return [Prompt(ids=_id_list(f"prompt[{i}]", item, vocab_size)) for i, item in enumerate(raw)]


def _kind(index: int, item: Any) -> str:
    """What one element of the ``prompt`` list is: ``strings``, ``token ids`` or ``token-id lists``."""
    if isinstance(item, str):
        return "strings"
    if _is_id(item):
        return "token ids"
    if isinstance(item, list):
        return "token-id lists"
    raise validation_error(
        f"`prompt[{index}]` must be a string, a token id or a list of token ids. Given: {unexpected(item)}"
    )


def _id_list(path: str, item: list[Any], vocab_size: int | None) -> tuple[int, ...]:
    for i, value in enumerate(item):
        if isinstance(value, list):
            raise validation_error(f"`{path}[{i}]` is nested too deep: a token-id prompt is a list of ids")
        if not _is_id(value):
            raise validation_error(f"`{path}[{i}]` must be a token id. Given: {unexpected(value)}")
    return check_token_ids(path, item, vocab_size)


def check_token_ids(path: str, ids: list[int], vocab_size: int | None) -> tuple[int, ...]:
    """``ids`` as a tuple once each is checked. Raises HttpError 422 (validation): none, or one negative or
    not below ``vocab_size`` (when given)."""
    if not ids:
        raise validation_error(f"`{path}` cannot be empty: a token-id prompt needs at least one id")
    for token in ids:
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            limit = f" (size {vocab_size})" if vocab_size is not None else ""
            raise validation_error(f"`{path}` token id {token} is out of the vocabulary{limit}")
    return tuple(ids)


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
