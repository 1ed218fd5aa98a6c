"""vLLM's ``skip_special_tokens`` false on the OpenAI routes (router_py.http.special_text): a special token's
text stays in the output, streamed or not, and in logprobs; the EOS that ends the generation does not."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from router_py.backend_api import EndEvent, InferEvent, Token, TokenEvent, ValidRequest
from router_py.tests.conftest import FakeBackend
from router_py.tests.test_tools_and_grammar import CHAT, _client, _events

MARKED = [Token(5, "a", -0.1), Token(7, "<|x|>", -0.2, special=True), Token(6, "b", -0.3)]


class MarkerBackend(FakeBackend):
    """Answers "a", a special marker, "b", then EOS (special, its text the shard's: ``</s>``)."""

    async def _events(self, request: ValidRequest) -> AsyncIterator[InferEvent]:
        for token in MARKED:
            yield TokenEvent(token, [token])
        eos = Token(2, "</s>", -0.4, special=True)
        yield EndEvent(eos, [eos], generated_text="ab", generated_tokens=4, finish_reason="eos_token")


ROUTES = [("/v1/completions", {"prompt": "x"}, "text"), ("/v1/chat/completions", CHAT, "content")]


@pytest.mark.parametrize("path,body,key", ROUTES)
@pytest.mark.parametrize("skip,want", [(None, "ab"), (True, "ab"), (False, "a<|x|>b")])
async def test_the_text_keeps_special_tokens_only_when_asked(tokenizer, path, body, key, skip, want) -> None:
    async with _client(MarkerBackend(), tokenizer) as client:
        full = (await client.post(path, json={**body, "skip_special_tokens": skip})).json()
        streamed = await client.post(path, json={**body, "skip_special_tokens": skip, "stream": True})
    choice = full["choices"][0]
    assert (choice.get("text") or choice["message"]["content"], choice["finish_reason"]) == (want, "stop")
    chunks = [e["choices"][0] for e in _events(streamed.text) if e["choices"]]
    assert "".join(c.get("text") or c.get("delta", {}).get(key) or "" for c in chunks) == want


async def test_logprobs_name_the_special_token(tokenizer) -> None:
    body = {"prompt": "x", "logprobs": 1, "skip_special_tokens": False}
    async with _client(MarkerBackend(), tokenizer) as client:
        lp = (await client.post("/v1/completions", json=body)).json()["choices"][0]["logprobs"]
    assert lp["tokens"] == ["a", "<|x|>", "b", ""] and lp["top_logprobs"][1] == {"<|x|>": -0.2}
    assert lp["text_offset"] == [0, 1, 6, 7]
