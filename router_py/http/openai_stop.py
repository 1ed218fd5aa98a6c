"""vLLM's (and OpenAI's) stop strings on the OpenAI routes.

TGI's shard ends a generation only when the decoded text *ends with* a stop string, and keeps the stop string
in the output. OpenAI and vLLM end it as soon as a stop string *appears* in the generated text (also inside
or across tokens) and cut the text before it, finish reason ``stop``. So with TGI's rule ``stop=["e"]`` never
stops a model whose tokens are words containing "e" but not ending with it, and clients get the stop string
back. The shard keeps its rule (the TGI routes need it; it still ends most generations on the right token);
this layer, over the token events of one sequence, finds the first stop string in the text, cuts there, and
ends the generation at that token (the caller stops reading, which drops the request from the batch).

While streaming, the last ``len(longest stop) - 1`` characters are held back, as vLLM does, so a stop string
split over two tokens is never partly sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import replace
from typing import Any, TypeVar

from router_py.backend_api import EndEvent, Token, TokenEvent
from router_py.http.errors import validation_error

R = TypeVar("R")


class StopText:
    """The generated text of one sequence, token by token, cut at the first stop string.

    Args:
        stops: the stop strings (empty strings are ignored).
        min_tokens: vLLM's ``min_tokens``: no stop string ends in the text of the first ``min_tokens``
            tokens (one may start there; the shard's rule too).
        include: vLLM's ``include_stop_str_in_output``: the text is cut after the stop string, not before.
    """

    def __init__(self, stops: tuple[str, ...], min_tokens: int = 0, include: bool = False) -> None:
        self.stops = tuple(s for s in stops if s)
        self.min_tokens = min_tokens
        self.include = include
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""
        self.tokens = 0
        self.sent = 0  # characters of ``text`` already handed out
        self.hit = False

    def push(self, piece: str) -> str:
        """Add one token's text; the text that can be sent now. After a stop string is found, ``hit`` is
        true and ``text`` ends before it."""
        self.tokens += 1
        before = len(self.text)
        self.text += piece
        if self.tokens > self.min_tokens and self.stops:
            self._cut(before)
        ready = len(self.text) if self.hit else max(len(self.text) - self.hold, self.sent)
        out, self.sent = self.text[self.sent:ready], ready
        return out

    def flush(self) -> str:
        """The held-back text, at the end of the generation."""
        out, self.sent = self.text[self.sent:], len(self.text)
        return out

    def _cut(self, before: int) -> None:
        # NOTE: vLLM's window: a stop string must end in the new text, so it starts at most len - 1 before it
        # (also inside the first min_tokens tokens' text, as the shard's rule)
        found = [(self.text.find(s, max(before - len(s) + 1, 0)), s) for s in self.stops]
        found = [(at, s) for at, s in found if at >= 0]
        if found:
            at, stop = min(found, key=lambda pair: pair[0])
            self.text = self.text[: at + (len(stop) if self.include else 0)]
            self.hit = True

    def ended(self, event: TokenEvent) -> EndEvent:
        """The EndEvent of a generation cut at this token (``event``): the text before the stop string, the
        tokens generated so far (vLLM counts the token holding the stop string), finish reason ``stop``."""
        if isinstance(event, EndEvent):
            return replace(event, generated_text=self.text, finish_reason="stop_sequence")
        return EndEvent(
            token=event.token, top_tokens=event.top_tokens, generated_text=self.text,
            generated_tokens=self.tokens, finish_reason="stop_sequence",
        )


def include_stop(get: Callable[[str], Any]) -> bool:
    """vLLM's ``include_stop_str_in_output`` of a request (``get``: its fields): the stop string stays at the
    end of the text. Raises HttpError 422 (validation) with ``stop_token_ids``, whose token's text the shard
    leaves out (vLLM would keep it)."""
    include = bool(get("include_stop_str_in_output"))
    if include and get("stop_token_ids"):
        raise validation_error(
            "`include_stop_str_in_output` with `stop_token_ids` is not supported: a stop token's text is left out"
        )
    return include


def token_text(token: Token) -> str:
    """A token's text as the OpenAI routes send it: special tokens (EOS, padding) are empty, as in the
    non-streamed text (vLLM's ``skip_special_tokens``)."""
    return "" if token.special else token.text


async def cut_at_stops(
    events: AsyncIterator[tuple[R, TokenEvent]], stops: tuple[str, ...], min_tokens: int = 0, include: bool = False
) -> AsyncIterator[tuple[R, TokenEvent, str]]:
    """``(run, event, text to send)`` for each token of a stream until its end or the first stop string: there
    the event is an EndEvent (:meth:`StopText.ended`) and the stream is closed, which drops the request.
    ``include``: the stop string stays in the text (:class:`StopText`)."""
    cut = StopText(stops, min_tokens, include)
    async with aclosing(events) as pairs:  # type: ignore[type-var]
        async for run, event in pairs:
            text = cut.push(token_text(event.token))
            if cut.hit:
                yield run, cut.ended(event), text
                return
            if isinstance(event, EndEvent):
                yield run, event, text + cut.flush()
                return
            yield run, event, text
