"""Malformed input never gets a 5xx (issue 16 item 3): deep nesting, lone surrogates (in /tokenize, echoed in
422 messages), and a last-resort 500 that is still a well-formed JSON response."""

from __future__ import annotations

import json

import httpx
import pytest

from router_py.http import json_body
from router_py.http.server import create_app

JSON_SYNTAX = "Failed to parse the request body as JSON: "
HEADERS = {"content-type": "application/json"}


def nested(depth: int) -> bytes:
    return b'{"inputs": "x", "parameters": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("depth", [129, 1000, 100_000])
async def test_deep_nesting_is_refused_as_malformed_json(client: httpx.AsyncClient, depth: int) -> None:
    r = await client.post("/generate", content=nested(depth), headers=HEADERS)
    assert r.status_code == 400
    assert r.text.startswith(JSON_SYNTAX + "recursion limit exceeded at line 1 column ")


async def test_nesting_within_serde_limit_is_parsed(client: httpx.AsyncClient) -> None:
    r = await client.post("/generate", content=nested(100), headers=HEADERS)
    assert r.status_code == 422  # parsed; parameters is the wrong type, as serde would say


@pytest.mark.parametrize("path", ["/tokenize", "/generate", "/generate_stream", "/v1/completions",
                                  "/v1/chat/completions", "/chat_tokenize", "/"])
@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "a\\ud83d", "\\ude00b"])
async def test_lone_surrogates_are_refused_everywhere(
    client: httpx.AsyncClient, path: str, escape: str
) -> None:
    bodies = [
        f'{{"inputs": "{escape}"}}',
        f'{{"inputs": "x", "parameters": {{"stop": "{escape}"}}}}',  # echoed in a deserialize error
        f'{{"prompt": "{escape}", "messages": [{{"role": "user", "content": "{escape}"}}]}}',
        f'{{"inputs": "x", "{escape}": 1}}',
    ]
    for body in bodies:
        r = await client.post(path, content=body.encode(), headers=HEADERS)
        assert r.status_code == 400, (path, body, r.status_code, r.text)
        assert r.text == JSON_SYNTAX + "lone leading surrogate in hex escape"


async def test_surrogate_pairs_are_fine(client: httpx.AsyncClient) -> None:
    r = await client.post("/tokenize", content=b'{"inputs": "smile \\ud83d\\ude00"}', headers=HEADERS)
    assert r.status_code == 200 and r.json()


async def test_unexpected_exception_is_a_json_500_and_logged(
    backend, tokenizer, config, metrics, caplog
) -> None:
    app = create_app(backend, tokenizer, config, metrics)

    async def broken(scope, receive, send):
        raise RuntimeError("a bug")

    app.router.routes[0].app = broken  # GET / (health)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as c:
        r = await c.get("/")
    assert r.status_code == 500 and r.json() == {"error": "Internal server error", "error_type": "internal"}
    assert "a bug" in caplog.text


def test_loads_matches_json_for_ordinary_bodies() -> None:
    body = json.dumps({"inputs": "héllo \U0001F600", "parameters": {"stop": ["a"] * 3}}).encode()
    assert json_body.loads(body) == json.loads(body)
    escaped = json.dumps({"inputs": "\\ud800 is text"}).encode()  # an escaped backslash, not a surrogate
    assert json_body.loads(escaped) == {"inputs": "\\ud800 is text"}
    brackets_in_strings = json.dumps({"inputs": "[" * 500}).encode()
    assert json_body.loads(brackets_in_strings) == {"inputs": "[" * 500}


def test_chat_message_with_null_content_is_a_template_error() -> None:
    """Found by the fuzzer against the demo model, whose template concatenates ``'<|role|>' + content``: a
    null content raised TypeError (500); it is a template error (422) as in TGI."""
    from router_py.chat_template import ChatTemplate, ChatTemplateError

    template = ChatTemplate("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] }}{% endfor %}",
                            "<s>", "</s>")
    with pytest.raises(ChatTemplateError):
        template.render([{"role": "user", "content": None}])
