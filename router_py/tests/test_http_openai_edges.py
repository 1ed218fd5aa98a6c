"""OpenAI and TGI edges (issue 16 item 8): completions streaming honours ``stream_options.include_usage``;
``Allow`` on ``/`` lists GET and POST; the OpenAPI document is valid 3.0
(checked with openapi-spec-validator); ``/docs`` serves Swagger UI from the package, no CDN."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from openapi_spec_validator import OpenAPIV30SpecValidator


def _events(text: str) -> list:
    return [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]


async def test_completions_stream_ends_with_usage_when_asked(client: httpx.AsyncClient) -> None:
    body = {"prompt": ["hello world", "the fox"], "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True}}
    r = await client.post("/v1/completions", json=body)
    events = _events(r.text)
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == [] and last["object"] == "text_completion"
    usage = last["usage"]
    assert usage["completion_tokens"] == 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + 6 and usage["prompt_tokens"] > 0
    without = _events((await client.post("/v1/completions", json={**body, "stream_options": None})).text)
    assert all("usage" not in json.loads(e) for e in without[:-1])


async def test_allow_header_on_root_lists_get_and_post(client: httpx.AsyncClient) -> None:
    r = await client.put("/", json={})
    assert r.status_code == 405
    assert {m.strip() for m in r.headers["allow"].split(",")} >= {"GET", "POST"}
    assert (await client.get("/")).status_code == 200


async def test_openapi_document_is_valid_openapi_3_0(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/api-doc/openapi.json")).json()
    assert doc["openapi"].startswith("3.0")
    errors = [str(e).splitlines()[0] for e in OpenAPIV30SpecValidator(doc).iter_errors()]
    assert errors == []


async def test_docs_serve_swagger_ui_from_the_package(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert "unpkg.com" not in page.text and "cdn" not in page.text.lower()
    assets = re.findall(r'(?:href|src)="(/docs/assets/[^"]+)"', page.text)
    assert len(assets) == 2
    for asset in assets:
        r = await client.get(asset)
        assert r.status_code == 200 and len(r.content) > 10_000, asset


async def test_chat_content_parts_as_tgi_reads_them(client: httpx.AsyncClient, backend) -> None:
    """An image part reaches a text model's template as ``![](url)`` (TGI's rendering), not dropped; a part
    TGI cannot deserialize (audio, a text part without text, a bare string) is its 422, not silently lost."""
    url = "https://example.com/cat.png"
    parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]
    ok = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": parts}],
                                                         "max_tokens": 2})
    assert ok.status_code == 200, ok.text
    assert f"What is this?![]({url})" in backend.requests[-1].inputs
    for bad in ([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}],
                [{"type": "text"}], ["hello"], [{"type": "image_url", "image_url": "x"}]):
        r = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": bad}]})
        assert r.status_code == 422 and "untagged enum MessageContent" in r.text, (bad, r.text)


async def test_max_completion_tokens_wins_over_the_deprecated_max_tokens(client: httpx.AsyncClient,
                                                                          backend) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 7, "max_completion_tokens": 3}
    assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
    assert backend.requests[-1].stopping.max_new_tokens == 3


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": "hello", "max_tokens": 2}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}),
])
async def test_vllm_top_k_reaches_the_sampler(client: httpx.AsyncClient, backend, path: str, body: dict) -> None:
    """vLLM's ``top_k`` on the OpenAI routes (it was dropped); its 0 and -1 mean none."""
    for top_k, expected in ((5, 5), (0, 0), (-1, 0), (None, 0)):
        assert (await client.post(path, json={**body, "top_k": top_k})).status_code == 200
        assert backend.requests[-1].sampling.top_k == expected, top_k
