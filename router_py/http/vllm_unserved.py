"""vLLM's request fields that this router does not serve. TGI ignores fields it does not know, so a vLLM
client that set one of these got an answer that silently did without it (beam search, a token allow-list). A
field at vLLM's default (or null) is accepted, as clients such as LangChain send the defaults; any other value
is a 422 naming the field, before anything is generated.
"""

from __future__ import annotations

import json
from typing import Any

from router_py.http.errors import validation_error

# field -> the values that mean "off" in vLLM (null always does)
_BOTH: dict[str, tuple[Any, ...]] = {
    "use_beam_search": (False,),
    "length_penalty": (1.0,),
    "allowed_token_ids": (),
    "bad_words": ([],),
    "spaces_between_special_tokens": (True,),
    "logits_processors": ([],),
    "priority": (0,),
    "mm_processor_kwargs": ({},),
    "truncate_prompt_tokens": (),
}
_CHAT_ONLY: dict[str, tuple[Any, ...]] = {"echo": (False,), "documents": ([],)}
_COMPLETIONS_ONLY: dict[str, tuple[Any, ...]] = {"prompt_embeds": ()}


def check_vllm_fields(body: dict[str, Any], chat: bool) -> None:
    """Raises HttpError 422 (validation) for the first unserved vLLM field of ``body`` set to something
    other than its default (``chat``: the chat route's body, else completions')."""
    table = {**_BOTH, **(_CHAT_ONLY if chat else _COMPLETIONS_ONLY)}
    for name, off in table.items():
        value = body.get(name)
        if value is not None and not any(_same(value, v) for v in off):
            raise validation_error(f"`{name}` is not supported (vLLM's field; given: {_short(value)})")


def _same(value: Any, default: Any) -> bool:
    """JSON equality: 1 is 1.0, but true is not 1."""
    if isinstance(value, bool) or isinstance(default, bool):
        return value is default
    return bool(value == default)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."
