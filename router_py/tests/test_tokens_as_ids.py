"""vLLM's ``return_tokens_as_token_ids`` on both OpenAI routes, streamed and not: logprobs name every token and
alternative ``token_id:N``; the text, the logprobs' values and completions' text offsets are those of the same
request without it. The fake backend's token N has the text `` tN``."""

from __future__ import annotations

import pytest

from router_py.tests.test_http_openai import CHAT, openai_events


def _id(text: str) -> str:
    return f"token_id:{text.strip()[1:]}"


def _completion(flag: bool, stream: bool) -> dict:
    return {"prompt": "hello world", "max_tokens": 3, "logprobs": 2, "stream": stream, "temperature": 0,
            "return_tokens_as_token_ids": flag}


def _chat(flag: bool, stream: bool) -> dict:
    return {**CHAT, "max_tokens": 3, "logprobs": True, "top_logprobs": 2, "stream": stream, "temperature": 0,
            "return_tokens_as_token_ids": flag}


async def _logprobs(client, path: str, body: dict) -> tuple[list[dict], str]:
    """(the logprobs objects of the answer, its text), streamed or not."""
    resp = await client.post(path, json=body)
    assert resp.status_code == 200, resp.text
    chat = "messages" in body
    if body["stream"]:
        choices = [e["choices"][0] for e in openai_events(resp.text) if e["choices"]]
        text = "".join(c["delta"].get("content") or "" for c in choices) if chat else "".join(
            c["text"] for c in choices)
        return [c["logprobs"] for c in choices if c["logprobs"]], text
    choice = resp.json()["choices"][0]
    return [choice["logprobs"]], choice["message"]["content"] if chat else choice["text"]


@pytest.mark.parametrize("stream", [False, True])
async def test_completions_name_tokens_by_id(client, stream: bool) -> None:
    plain, text = await _logprobs(client, "/v1/completions", _completion(False, stream))
    ids, same_text = await _logprobs(client, "/v1/completions", _completion(True, stream))
    assert same_text == text
    for p, i in zip(plain, ids, strict=True):
        assert i["tokens"] == [_id(t) for t in p["tokens"]]
        assert i["token_logprobs"] == p["token_logprobs"] and i["text_offset"] == p["text_offset"]
        assert i["top_logprobs"] == [{_id(t): v for t, v in top.items()} for top in p["top_logprobs"]]
    assert sum(len(p["tokens"]) for p in ids) == 3


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_names_tokens_by_id(client, stream: bool) -> None:
    plain, text = await _logprobs(client, "/v1/chat/completions", _chat(False, stream))
    ids, same_text = await _logprobs(client, "/v1/chat/completions", _chat(True, stream))
    assert same_text == text
    entries = [e for p in ids for e in p["content"]]
    expected = [e for p in plain for e in p["content"]]
    assert len(entries) == 3
    for got, want in zip(entries, expected, strict=True):
        assert got == {"token": _id(want["token"]), "logprob": want["logprob"],
                       "top_logprobs": [{**t, "token": _id(t["token"])} for t in want["top_logprobs"]]}


async def test_a_non_boolean_is_a_422(client, backend) -> None:
    resp = await client.post("/v1/completions", json={**_completion(False, False), "return_tokens_as_token_ids": 1})
    # NOTE: TGI's deserializer rejection: plain text, as for any field of the wrong type
    assert resp.status_code == 422 and "return_tokens_as_token_ids: invalid type" in resp.text
    assert backend.requests == []
