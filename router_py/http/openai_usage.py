"""OpenAI's ``usage`` object and when a stream carries it (``stream_options``).

- ``include_usage`` (OpenAI's): one usage-only chunk (``choices: []``) over the whole request before
  ``[DONE]``.
- ``continuous_usage_stats`` (vLLM's extension, honoured only with ``include_usage`` as in vLLM's
  ``should_include_usage``): every chunk also carries ``usage``, the running counts of its own prompt and
  choice: that prompt's tokens, the tokens generated for it so far (the chunk's token included) and their sum.
  With several completion prompts each chunk counts its own prompt and choice only (vLLM's
  ``completion_stream_generator``); the final chunk still counts all of them.

Without the flags no chunk has usage (chat chunks keep their ``"usage": null``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from router_py.backend_api import EndEvent, TokenEvent


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass(frozen=True)
class StreamUsage:
    """What a request's ``stream_options`` ask for: ``final`` the usage-only chunk, ``continuous`` usage on
    every chunk."""

    final: bool = False
    continuous: bool = False


def parse_stream_options(body: dict[str, Any]) -> StreamUsage:
    """``stream_options`` of a chat or completions body; anything but an object means neither (TGI ignores
    the field's type)."""
    options = body.get("stream_options")
    if not isinstance(options, dict):
        return StreamUsage()
    final = bool(options.get("include_usage"))
    return StreamUsage(final, final and bool(options.get("continuous_usage_stats")))


class RunningUsage:
    """The running usage of one streamed choice: call :meth:`step` once per token event, in order."""

    def __init__(self, prompt_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0

    def step(self, event: TokenEvent) -> dict[str, int]:
        """The usage after ``event``; an EndEvent's own count wins (it is what the final usage sums)."""
        self.completion_tokens += 1
        if isinstance(event, EndEvent):
            self.completion_tokens = event.generated_tokens
        return usage(self.prompt_tokens, self.completion_tokens)
