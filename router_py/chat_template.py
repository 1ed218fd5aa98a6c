"""Chat templates from ``tokenizer_config.json``, rendered in a sandboxed Jinja environment as TGI does.

Variables: ``messages``, ``bos_token``, ``eos_token``, ``add_generation_prompt``, ``tools``; functions
``raise_exception(msg)`` and ``strftime_now(fmt)``. Any template failure raises :class:`ChatTemplateError`,
which the HTTP layer turns into 422 ``template_error``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(Exception):
    """A template that is missing, does not compile, or raised while rendering."""


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, indent: int | None = None) -> str:
    # NOTE: HF templates expect json.dumps semantics (no HTML escaping, non-ASCII kept), not Jinja's tojson.
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    return env


class ChatTemplate:
    """One compiled template plus the special tokens it may reference."""

    def __init__(self, source: str, bos_token: str | None, eos_token: str | None) -> None:
        try:
            self._template = _environment().from_string(source)
        except TemplateError as exc:
            raise ChatTemplateError(str(exc)) from exc
        self.source = source
        self.bos_token = bos_token or ""
        self.eos_token = eos_token or ""

    def render(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
        continue_final: bool = False,
    ) -> str:
        """``extra``: more template variables (vLLM's ``chat_template_kwargs``, e.g. ``enable_thinking``; none
        named as the ones set here). ``continue_final``: the text ends right after the final message's
        content, so the model continues that message (vLLM's ``continue_final_message``)."""
        flat = [_flatten_content(m) for m in messages]
        try:
            text = self._template.render(
                **(extra or {}),
                messages=flat,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                add_generation_prompt=add_generation_prompt,
                tools=tools,
            )
        except Exception as exc:  # noqa: BLE001 - e.g. TypeError for a null content: TGI's template error too
            raise ChatTemplateError(str(exc)) from exc
        return _cut_after_final(text, flat[-1]) if continue_final and flat else text


def _cut_after_final(text: str, final: dict[str, Any]) -> str:
    """``text`` up to the end of the last place the final message's content appears (what the template puts
    after it, an end-of-turn token, goes)."""
    content = final.get("content") or ""
    at = text.rfind(content)
    if at < 0:
        raise ChatTemplateError("continue_final_message: the final message's content is not in the templated text")
    return text[: at + len(content)]


def _flatten_content(message: dict[str, Any]) -> dict[str, Any]:
    """Text-only templates get chunked content joined into one string, an image part as ``![](url)`` (TGI's
    rendering: a text model is told that an image was there, not given nothing)."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    return {**message, "content": "".join(_part_text(part) for part in content)}


def _part_text(part: Any) -> str:
    if not isinstance(part, dict):
        return ""
    if part.get("type") == "image_url":
        return f"![]({(part.get('image_url') or {}).get('url', '')})"
    return part.get("text", "") if part.get("type") == "text" else ""
