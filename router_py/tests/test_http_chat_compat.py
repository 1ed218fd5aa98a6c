"""/v1/chat/completions against the clients' own models: ``top_logprobs`` refused without ``logprobs`` and
out of range (a 422 in TGI's format, also when streamed); text deltas carry ``"tool_calls": null``, which
PyPI ``text-generation`` 0.7.0's ``ChoiceDelta`` requires; a stream for that client's body has no
``[DONE]`` line (it json-decodes every ``data:`` line); the ``openai`` client's models parse every chunk."""

from __future__ import annotations

import json

import httpx
import pytest
from openai.types.chat import ChatCompletionChunk as OpenAIChunk
from text_generation.types import ChatCompletionChunk as TgiChunk
from text_generation.types import ChatRequest as TgiChatRequest
from text_generation.types import Message as TgiMessage

from router_py.http.errors import HttpError
from router_py.http.openai_chat import chat_parameters, is_tgi_client_body, parse_chat_request

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
URL = "/v1/chat/completions"


def _data_lines(text: str) -> list[str]:
    return [line[len("data:") :].strip() for line in text.splitlines() if line.startswith("data:")]


# ---- top_logprobs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"top_logprobs": 2}, "when using `top_logprobs`, `logprobs` must be set to true. "
         "Given: `top_logprobs` 2 without `logprobs`"),
        ({"top_logprobs": 2, "logprobs": False}, "when using `top_logprobs`, `logprobs` must be set to true."),
        ({"top_logprobs": 2, "logprobs": None}, "when using `top_logprobs`, `logprobs` must be set to true."),
        ({"top_logprobs": 6, "logprobs": True}, "`top_logprobs` must be >= 0 and <= 5. Given: 6"),
        ({"top_logprobs": -1, "logprobs": True}, "`top_logprobs` must be >= 0 and <= 5. Given: -1"),
        ({"top_logprobs": -1}, "`top_logprobs` must be >= 0 and <= 5. Given: -1"),
    ],
)
async def test_bad_top_logprobs_is_a_422_in_tgi_format(
    client: httpx.AsyncClient, backend, fields: dict, error: str, stream: bool
) -> None:
    r = await client.post(URL, json={**CHAT, **fields, "stream": stream})
    assert r.status_code == 422 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["error_type"] == "validation"
    assert body["error"].startswith("Input validation error: " + error)
    assert backend.requests == []  # refused before generating, and before a stream starts


@pytest.mark.parametrize("fields", [{"top_logprobs": 0}, {"top_logprobs": None}, {"top_logprobs": 0,
                                                                                  "logprobs": False}])
async def test_top_logprobs_zero_or_null_without_logprobs_is_accepted(
    client: httpx.AsyncClient, backend, fields: dict
) -> None:
    r = await client.post(URL, json={**CHAT, **fields})
    assert r.status_code == 200 and r.json()["choices"][0]["logprobs"] is None
    assert backend.requests[0].top_n_tokens == 0


@pytest.mark.parametrize("top_logprobs", [0, 5])
async def test_top_logprobs_with_logprobs_in_range(client: httpx.AsyncClient, top_logprobs: int) -> None:
    r = await client.post(URL, json={**CHAT, "logprobs": True, "top_logprobs": top_logprobs})
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert len(content) == 3 and all(len(c["top_logprobs"]) == top_logprobs for c in content)


def test_top_logprobs_limit_is_the_routers_max_top_n_tokens() -> None:
    req = parse_chat_request({**CHAT, "logprobs": True, "top_logprobs": 8})
    assert chat_parameters(req, max_top_logprobs=10).top_n_tokens == 8
    with pytest.raises(HttpError, match="`top_logprobs` must be >= 0 and <= 5. Given: 8"):
        chat_parameters(req)


# ---- stream chunks as the clients parse them ---------------------------------------------------------------


async def test_text_deltas_carry_null_tool_calls_and_parse_in_both_clients(client: httpx.AsyncClient) -> None:
    r = await client.post(URL, json={**CHAT, "stream": True, "logprobs": True, "top_logprobs": 1})
    lines = _data_lines(r.text)
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert len(chunks) == 3
    assert all(c["choices"][0]["delta"]["tool_calls"] is None for c in chunks)
    # NOTE: pydantic v2: fails without the key. Only the first chunk has a role (openai_chat.StreamRole),
    # which that client requires: its own body gets one in every chunk (the next test)
    tgi = TgiChunk(**chunks[0])
    openai = [OpenAIChunk.model_validate(c) for c in chunks]
    assert "".join(c.choices[0].delta.content for c in openai) == " t0 t29 t93"
    assert tgi.choices[0].delta.content == openai[0].choices[0].delta.content
    assert all(c.choices[0].delta.tool_calls is None for c in openai)


async def test_stream_for_the_text_generation_client_body_ends_without_done(client: httpx.AsyncClient) -> None:
    tgi_body = TgiChatRequest(
        model="tgi", messages=[TgiMessage(role="user", content="hi")], max_tokens=3, stream=True
    ).model_dump()
    r = await client.post(URL, json=tgi_body)
    lines = _data_lines(r.text)
    assert len(lines) == 3 and all(TgiChunk(**json.loads(line)) for line in lines)
    plain = await client.post(URL, json={k: v for k, v in tgi_body.items() if v is not None})
    assert _data_lines(plain.text)[-1] == "[DONE]"


def test_only_the_text_generation_client_key_set_drops_done() -> None:
    tgi_body = TgiChatRequest(model="tgi", messages=[TgiMessage(role="user", content="hi")]).model_dump()
    assert is_tgi_client_body(tgi_body)
    assert not is_tgi_client_body({**tgi_body, "stream_options": None}) and not is_tgi_client_body(CHAT)
    assert not is_tgi_client_body({k: v for k, v in tgi_body.items() if k != "repetition_penalty"})
