"""Bad requests, each with the status and body TGI gives (tgi-compat 3.2, 3.5), then the server still serves."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from router_py.router_config import RouterConfig
from router_py.metrics import Metrics
from router_py.http.server import create_app
from router_py.tests.conftest import FakeBackend

KEY = {"Authorization": "Bearer secret"}
V = "Input validation error: "
DESER = "Failed to deserialize the JSON body into the target type: "
LONG_PROMPT = "the quick brown fox jumps over the lazy dog " * 12  # over max_input_tokens, under max_total
OVER_TOTAL = "the quick brown fox jumps over the lazy dog " * 20  # over max_total_tokens


@dataclass(frozen=True)
class Case:
    name: str
    body: Any
    status: int
    expect: Any  # dict: JSON body; str: plain text; ("sse", dict): only an SSE error event (status 200)
    path: str = "/generate"
    headers: dict[str, str] = field(default_factory=lambda: dict(KEY))
    raw: bytes | None = None


def params(**p: Any) -> dict[str, Any]:
    return {"inputs": "hello world", "parameters": p}


def invalid(text: str) -> dict[str, str]:
    return {"error": V + text, "error_type": "validation"}


def sse(text: str) -> tuple[str, dict[str, str]]:
    return ("sse", invalid(text))


CASES = [
    Case("temperature 0", params(temperature=0), 422, invalid("`temperature` must be strictly positive")),
    Case("temperature <0", params(temperature=-1.5), 422, invalid("`temperature` must be strictly positive")),
    Case(
        "repetition_penalty 0",
        params(repetition_penalty=0),
        422,
        invalid("`repetition_penalty` must be strictly positive"),
    ),
    Case(
        "frequency_penalty 2.5",
        params(frequency_penalty=2.5),
        422,
        invalid("`frequency_penalty` must be >= -2.0 and <= 2.0"),
    ),
    Case(
        "frequency_penalty -2.1",
        params(frequency_penalty=-2.1),
        422,
        invalid("`frequency_penalty` must be >= -2.0 and <= 2.0"),
    ),
    Case("top_k 0", params(top_k=0), 422, invalid("`top_k` must be strictly positive")),
    Case("top_k -5", params(top_k=-5), 422, invalid("`top_k` must be strictly positive")),
    Case("top_p 1.0", params(top_p=1.0), 422, invalid("`top_p` must be > 0.0 and < 1.0")),
    Case("top_p 0", params(top_p=0), 422, invalid("`top_p` must be > 0.0 and < 1.0")),
    Case("typical_p 1.5", params(typical_p=1.5), 422, invalid("`typical_p` must be > 0.0 and < 1.0")),
    Case(
        "max_new_tokens 0",
        params(max_new_tokens=0),
        422,
        invalid("`max_new_tokens` must be strictly positive"),
    ),
    Case(
        "5 stop sequences",
        params(stop=["a", "b", "c", "d", "e"]),
        422,
        invalid("`stop` supports up to 4 stop sequences. Given: 5"),
    ),
    Case(
        "best_of without sampling",
        params(best_of=2),
        422,
        invalid("you must use sampling when `best_of` is > 1"),
    ),
    Case(
        "seed with best_of",
        params(best_of=2, do_sample=True, seed=3),
        422,
        invalid("`seed` must not be set when `best_of` > 1"),
    ),
    Case(
        "best_of 3",
        params(best_of=3, do_sample=True),
        422,
        invalid("`best_of` must be > 0 and <= 2. Given: 3"),
    ),
    Case(
        "top_n_tokens 6",
        params(top_n_tokens=6),
        422,
        invalid("`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
    ),
    Case("empty inputs", {"inputs": "", "parameters": {}}, 422, invalid("`inputs` cannot be empty")),
    Case(
        "truncate 0",
        params(truncate=0),
        422,
        invalid("`truncate` must be strictly positive and less than 64. Given: 0"),
    ),
    Case(
        "truncate 65",
        params(truncate=65),
        422,
        invalid("`truncate` must be strictly positive and less than 64. Given: 65"),
    ),
    Case("prompt too long", {"inputs": LONG_PROMPT, "parameters": {}}, 422, "too-long"),
    # TGI checks the total before the prompt alone: past max_total_tokens, the total's error (0 new tokens
    # when none were asked for), never "`inputs` must have less than"
    Case("prompt past max_total_tokens", {"inputs": OVER_TOTAL, "parameters": {}}, 422, "over-total"),
    Case(
        "prompt past max_total_tokens, max_new_tokens 5",
        {"inputs": OVER_TOTAL, "parameters": {"max_new_tokens": 5}},
        422,
        "over-total-5",
    ),
    Case(
        "input + max_new_tokens",
        {"inputs": LONG_PROMPT, "parameters": {"truncate": 60, "max_new_tokens": 100}},
        422,
        invalid(
            "`inputs` tokens + `max_new_tokens` must be <= 128. Given: 60 `inputs` tokens and 100 "
            "`max_new_tokens`"
        ),
    ),
    Case(
        "json grammar without properties",
        params(grammar={"type": "json", "value": {"type": "object"}}),
        422,
        invalid("grammar is not valid: Grammar must have a 'properties' field"),
    ),
    Case(
        "json grammar not a schema",
        params(grammar={"type": "json", "value": {"type": "object", "properties": {"a": {"type": 7}}}}),
        422,
        invalid("grammar is not valid: 7 is not valid under any of the given schemas"),
    ),
    Case(
        "json grammar string not JSON",
        params(grammar={"type": "json", "value": "{nope"}),
        422,
        invalid("grammar is not valid: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ),
    Case(
        "json grammar keyword the engine refuses",
        params(grammar={"type": "json", "value": {"properties": {"a": {"type": "integer"}}, "not": {}}}),
        422,
        invalid('grammar is not valid: Unimplemented keys: ["not"]'),
    ),
    Case(
        "regex grammar that does not compile",
        params(grammar={"type": "regex", "value": "(ab"}),
        422,
        invalid('grammar is not valid: at 1(8): invalid regex "(ab" (in regex): regex parse error: '
                "error: unclosed group"),
    ),
    Case(
        "stream with best_of",
        params(best_of=2, do_sample=True),
        200,
        sse("`best_of` != 1 is not supported when streaming tokens"),
        path="/generate_stream",
    ),
    Case(
        "stream with decoder_input_details",
        params(decoder_input_details=True),
        200,
        sse("`decoder_input_details` == true is not supported when streaming tokens"),
        path="/generate_stream",
    ),
    Case(
        "compat stream with best_of",
        {**params(best_of=2, do_sample=True), "stream": True},
        200,
        sse("`best_of` != 1 is not supported when streaming tokens"),
        path="/",
    ),
    Case(
        "stream validation error",
        params(top_k=0),
        200,
        sse("`top_k` must be strictly positive"),
        path="/generate_stream",
    ),
    Case(
        "malformed JSON",
        None,
        400,
        "Failed to parse the request body as JSON: Expecting value at line 1 column 12",
        raw=b'{"inputs": }',
    ),
    Case(
        "wrong content type",
        None,
        415,
        "Expected request with `Content-Type: application/json`",
        headers={**KEY, "content-type": "text/plain"},
        raw=b'{"inputs": "x"}',
    ),
    Case(
        "oversized body",
        {"inputs": "x" * 2_000_100},
        413,
        "Failed to buffer the request body: length limit exceeded",
    ),
    Case("missing inputs", {"parameters": {}}, 422, DESER + "missing field `inputs`"),
    Case(
        "inputs not a string",
        {"inputs": 5},
        422,
        DESER + "inputs: invalid type: integer `5`, expected a string",
    ),
    Case(
        "body is an array",
        [{"inputs": "x"}],
        422,
        DESER + "invalid type: sequence, expected struct GenerateRequest",
    ),
    Case(
        "max_new_tokens -1",
        params(max_new_tokens=-1),
        422,
        DESER + "parameters.max_new_tokens: invalid value: integer `-1`, expected u32",
    ),
    Case(
        "temperature string",
        params(temperature="hot"),
        422,
        DESER + 'parameters.temperature: invalid type: string "hot", expected f32',
    ),
    Case(
        "do_sample null",
        params(do_sample=None),
        422,
        DESER + "parameters.do_sample: invalid type: null, expected a boolean",
    ),
    Case(
        "stop not a list",
        params(stop="x"),
        422,
        DESER + 'parameters.stop: invalid type: string "x", expected a sequence',
    ),
    Case(
        "top_n_tokens float",
        params(top_n_tokens=1.5),
        422,
        DESER + "parameters.top_n_tokens: invalid type: floating point `1.5`, expected u32",
    ),
    Case(
        "seed -1", params(seed=-1), 422, DESER + "parameters.seed: invalid value: integer `-1`, expected u64"
    ),
    Case(
        "parameters null",
        {"inputs": "x", "parameters": None},
        422,
        DESER + "parameters: invalid type: null, expected struct GenerateParameters",
    ),
    Case(
        "unknown grammar type",
        params(grammar={"type": "xml", "value": "x"}),
        422,
        DESER + "parameters.grammar: unknown variant `xml`, expected one of `json`, `json_object`, `regex`, "
        "`json_schema`",
    ),
    Case("missing API key", params(), 401, "", headers={}),
    Case("wrong API key", params(), 401, "", headers={"Authorization": "Bearer nope"}),
    Case(
        "generation failure",
        {"inputs": "FAIL", "parameters": {}},
        424,
        {"error": "Request failed during generation: Server error: boom", "error_type": "generation"},
    ),
    Case(
        "incomplete generation",
        {"inputs": "INCOMPLETE", "parameters": {}},
        500,
        {"error": "Incomplete generation", "error_type": "incomplete_generation"},
    ),
    Case(
        "stream generation failure",
        {"inputs": "FAIL", "parameters": {}},
        200,
        (
            "sse",
            {"error": "Request failed during generation: Server error: boom", "error_type": "generation"},
        ),
        path="/generate_stream",
    ),
    Case(
        "stream incomplete",
        {"inputs": "INCOMPLETE", "parameters": {}},
        200,
        (
            "sse-after-tokens",
            {"error": "Incomplete generation stream", "error_type": "incomplete_generation_stream"},
        ),
        path="/generate_stream",
    ),
    Case(
        "chat template raises",
        {"messages": [{"role": "bad", "content": "x"}]},
        422,
        {"error": "Template error: bad role", "error_type": "template_error"},
        path="/v1/chat/completions",
    ),
    Case(
        "chat missing messages",
        {"model": "tgi"},
        422,
        DESER + "missing field `messages`",
        path="/v1/chat/completions",
    ),
    Case(
        "chat top_p 1.5 (1 is OpenAI's off there, session 50)",
        {"messages": [{"role": "user", "content": "x"}], "top_p": 1.5},
        422,
        invalid("`top_p` must be > 0.0 and < 1.0"),
        path="/v1/chat/completions",
    ),
    Case(
        "completions suffix",
        {"prompt": "x", "suffix": "y"},
        422,
        {
            "error": "Suffix is not supported and can be achieved by preprocessing the prompt.",
            "error_type": "suffix not supported",
        },
        path="/v1/completions",
    ),
    Case(
        "completions batch too large",
        {"prompt": ["a", "b", "c", "d", "e"]},
        422,
        {
            "error": "Number of prompts exceeds the maximum allowed batch size of 4",
            "error_type": "batch size exceeded",
        },
        path="/v1/completions",
    ),
    Case(
        "chat stream validation error",
        {"messages": [{"role": "user", "content": "x"}], "stream": True, "max_tokens": 0},
        200,
        "openai-sse",
        path="/v1/chat/completions",
    ),
]


def make_app(backend: FakeBackend, tokenizer):
    config = RouterConfig(model_id="prism-test", max_input_tokens=64, max_total_tokens=128, api_key="secret")
    return create_app(backend, tokenizer, config, Metrics(64, 128))


async def send(client: httpx.AsyncClient, case: Case) -> httpx.Response:
    headers = dict(case.headers)
    if case.raw is not None:
        headers.setdefault("content-type", "application/json")
        return await client.post(case.path, content=case.raw, headers=headers)
    return await client.post(
        case.path, content=json.dumps(case.body), headers={"content-type": "application/json", **headers}
    )


def check(case: Case, resp: httpx.Response, tokenizer) -> None:
    assert resp.status_code == case.status, (case.name, resp.text)
    if case.expect == "too-long":
        n = len(tokenizer.encode(LONG_PROMPT))
        assert n > 64
        assert resp.json() == invalid(f"`inputs` must have less than 64 tokens. Given: {n}")
    elif case.expect in ("over-total", "over-total-5"):
        n = len(tokenizer.encode(OVER_TOTAL))
        assert n > 128
        new = 5 if case.expect == "over-total-5" else 0
        assert resp.json() == invalid(
            f"`inputs` tokens + `max_new_tokens` must be <= 128. Given: {n} `inputs` tokens and {new} "
            "`max_new_tokens`"
        )
    elif case.expect == "openai-sse":
        assert resp.text == (
            'data:{"error":{"message":"Input validation error: `max_new_tokens` must be strictly positive",'
            '"http_status_code":422}}\n\ndata: [DONE]\n\n'
        )
    elif isinstance(case.expect, tuple):
        assert resp.headers["content-type"].startswith("text/event-stream")
        event = "data:" + json.dumps(case.expect[1], separators=(",", ":")) + "\n\n"
        if case.expect[0] == "sse-after-tokens":
            events = resp.text.split("\n\n")
            assert resp.text.endswith(event) and len(events) == 6 and events[0].startswith('data:{"index":1,')
        else:
            assert resp.text == event
    elif isinstance(case.expect, dict):
        assert resp.headers["content-type"] == "application/json"
        assert resp.json() == case.expect
    else:
        assert resp.text == case.expect
        if case.status != 401:
            assert resp.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_bad_request(case: Case, tokenizer) -> None:
    app = make_app(FakeBackend(), tokenizer)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as client:
        check(case, await send(client, case), tokenizer)


async def test_server_keeps_serving_after_all_bad_requests(tokenizer) -> None:
    assert len(CASES) >= 30
    backend = FakeBackend()
    app = make_app(backend, tokenizer)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as client:
        for case in CASES:
            check(case, await send(client, case), tokenizer)
        resp = await client.post("/generate", json={"inputs": "hello world", "parameters": {}}, headers=KEY)
        assert resp.status_code == 200
        assert resp.json() == {"generated_text": " t0 t304 t305 t0 t304"}
        state = app.state.prism
        assert state.permits.in_use == 0
        assert len(backend.finished) + len(backend.closed) == len(backend.requests)  # no generator left open
        failures = state.metrics.render()
        assert 'tgi_request_failure{err="validation"}' in failures
        assert 'tgi_request_failure{err="generation"} 2' in failures
        assert 'tgi_request_failure{err="incomplete"} 2' in failures
        assert 'tgi_request_failure{err="template"} 1' in failures
        assert 'err="suffix' not in failures and 'err="batch' not in failures  # TGI labels them validation


async def test_api_key_compare_is_case_insensitive(tokenizer) -> None:
    app = make_app(FakeBackend(), tokenizer)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as client:
        resp = await client.post("/generate", json=params(), headers={"Authorization": "BEARER SECRET"})
        assert resp.status_code == 200
        assert (await client.get("/health")).status_code == 200  # GET routes need no key


ORDER = [
    ({"temperature": 0, "top_k": 0}, "`temperature` must be strictly positive"),
    ({"top_k": 0, "max_new_tokens": 0}, "`top_k` must be strictly positive"),
    ({"max_new_tokens": 0, "stop": ["a"] * 5}, "`max_new_tokens` must be strictly positive"),
    ({"best_of": 2, "seed": 1, "top_n_tokens": 6}, "you must use sampling when `best_of` is > 1"),
    ({"top_n_tokens": 6, "truncate": 0}, "`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
    (
        {"truncate": 0, "grammar": {"type": "regex", "value": "a"}},
        "`truncate` must be strictly positive and less " "than 64. Given: 0",
    ),
]


@pytest.mark.parametrize("parameters,message", ORDER)
async def test_first_failing_check_wins_in_tgi_order(parameters, message, client) -> None:
    resp = await client.post("/generate", json={"inputs": "hello", "parameters": parameters})
    assert resp.status_code == 422 and resp.json() == invalid(message)


async def test_best_of_limit_is_checked_before_the_permit_and_values(client) -> None:
    parameters = {"best_of": 3, "temperature": 0}
    resp = await client.post("/generate", json={"inputs": "hello", "parameters": parameters})
    assert resp.json() == invalid("`best_of` must be > 0 and <= 2. Given: 3")
