"""Unauthenticated routes: health, /info, /metrics over HTTP, OpenAPI and docs; /tokenize offsets."""

from __future__ import annotations

import pytest


async def test_info_keys(client) -> None:
    info = (await client.get("/info")).json()
    assert info == {
        "model_id": "prism-test",
        "model_sha": None,
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": 128,
        "max_best_of": 2,
        "max_stop_sequences": 4,
        "max_input_tokens": 64,
        "max_total_tokens": 128,
        "validation_workers": 2,
        "max_client_batch_size": 4,
        "router": "text-generation-router",
        "version": "3.3.6-dev0",
        "sha": None,
        "docker_label": None,
        "model_dtype": "float32",
        "model_device_type": "cpu",
    }


async def test_health_routes(client, backend) -> None:
    for path in ("/", "/health", "/ping"):
        resp = await client.get(path)
        assert resp.status_code == 200 and resp.content == b""
    backend.healthy = False
    resp = await client.get("/health")
    assert resp.status_code == 503 and resp.json() == {"error": "unhealthy", "error_type": "healthcheck"}


async def test_metrics_after_requests(client) -> None:
    await client.post("/generate", json={"inputs": "hello world", "parameters": {}})
    await client.post("/generate", json={"inputs": "", "parameters": {}})
    text = (await client.get("/metrics")).text
    lines = text.splitlines()
    assert "tgi_request_count 2" in lines and "tgi_request_success 1" in lines
    assert 'tgi_request_failure{err="validation"} 1' in lines
    assert "# TYPE tgi_request_count counter" in lines and "_total" not in text
    for name in (
        "duration",
        "validation_duration",
        "queue_duration",
        "inference_duration",
        "mean_time_per_token_duration",
        "generated_tokens",
        "input_length",
        "max_new_tokens",
    ):
        assert f"# TYPE tgi_request_{name} histogram" in lines
        assert f"tgi_request_{name}_count 1" in lines
    assert 'tgi_request_input_length_bucket{le="3.84"} 1' in lines  # 100 linear buckets up to 64


async def test_tokenize_byte_offsets(client) -> None:
    tokens = (await client.post("/tokenize", json={"inputs": "héllo world"})).json()
    assert tokens[0] == {"id": 0, "text": "", "start": 0, "stop": 0}  # <s>
    assert tokens[1:] == [
        {"id": tokens[1]["id"], "text": "héllo", "start": 0, "stop": 6},  # é is two bytes
        {"id": tokens[2]["id"], "text": " world", "start": 6, "stop": 12},
    ]
    truncated = await client.post("/tokenize", json={"inputs": "héllo world", "parameters": {"truncate": 1}})
    assert truncated.json() == tokens[-1:]


async def test_openapi_and_docs(client) -> None:
    doc = (await client.get("/api-doc/openapi.json")).json()
    assert doc["info"]["version"] == "3.3.6-dev0"
    assert {"/", "/generate", "/generate_stream", "/v1/chat/completions", "/tokenize"} <= set(doc["paths"])
    schemas = doc["components"]["schemas"]
    assert {"GenerateRequest", "GenerateParameters", "GenerateResponse", "StreamResponse", "Info"} <= set(
        schemas
    )
    refs = [v for v in _walk(doc) if isinstance(v, str) and v.startswith("#/components/schemas/")]
    assert all(ref.rsplit("/", 1)[1] in schemas for ref in refs)
    page = await client.get("/docs")
    assert page.status_code == 200 and "/api-doc/openapi.json" in page.text


def _walk(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)
    else:
        yield node


CHAT = {"messages": [{"role": "user", "content": "hello world"}], "max_tokens": 3}


@pytest.mark.parametrize(
    ("path", "body", "count", "success"),
    [
        ("/generate", {"inputs": "hello world", "parameters": {}}, 1, 1),
        ("/generate_stream", {"inputs": "hello world", "parameters": {}}, 1, 1),
        ("/", {"inputs": "hello world", "parameters": {}}, 1, 1),
        ("/generate", {"inputs": "hello world", "parameters": {"best_of": 2, "do_sample": True}}, 1, 1),
        ("/chat_tokenize", CHAT, 1, 0),
        ("/v1/chat/completions", CHAT, 2, 1),
        ("/v1/chat/completions", {**CHAT, "stream": True}, 2, 1),
        ("/v1/completions", {"prompt": ["hello world", "hello", "world"], "max_tokens": 3}, 4, 3),
        ("/v1/completions", {"prompt": ["hello", "world", "hello"], "max_tokens": 3, "stream": True}, 4, 3),
        ("/v1/completions", {"prompt": "hello", "max_tokens": 3, "suffix": "x"}, 1, 0),
        ("/vertex", {"instances": [{"inputs": "hello world"}, {"inputs": "hello"}]}, 3, 2),
    ],
)
async def test_request_count_per_route_is_tgis(client, metrics, path, body, count, success) -> None:
    """TGI counts ``tgi_request_count`` in each route handler that has one (chat, completions, vertex,
    chat_tokenize) and again in every generate_internal / generate_stream_internal it calls: once per
    /generate call, twice per chat call, 1 + one per prompt on /v1/completions and /vertex. Before, the last
    three counted one per call, so a 3-prompt completion made 3 successes of 1 request."""
    resp = await client.post(path, json=body)
    assert resp.status_code in (200, 422), resp.text
    assert metrics.value("tgi_request_count") == count
    assert metrics.value("tgi_request_success") == success
    assert metrics.value("tgi_request_success") <= metrics.value("tgi_request_count")

