"""TGI-native routes: response shapes, defaults, SSE framing, best_of, headers, disconnects and overload."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest

from router_py.router_config import RouterConfig
from router_py.metrics import Metrics
from router_py.http.server import create_app

HELLO = " t0 t304 t305 t0 t304"  # the fake's echo of "hello world" = [<s>, hello, world]


def sse_events(text: str) -> list[dict]:
    assert text.endswith("\n\n")
    chunks = text[:-2].split("\n\n")
    assert all(c.startswith("data:{") for c in chunks)  # no space after the colon, no [DONE]
    return [json.loads(c[len("data:") :]) for c in chunks]


async def test_compat_route_returns_array_with_full_text(client, backend) -> None:
    resp = await client.post("/", json={"inputs": "hello world"})
    assert resp.status_code == 200
    assert resp.json() == [{"generated_text": "hello world" + HELLO}]
    assert backend.requests[0].sampling.do_sample is True  # parameters absent: sampling on


async def test_compat_route_without_text_generation_tag(backend, tokenizer) -> None:
    config = RouterConfig(
        model_pipeline_tag="text2text-generation", max_input_tokens=64, max_total_tokens=128
    )
    app = create_app(backend, tokenizer, config, Metrics())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as client:
        resp = await client.post("/", json={"inputs": "hello world", "parameters": {}})
    assert resp.json() == [{"generated_text": HELLO}]


async def test_generate_returns_object_without_details_key(client, backend) -> None:
    resp = await client.post(
        "/generate", json={"inputs": "hello world", "parameters": {"return_full_text": None}}
    )
    assert resp.json() == {"generated_text": HELLO}
    assert backend.requests[0].sampling.do_sample is False  # parameters present: greedy by default


async def test_generate_details_shape(client) -> None:
    body = {"inputs": "hello world", "parameters": {"details": True, "max_new_tokens": 2}}
    details = (await client.post("/generate", json=body)).json()["details"]
    assert details == {
        "finish_reason": "length",
        "generated_tokens": 2,
        "seed": None,
        "prefill": [],
        "tokens": [
            {"id": 0, "text": " t0", "logprob": -0.5, "special": False},
            {"id": 304, "text": " t304", "logprob": -0.5, "special": False},
        ],
    }


async def test_decoder_input_details_and_top_n_tokens(client) -> None:
    params = {"decoder_input_details": True, "top_n_tokens": 2, "max_new_tokens": 1}
    details = (await client.post("/generate", json={"inputs": "hello world", "parameters": params})).json()[
        "details"
    ]
    assert details["prefill"] == [
        {"id": 0, "text": " t0", "logprob": None},
        {"id": 304, "text": " t304", "logprob": -1.0},
        {"id": 305, "text": " t305", "logprob": -1.0},
    ]
    assert details["top_tokens"] == [
        [
            {"id": 0, "text": " t0", "logprob": -1.0, "special": False},
            {"id": 1, "text": " t1", "logprob": -2.0, "special": False},
        ]
    ]


async def test_sampled_request_reports_its_seed(client) -> None:
    params = {"do_sample": True, "seed": 42, "details": True}
    details = (await client.post("/generate", json={"inputs": "hello world", "parameters": params})).json()[
        "details"
    ]
    assert details["seed"] == 42


async def test_best_of_picks_highest_mean_logprob(client, backend) -> None:
    params = {"best_of": 2, "do_sample": True, "details": True, "return_full_text": True}
    body = (await client.post("/generate", json={"inputs": "hello world", "parameters": params})).json()
    assert len(backend.requests) == 2
    assert backend.requests[0].sampling.seed != backend.requests[1].sampling.seed
    others = body["details"]["best_of_sequences"]
    assert len(others) == 1 and others[0]["generated_text"] == "hello world" + HELLO
    mean = lambda d: sum(t["logprob"] for t in d["tokens"]) / len(d["tokens"])  # noqa: E731
    assert mean(body["details"]) >= mean(others[0])
    assert body["details"]["seed"] in {r.sampling.seed for r in backend.requests}


async def test_valid_request_defaults_truncation_and_namespace(backend, tokenizer) -> None:
    config = RouterConfig(max_input_tokens=64, max_total_tokens=128, tenant_header="x-tenant")
    app = create_app(backend, tokenizer, config, Metrics())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as client:
        await client.post(
            "/generate", json={"inputs": "hello world", "parameters": {}}, headers={"x-tenant": "a"}
        )
        await client.post("/generate", json={"inputs": "hello world", "parameters": {"truncate": 2}})
        await client.post("/generate", json={"inputs": "hello", "parameters": {"adapter_id": "lora"}})
    full, truncated, adapted = backend.requests
    ids = tuple(tokenizer.encode("hello world"))
    assert full.input_ids == ids and full.namespace == "a"
    assert full.stopping.max_new_tokens == 128 - len(ids)
    assert full.truncate == 64
    assert truncated.input_ids == ids[-2:] and truncated.truncate == 2 and truncated.namespace == ""
    assert adapted.adapter_id == "lora" and adapted.namespace == "@lora"


async def test_response_headers(client) -> None:
    resp = await client.post("/generate", json={"inputs": "hello world", "parameters": {}})
    h = resp.headers
    assert h["x-compute-type"] == "gpu+optimized"
    assert h["x-prompt-tokens"] == "3" and h["x-generated-tokens"] == "5"
    assert h["x-compute-characters"] == "11"
    float(h["x-compute-time"])
    for name in ("x-total-time", "x-validation-time", "x-queue-time", "x-inference-time", "x-time-per-token"):
        assert h[name].isdigit()


async def test_generate_stream_events(client) -> None:
    body = {"inputs": "hello world", "parameters": {"details": True, "max_new_tokens": 3, "top_n_tokens": 1}}
    resp = await client.post("/generate_stream", json=body)
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["x-accel-buffering"] == "no"
    raw = resp.text.split("\n\n")[0]
    assert raw == (
        'data:{"index":1,"token":{"id":0,"text":" t0","logprob":-0.5,"special":false},'
        '"top_tokens":[{"id":0,"text":" t0","logprob":-1.0,"special":false}],'
        '"generated_text":null,"details":null}'
    )
    events = sse_events(resp.text)
    assert [e["index"] for e in events] == [1, 2, 3]
    assert events[-1]["generated_text"] == " t0 t304 t305"
    assert events[-1]["details"] == {
        "finish_reason": "length",
        "generated_tokens": 3,
        "seed": None,
        "input_length": 3,
    }


async def test_compat_stream_full_text_and_null_details(client) -> None:
    resp = await client.post("/", json={"inputs": "hello world", "parameters": {}, "stream": True})
    events = sse_events(resp.text)
    assert len(events) == 5 and "top_tokens" not in events[0]
    assert events[-1]["generated_text"] == "hello world" + HELLO
    assert events[-1]["details"] is None


def _asgi_scope(path: str, body: bytes) -> dict:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("router", 80),
    }


async def serve_until_gone(app, path: str, payload: dict, leaves: Callable[[bytes], bool]) -> list[bytes]:
    """POST ``payload`` to ``path`` over raw ASGI; the client disconnects after the first body chunk for which
    ``leaves`` is true. Returns the body chunks it received (the app must end within 10 s)."""
    body = json.dumps(payload).encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    gone = asyncio.Event()
    chunks: list[bytes] = []

    async def receive() -> dict:
        if messages:
            return messages.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            chunks.append(message["body"])
            if leaves(message["body"]):
                gone.set()

    await asyncio.wait_for(app(_asgi_scope(path, body), receive, send), timeout=10)
    return chunks


@pytest.mark.parametrize("path", ["/generate_stream", "/v1/chat/completions"])
async def test_client_disconnect_closes_backend_stream(app, backend, path) -> None:
    payload = {"inputs": "SLOW hello", "parameters": {}}
    if path != "/generate_stream":
        payload = {"messages": [{"role": "user", "content": "SLOW"}], "stream": True}
    chunks = await serve_until_gone(app, path, payload, lambda chunk: True)  # the client leaves at once
    marker = b'"index":1,' if path == "/generate_stream" else b"chat.completion.chunk"
    assert len(chunks) == 1 and marker in chunks[0]
    assert backend.closed == backend.requests and len(backend.requests) == 1
    assert app.state.prism.permits.in_use == 0


async def test_overloaded_past_max_concurrent_requests(backend, tokenizer) -> None:
    config = RouterConfig(max_concurrent_requests=1, max_input_tokens=64, max_total_tokens=128)
    app = create_app(backend, tokenizer, config, Metrics())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as client:
        held = asyncio.create_task(client.post("/generate", json={"inputs": "SLOW x", "parameters": {}}))
        for _ in range(1000):
            if app.state.prism.permits.in_use:
                break
            await asyncio.sleep(0)
        over = {"error": "Model is overloaded", "error_type": "overloaded"}
        resp = await client.post("/generate", json={"inputs": "x", "parameters": {"top_k": 0}})
        assert resp.status_code == 429 and resp.json() == over  # checked before validation
        stream = await client.post("/generate_stream", json={"inputs": "x", "parameters": {}})
        assert stream.status_code == 200 and sse_events(stream.text) == [over]
        backend.gate.set()
        assert (await held).status_code == 200
    assert app.state.prism.permits.in_use == 0
    assert 'tgi_request_failure{err="overloaded"} 2' in app.state.prism.metrics.render()


@pytest.mark.parametrize(
    "path, body",
    [
        ("/vertex", {"instances": [{"inputs": "SLOW hello", "parameters": {}},
                                   {"inputs": "x", "parameters": {"temperature": -1}}]}),
        ("/v1/completions", {"model": "tgi", "prompt": ["SLOW hello", "FAIL"], "max_tokens": 3}),
    ],
)
async def test_one_failing_part_of_a_call_stops_its_other_parts(app, backend, path, body) -> None:
    """A call of several generations (vertex instances, completions prompts) answered with one part's error
    must not leave the others generating for nobody: they leave the batch (and give back their permits and
    KV blocks) before the answer. Before, they ran on to the end of their max_new_tokens (live: a /vertex
    422 while its other instance held 63 KV blocks for seconds more)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as client:
        resp = await client.post(path, json=body)
        assert resp.status_code in (422, 424), resp.text
        assert app.state.prism.permits.in_use == 0  # an orphaned part holds its permit until it ends
        for _ in range(20):  # an orphan still validating would reach the backend (and wait on its gate)
            await asyncio.sleep(0)
        assert all(r in backend.closed or r in backend.finished for r in backend.requests)
