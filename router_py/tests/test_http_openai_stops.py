"""OpenAI's ``stop``, ``top_p`` and special tokens on ``/v1/completions`` and ``/v1/chat/completions``, as
users of vLLM's server (and the ``openai`` client) expect them:

- ``stop`` may be one string (the ``openai`` client's ``stop="\\n"``), not only a list;
- a stop string ends the generation wherever it appears in the text, also inside a token, and the text is cut
  before it (TGI's shard only stops when the text *ends with* it, and keeps it); finish reason ``stop``, and
  ``usage`` counts the tokens up to the one holding it;
- ``top_p`` 1.0 (OpenAI's default, sent by many clients) means off, not TGI's 422;
- a streamed completion sends no special token's text (``</s>``), as the non-streamed text does not.

The backend here stops as the real shard does (stop string at the end of the text only), unlike the
conftest's fake, and ends with a special EOS token.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from router_py.backend_api import EndEvent, InferEvent, Token, TokenEvent, ValidRequest
from router_py.tests.conftest import FakeBackend

PROMPT = "the quick brown fox jumps over the lazy dog"
EOS_ID = 1


class ShardLikeBackend(FakeBackend):
    """Token ``n`` is the prompt's ``n``-th token id, text ``" t<id>"``; after ``eos_after`` tokens a special
    ``</s>`` (EOS); ``top_n_tokens`` alternatives as the conftest's fake. Stop sequences match only at the end of the text, as in TGI's (and this) shard."""

    async def _events(self, request: ValidRequest) -> AsyncIterator[InferEvent]:
        ids, text = request.input_ids, ""
        for n in range(request.stopping.max_new_tokens):
            await asyncio.sleep(0)
            eos = n == self.eos_after
            token = Token(EOS_ID, "</s>", -0.5, special=True) if eos else Token(
                ids[n % len(ids)], f" t{ids[n % len(ids)]}", -0.5
            )
            text += "" if eos else token.text
            tops = [Token(token.id + k, f" t{token.id + k}", -float(k + 1)) for k in range(request.top_n_tokens)]
            stop = any(text.endswith(s) for s in request.stopping.stop_sequences)
            if eos or stop or n == request.stopping.max_new_tokens - 1:
                reason = "eos_token" if eos else "stop_sequence" if stop else "length"
                yield EndEvent(token, tops, generated_text=text, generated_tokens=n + 1, finish_reason=reason)
                return
            yield TokenEvent(token, tops)


@pytest.fixture
def backend() -> ShardLikeBackend:
    return ShardLikeBackend(eos_after=6)


def _texts(tokenizer, n: int) -> list[str]:
    ids = tokenizer.encode(PROMPT, add_special_tokens=True)
    return [f" t{ids[k % len(ids)]}" for k in range(n)]


def _inside_token_stop(tokenizer) -> tuple[str, str, int]:
    """A stop string that is inside the 3rd token's text but not at its end (and not earlier): the stop, the
    text before it, and the tokens generated up to the one holding it."""
    texts = _texts(tokenizer, 6)
    stop = texts[2][:-1]
    assert len(stop) > 2 and stop not in "".join(texts[:2]) + texts[2][:-2]
    return stop, "".join(texts[:2]), 3


def _events(body: str) -> list:
    return [line[5:].strip() for line in body.splitlines() if line.startswith("data:")]


def _chat(content: str = PROMPT, **extra) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 20, **extra}


async def _streamed(client: httpx.AsyncClient, path: str, body: dict) -> tuple[str, list[str | None], dict]:
    r = await client.post(path, json={**body, "stream": True, "stream_options": {"include_usage": True}})
    events = _events(r.text)
    assert events[-1] == "[DONE]", events
    chunks = [json.loads(e) for e in events[:-1]]
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    key = "delta" if path.endswith("chat/completions") else None
    text = "".join((ch["delta"]["content"] or "") if key else ch["text"] for ch in choices)
    return text, [ch["finish_reason"] for ch in choices], chunks[-1]["usage"]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_stop_may_be_one_string(client: httpx.AsyncClient, backend, path: str) -> None:
    body = {"prompt": PROMPT, "max_tokens": 3} if path == "/v1/completions" else _chat(max_tokens=3)
    r = await client.post(path, json={**body, "stop": "zzz"})
    assert r.status_code == 200, r.text
    assert backend.requests[-1].stopping.stop_sequences == ("zzz",)
    bad = await client.post(path, json={**body, "stop": 3})
    assert bad.status_code == 422 and "expected a string or a sequence" in bad.text


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("stop", ["", ["", "zzz"]])
async def test_an_empty_stop_string_stops_nothing(
    client: httpx.AsyncClient, backend, path: str, stop
) -> None:
    """Every text ends with "": sent to the shard, its rule ended the generation after one token."""
    body = {"prompt": PROMPT, "max_tokens": 3} if path == "/v1/completions" else _chat(max_tokens=3)
    r = await client.post(path, json={**body, "stop": stop})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] == "length" and r.json()["usage"]["completion_tokens"] == 3
    assert backend.requests[-1].stopping.stop_sequences == (() if stop == "" else ("zzz",))


async def test_completion_stop_inside_a_token_cuts_the_text_and_ends_the_generation(
    client: httpx.AsyncClient, backend, tokenizer
) -> None:
    stop, before, tokens = _inside_token_stop(tokenizer)
    body = {"prompt": PROMPT, "max_tokens": 20, "stop": [stop, "never"]}
    r = (await client.post("/v1/completions", json=body)).json()
    choice = r["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == (before, "stop")
    assert r["usage"]["completion_tokens"] == tokens
    assert backend.closed and not backend.finished  # the request left the batch at the stop, not at EOS
    text, finishes, usage = await _streamed(client, "/v1/completions", body)
    assert (text, finishes[-1], usage["completion_tokens"]) == (before, "stop", tokens)
    assert finishes[:-1] == [None] * (len(finishes) - 1)


async def test_chat_stop_inside_a_token_cuts_the_text_and_ends_the_generation(
    client: httpx.AsyncClient, backend, tokenizer
) -> None:
    texts = [f" t{i}" for i in tokenizer.encode(
        tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True),
        add_special_tokens=False,
    )]
    stop = texts[3][:-1]
    before = "".join(texts[:3])
    if stop in before + texts[3][:-2]:
        pytest.skip("the 4th token's text starts earlier in the text")
    r = (await client.post("/v1/chat/completions", json=_chat(stop=stop))).json()
    choice = r["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == (before, "stop")
    assert r["usage"]["completion_tokens"] == 4
    text, finishes, usage = await _streamed(client, "/v1/chat/completions", _chat(stop=stop))
    assert (text, finishes[-1], usage["completion_tokens"]) == (before, "stop", 4)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_stop_at_the_end_of_a_token_is_left_out_and_finish_is_stop(
    client: httpx.AsyncClient, tokenizer, path: str
) -> None:
    """The shard stops on it (``stop_sequence``): OpenAI's finish reason is ``stop``, the text without it."""
    body = {"prompt": PROMPT, "max_tokens": 20} if path == "/v1/completions" else _chat()
    first = (await client.post(path, json=body)).json()["choices"][0]
    full = first["text"] if "text" in first else first["message"]["content"]
    stop = full[4:9]
    r = (await client.post(path, json={**body, "stop": [stop]})).json()["choices"][0]
    assert r.get("text", r.get("message", {}).get("content")) == full[:4]
    assert r["finish_reason"] == "stop"


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_stream_holds_back_a_possible_stop_start(client: httpx.AsyncClient, tokenizer, path) -> None:
    """No chunk carries the first characters of a stop string that is completed by a later token."""
    texts = _texts(tokenizer, 6) if path == "/v1/completions" else None
    body = {"prompt": PROMPT, "max_tokens": 20} if texts else _chat()
    full, _, _ = await _streamed(client, path, body)
    stop = full[2:12]  # spans a token boundary
    text, finishes, _ = await _streamed(client, path, {**body, "stop": stop})
    assert (text, finishes[-1]) == (full[:2], "stop")


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_top_p_one_means_off(client: httpx.AsyncClient, backend, path: str) -> None:
    body = {"prompt": PROMPT, "max_tokens": 2} if path == "/v1/completions" else _chat(max_tokens=2)
    r = await client.post(path, json={**body, "top_p": 1.0})
    assert r.status_code == 200, r.text
    assert backend.requests[-1].sampling.top_p == 1.0
    assert (await client.post(path, json={**body, "top_p": 1.5})).status_code == 422


async def test_completion_stream_sends_no_special_token_text(client: httpx.AsyncClient) -> None:
    body = {"prompt": PROMPT, "max_tokens": 20}
    whole = (await client.post("/v1/completions", json=body)).json()["choices"][0]
    assert whole["finish_reason"] == "stop" and "</s>" not in whole["text"]
    text, finishes, _ = await _streamed(client, "/v1/completions", body)
    assert (text, finishes[-1]) == (whole["text"], "stop")


# ---- /v1/completions: logprobs, echo, best_of (before: accepted and ignored, `logprobs` always null) ------


async def test_completion_logprobs_are_openais_legacy_object(client: httpx.AsyncClient, backend) -> None:
    body = {"prompt": PROMPT, "max_tokens": 3, "logprobs": 2}
    r = (await client.post("/v1/completions", json=body)).json()
    assert backend.requests[-1].top_n_tokens == 2
    choice = r["choices"][0]
    lp = choice["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert "".join(lp["tokens"]) == choice["text"] and len(lp["tokens"]) == 3
    assert lp["token_logprobs"] == [-0.5] * 3
    assert [len(top) for top in lp["top_logprobs"]] == [2, 2, 2]
    assert all(isinstance(k, str) and isinstance(v, float) for top in lp["top_logprobs"] for k, v in top.items())
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(3)]
    text, _, _ = await _streamed(client, "/v1/completions", body)
    r = await client.post("/v1/completions", json={**body, "stream": True})
    chunks = [json.loads(e)["choices"][0] for e in _events(r.text)[:-1]]
    assert [c["logprobs"]["tokens"] for c in chunks] == [[t] for t in lp["tokens"]]
    assert [c["logprobs"]["text_offset"] for c in chunks] == [[o] for o in lp["text_offset"]]
    none = (await client.post("/v1/completions", json={**body, "logprobs": None})).json()
    assert none["choices"][0]["logprobs"] is None
    too_many = await client.post("/v1/completions", json={**body, "logprobs": 6})
    assert too_many.status_code == 422 and "logprobs" in too_many.json()["error"]


async def test_completion_echo_returns_the_prompt_first(client: httpx.AsyncClient) -> None:
    body = {"prompt": [PROMPT, "hello world"], "max_tokens": 3}
    plain = (await client.post("/v1/completions", json=body)).json()["choices"]
    echoed = (await client.post("/v1/completions", json={**body, "echo": True})).json()["choices"]
    assert [c["text"] for c in echoed] == [p + c["text"] for p, c in zip(body["prompt"], plain)]
    r = await client.post("/v1/completions", json={**body, "echo": True, "stream": True})
    chunks = [json.loads(e)["choices"][0] for e in _events(r.text)[:-1]]
    for i, prompt in enumerate(body["prompt"]):
        assert "".join(c["text"] for c in chunks if c["index"] == i) == echoed[i]["text"]


async def test_completion_best_of_is_refused_clearly(client: httpx.AsyncClient) -> None:
    body = {"prompt": PROMPT, "max_tokens": 3}
    r = await client.post("/v1/completions", json={**body, "best_of": 2})
    assert r.status_code == 422 and "`best_of`" in r.json()["error"], r.text
    assert (await client.post("/v1/completions", json={**body, "best_of": 1})).status_code == 200


def test_with_min_tokens_a_stop_may_begin_in_their_text_but_must_end_after_it() -> None:
    """vLLM's window (and the shard's rule): no stop string is searched in the first ``min_tokens`` tokens'
    text, but one that starts there and ends in a later token's text cuts the generation."""
    from router_py.http.openai_stop import StopText

    inside = StopText(("ab",), min_tokens=2)
    assert [inside.push(p) for p in ("xab", "y", "z")] + [inside.flush()] == ["xa", "b", "y", "z"]
    assert not inside.hit  # "ab" lies wholly in the first two tokens' text
    across = StopText(("abc",), min_tokens=1)
    sent = across.push("xab") + across.push("cz")
    assert across.hit and across.text == "x" and sent == "x"


def test_include_keeps_the_stop_string_and_cuts_what_follows_it() -> None:
    """vLLM's ``include_stop_str_in_output``: the text ends with the stop string, streamed as sent."""
    from router_py.http.openai_stop import StopText

    kept = StopText(("END", "N"), include=True)
    sent = kept.push("abE") + kept.push("NDxyz")
    assert kept.hit and kept.text == "abEND" and sent == "abEND"  # "END" starts before "N": it wins
    whole = StopText(("ab",), include=True)
    assert whole.push("xaby") == "xab" and whole.text == "xab"


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_include_stop_str_in_output_keeps_the_stop_string(
    client: httpx.AsyncClient, tokenizer, path: str
) -> None:
    stop, before, tokens = _inside_token_stop(tokenizer)
    if path.endswith("chat/completions"):
        ids = tokenizer.encode(
            tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True),
            add_special_tokens=False,
        )
        texts = [f" t{i}" for i in ids]
        stop, before = texts[2][:-1], "".join(texts[:2])
        body = _chat(stop=[stop], include_stop_str_in_output=True)
    else:
        body = {"prompt": PROMPT, "max_tokens": 20, "stop": [stop], "include_stop_str_in_output": True}
    r = (await client.post(path, json=body)).json()
    choice = r["choices"][0]
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    assert (text, choice["finish_reason"]) == (before + stop, "stop")
    streamed, finishes, _ = await _streamed(client, path, body)
    assert (streamed, finishes[-1]) == (before + stop, "stop")
    bad = await client.post(path, json={**body, "stop_token_ids": [5]})
    assert bad.status_code == 422 and "`include_stop_str_in_output` with `stop_token_ids`" in bad.json()["error"]
