"""vLLM's ``skip_special_tokens`` on the OpenAI routes. True (the default, TGI's and vLLM's): special tokens'
text is left out of the output. False: kept, in the text (streamed or not) and in logprobs, as vLLM does, so
that a client parsing markers its tokenizer calls special (tool-call or thinking tags, chat template markers)
sees them. The token that ends a generation (EOS, ``stop_token_ids``) stays out either way, as in vLLM.

The backend's events carry each token's own text and a ``special`` flag that the routes read as "no text"
(:func:`router_py.http.openai_stop.token_text`); :class:`SpecialText` clears the flag, so every route and
stop-string cut sees the text, and rebuilds the finished text from the tokens' texts (the shard's skips
special tokens).
"""

from __future__ import annotations

from dataclasses import replace

from router_py.backend_api import EndEvent, InferEvent, PrefillTokens, Token

FIELD = {"skip_special_tokens": ("bool", True)}  # merged into the OpenAI routes' field tables


def skip_special_tokens(value: bool | None) -> bool:
    """The request's field (null: vLLM's default, true)."""
    return value is not False


class SpecialText:
    """Rewrites one generation's events, in order, for ``skip_special_tokens`` false."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def __call__(self, event: InferEvent) -> InferEvent:
        if isinstance(event, PrefillTokens):
            return event
        tops = [_plain(t) for t in event.top_tokens]
        if not isinstance(event, EndEvent):
            token = _plain(event.token)
            self.texts.append(token.text)
            return replace(event, token=token, top_tokens=tops)
        ended_by_token = event.finish_reason == "eos_token"  # NOTE: EOS or a stop_token_ids token: no text
        token = event.token if ended_by_token else _plain(event.token)
        self.texts.append("" if ended_by_token else token.text)
        return replace(event, token=token, top_tokens=tops, generated_text="".join(self.texts))


def _plain(token: Token) -> Token:
    return replace(token, special=False) if token.special else token
