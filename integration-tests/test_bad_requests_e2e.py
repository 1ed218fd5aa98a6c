"""Bad requests against the real stack (``prism-launcher`` on loopback, with an API key and small
limits): each gets the status and body TGI gives (tgi-compat 3.2-3.5, 3.8), then the server keeps serving
and ``/metrics`` has counted the validation failures.

A black box: only HTTP and the command line, no import of the project's packages. Expected token counts come
from the server's own ``/tokenize``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from conftest import Stack, metric_value

API_KEY = "s3cret-Key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_INPUT, MAX_TOTAL, PAYLOAD_LIMIT = 64, 128, 20_000
V = "Input validation error: "
DESER = "Failed to deserialize the JSON body into the target type: "
JSON_SYNTAX = "Failed to parse the request body as JSON: "  # then the parser's own words and position
POSITIVE = "`%s` must be strictly positive"
TOP_P = "`top_p` must be > 0.0 and < 1.0"
SHORT = "hello world"
LONG_PROMPT = "the quick brown fox jumps over the lazy dog " * 4  # over MAX_INPUT, under MAX_TOTAL tokens
OVER_TOTAL_PROMPT = "the quick brown fox jumps over the lazy dog " * 12  # over MAX_TOTAL tokens
# tgi_request_failure's err labels: a fixed set in TGI
FAILURE_LABELS = {"validation", "overloaded", "generation", "incomplete", "dropped", "template"}


# ---- expectations ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Json:
    """A handler error: exact JSON body, ``application/json``."""

    body: dict[str, Any]


@dataclass(frozen=True)
class Text:
    """A framework (axum extractor) rejection: exact plain text."""

    text: str


@dataclass(frozen=True)
class Prefix:
    """A framework rejection whose tail (serde's position, the parser's wording) is not in the contract."""

    text: str


@dataclass(frozen=True)
class Sse:
    """A TGI-native stream: HTTP 200 and exactly one ``data:{"error":..,"error_type":..}`` event."""

    body: dict[str, Any]


@dataclass(frozen=True)
class OpenAISse:
    """An OpenAI stream: HTTP 200, one ``data:{"error":{"message","http_status_code"}}`` event, then
    ``data: [DONE]``."""

    message: str
    http_status_code: int = 422


class Empty:
    """401: no body at all."""


Expect = Json | Text | Prefix | Sse | OpenAISse | type[Empty]
Counter = Callable[[str], int]  # text -> its token count per the server's /tokenize


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: Any = None
    status: int = 422
    expect: Expect | Callable[[Counter], Expect] = Empty
    headers: dict[str, str] = field(default_factory=lambda: dict(AUTH))
    raw: bytes | None = None  # sent as is (content-type application/json unless headers say otherwise)


def invalid(text: str) -> Json:
    return Json({"error": V + text, "error_type": "validation"})


def deser(detail: str) -> Prefix:
    return Prefix(DESER + detail)


def sse_invalid(text: str) -> Sse:
    return Sse({"error": V + text, "error_type": "validation"})


def params(**p: Any) -> dict[str, Any]:
    return {"inputs": SHORT, "parameters": p}


def chat(**fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "Say hi"}], **fields}


def too_long(text: str, stream: bool = False) -> Callable[[Counter], Expect]:
    def expect(count: Counter) -> Expect:
        n = count(text)
        assert MAX_INPUT < n <= MAX_TOTAL, n  # past MAX_TOTAL, the total's error comes first (TGI's order)
        message = f"`inputs` must have less than {MAX_INPUT} tokens. Given: {n}"
        return sse_invalid(message) if stream else invalid(message)

    return expect


def too_many_new(text: str, max_new_tokens: int) -> Callable[[Counter], Expect]:
    def expect(count: Counter) -> Expect:
        return invalid(
            f"`inputs` tokens + `max_new_tokens` must be <= {MAX_TOTAL}. "
            f"Given: {count(text)} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
        )

    return expect


def _body_of_size(size: int) -> tuple[bytes, str]:
    """A valid GenerateRequest of exactly ``size`` bytes, and its ``inputs``."""
    skeleton = json.dumps({"inputs": "", "parameters": {"max_new_tokens": 1}}).encode()
    inputs = "x" * (size - len(skeleton))
    raw = json.dumps({"inputs": inputs, "parameters": {"max_new_tokens": 1}}).encode()
    assert len(raw) == size
    return raw, inputs


AT_LIMIT, AT_LIMIT_INPUTS = _body_of_size(PAYLOAD_LIMIT)
OVER_LIMIT, _ = _body_of_size(PAYLOAD_LIMIT + 1)
GEN, STREAM, CHAT, COMPL = "/generate", "/generate_stream", "/v1/chat/completions", "/v1/completions"

CASES = [
    # -- value validation, /generate, in TGI's words (422 JSON) -------------------------------------------
    Case("temperature 0", GEN, params(temperature=0), expect=invalid(POSITIVE % "temperature")),
    Case("temperature -1.5", GEN, params(temperature=-1.5), expect=invalid(POSITIVE % "temperature")),
    Case(
        "repetition_penalty 0",
        GEN,
        params(repetition_penalty=0),
        expect=invalid(POSITIVE % "repetition_penalty"),
    ),
    Case(
        "frequency_penalty 2.5",
        GEN,
        params(frequency_penalty=2.5),
        expect=invalid("`frequency_penalty` must be >= -2.0 and <= 2.0"),
    ),
    Case(
        "frequency_penalty -2.1",
        GEN,
        params(frequency_penalty=-2.1),
        expect=invalid("`frequency_penalty` must be >= -2.0 and <= 2.0"),
    ),
    Case("top_k 0", GEN, params(top_k=0), expect=invalid(POSITIVE % "top_k")),
    Case("top_k -5", GEN, params(top_k=-5), expect=invalid(POSITIVE % "top_k")),
    Case("top_p 1.0", GEN, params(top_p=1.0), expect=invalid(TOP_P)),
    Case("top_p 0", GEN, params(top_p=0), expect=invalid(TOP_P)),
    Case("typical_p 1.5", GEN, params(typical_p=1.5), expect=invalid("`typical_p` must be > 0.0 and < 1.0")),
    Case("typical_p 0", GEN, params(typical_p=0.0), expect=invalid("`typical_p` must be > 0.0 and < 1.0")),
    Case("max_new_tokens 0", GEN, params(max_new_tokens=0), expect=invalid(POSITIVE % "max_new_tokens")),
    Case(
        "5 stop sequences",
        GEN,
        params(stop=["a", "b", "c", "d", "e"]),
        expect=invalid("`stop` supports up to 4 stop sequences. Given: 5"),
    ),
    Case(
        "top_n_tokens 6",
        GEN,
        params(top_n_tokens=6),
        expect=invalid("`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
    ),
    Case(
        "truncate 0",
        GEN,
        params(truncate=0),
        expect=invalid(f"`truncate` must be strictly positive and less than {MAX_INPUT}. Given: 0"),
    ),
    Case(
        "truncate > max_input_tokens",
        GEN,
        params(truncate=MAX_INPUT + 1),
        expect=invalid(
            f"`truncate` must be strictly positive and less than {MAX_INPUT}. Given: {MAX_INPUT + 1}"
        ),
    ),
    Case("empty inputs", GEN, {"inputs": "", "parameters": {}}, expect=invalid("`inputs` cannot be empty")),
    Case("prompt too long", GEN, {"inputs": LONG_PROMPT, "parameters": {}}, expect=too_long(LONG_PROMPT)),
    # TGI checks the total first: a prompt past max_total_tokens gets the total's error, 0 new tokens
    Case(
        "prompt past max_total_tokens",
        GEN,
        {"inputs": OVER_TOTAL_PROMPT, "parameters": {}},
        expect=too_many_new(OVER_TOTAL_PROMPT, 0),
    ),
    Case(
        "truncated inputs + max_new_tokens > max_total",
        GEN,
        {"inputs": LONG_PROMPT, "parameters": {"truncate": 60, "max_new_tokens": 100}},
        expect=invalid(
            f"`inputs` tokens + `max_new_tokens` must be <= {MAX_TOTAL}. "
            "Given: 60 `inputs` tokens and 100 `max_new_tokens`"
        ),
    ),
    Case(
        "max_new_tokens 2000 (checked as the first 1024-token chunk)",
        GEN,
        params(max_new_tokens=2000),
        expect=too_many_new(SHORT, 2000),
    ),
    Case(
        "best_of 3",
        GEN,
        params(best_of=3, do_sample=True),
        expect=invalid("`best_of` must be > 0 and <= 2. Given: 3"),
    ),
    Case(
        "best_of without sampling",
        GEN,
        params(best_of=2),
        expect=invalid("you must use sampling when `best_of` is > 1"),
    ),
    Case(
        "seed with best_of",
        GEN,
        params(best_of=2, do_sample=True, seed=7),
        expect=invalid("`seed` must not be set when `best_of` > 1"),
    ),
    Case(
        "first failing check wins (temperature before top_k)",
        GEN,
        params(temperature=0, top_k=0, max_new_tokens=0),
        expect=invalid(POSITIVE % "temperature"),
    ),
    # grammar: checked last, as TGI (plus the engine's own check); disabled: test_structured_output_e2e.py
    Case(
        "grammar regex that does not compile",
        GEN,
        params(grammar={"type": "regex", "value": "[0-9"}),
        expect=invalid('grammar is not valid: at 1(8): invalid regex "[0-9" (in regex): regex parse error: '
                       "error: unclosed character class"),
    ),
    Case(
        "grammar json schema without properties",
        GEN,
        params(grammar={"type": "json", "value": {"type": "object"}}),
        expect=invalid("grammar is not valid: Grammar must have a 'properties' field"),
    ),
    # body exactly at the payload limit passes the limit and reaches validation
    Case(
        "body at the payload limit",
        GEN,
        raw=AT_LIMIT,
        expect=too_many_new(AT_LIMIT_INPUTS, 1),
    ),
    # -- wrong JSON types / shapes: axum's Json rejection, text/plain 422 ----------------------------------
    Case("missing inputs", GEN, {"parameters": {}}, expect=deser("missing field `inputs`")),
    Case(
        "inputs integer",
        GEN,
        {"inputs": 5},
        expect=deser("inputs: invalid type: integer `5`, expected a string"),
    ),
    Case("inputs null", GEN, {"inputs": None}, expect=deser("inputs: invalid type: null, expected a string")),
    Case(
        "body is an array",
        GEN,
        [{"inputs": SHORT}],
        expect=deser("invalid type: sequence, expected struct GenerateRequest"),
    ),
    Case(
        "max_new_tokens -1",
        GEN,
        params(max_new_tokens=-1),
        expect=deser("parameters.max_new_tokens: invalid value: integer `-1`, expected u32"),
    ),
    Case(
        "temperature string",
        GEN,
        params(temperature="hot"),
        expect=deser('parameters.temperature: invalid type: string "hot", expected f32'),
    ),
    Case(
        "do_sample null",
        GEN,
        params(do_sample=None),
        expect=deser("parameters.do_sample: invalid type: null, expected a boolean"),
    ),
    Case(
        "stop not a list",
        GEN,
        params(stop="x"),
        expect=deser('parameters.stop: invalid type: string "x", expected a sequence'),
    ),
    Case(
        "top_n_tokens float",
        GEN,
        params(top_n_tokens=1.5),
        expect=deser("parameters.top_n_tokens: invalid type: floating point `1.5`, expected u32"),
    ),
    Case(
        "seed -1",
        GEN,
        params(seed=-1),
        expect=deser("parameters.seed: invalid value: integer `-1`, expected u64"),
    ),
    Case(
        "parameters null",
        GEN,
        {"inputs": SHORT, "parameters": None},
        expect=deser("parameters: invalid type: null, expected struct GenerateParameters"),
    ),
    Case(
        "unknown grammar type",
        GEN,
        params(grammar={"type": "xml", "value": "x"}),
        expect=deser(
            "parameters.grammar: unknown variant `xml`, expected one of `json`, `json_object`, "
            "`regex`, `json_schema`"
        ),
    ),
    # -- framework-level: content type, JSON syntax, body size ---------------------------------------------
    Case("malformed JSON", GEN, raw=b'{"inputs": }', status=400, expect=Prefix(JSON_SYNTAX)),
    Case(
        "wrong content type",
        GEN,
        raw=b'{"inputs": "x"}',
        headers={**AUTH, "content-type": "text/plain"},
        status=415,
        expect=Text("Expected request with `Content-Type: application/json`"),
    ),
    Case(
        "no content type",
        GEN,
        raw=b'{"inputs": "x"}',
        headers={**AUTH, "content-type": ""},
        status=415,
        expect=Text("Expected request with `Content-Type: application/json`"),
    ),
    Case(
        "body one byte over the payload limit",
        GEN,
        raw=OVER_LIMIT,
        status=413,
        expect=Text("Failed to buffer the request body: length limit exceeded"),
    ),
    Case(
        "oversized body",
        GEN,
        {"inputs": "x" * (2 * PAYLOAD_LIMIT)},
        status=413,
        expect=Text("Failed to buffer the request body: length limit exceeded"),
    ),
    # -- API key: 401, empty body, before anything else ---------------------------------------------------
    Case("missing API key", GEN, params(), status=401, headers={}),
    Case("wrong API key", GEN, params(), status=401, headers={"Authorization": "Bearer nope"}),
    Case("key without Bearer", GEN, params(), status=401, headers={"Authorization": API_KEY}),
    Case("missing API key, stream (no SSE)", STREAM, params(), status=401, headers={}),
    Case("wrong API key, chat", CHAT, chat(), status=401, headers={"Authorization": "Bearer nope"}),
    Case("missing API key, tokenize", "/tokenize", {"inputs": SHORT}, status=401, headers={}),
    Case("missing API key beats 413", GEN, {"inputs": "x" * (2 * PAYLOAD_LIMIT)}, status=401, headers={}),
    Case("missing API key beats 415", GEN, raw=b"x", status=401, headers={"content-type": "text/plain"}),
    # -- /generate_stream: errors are ONE SSE event, HTTP 200 ------------------------------------------------
    Case(
        "stream with best_of",
        STREAM,
        params(best_of=2, do_sample=True),
        status=200,
        expect=sse_invalid("`best_of` != 1 is not supported when streaming tokens"),
    ),
    Case(
        "stream with decoder_input_details",
        STREAM,
        params(decoder_input_details=True),
        status=200,
        expect=sse_invalid("`decoder_input_details` == true is not supported when streaming tokens"),
    ),
    Case("stream top_k 0", STREAM, params(top_k=0), status=200, expect=sse_invalid(POSITIVE % "top_k")),
    Case(
        "stream top_n_tokens 6",
        STREAM,
        params(top_n_tokens=6),
        status=200,
        expect=sse_invalid("`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
    ),
    Case(
        "stream prompt too long",
        STREAM,
        {"inputs": LONG_PROMPT, "parameters": {}},
        status=200,
        expect=too_long(LONG_PROMPT, stream=True),
    ),
    Case(
        "stream missing inputs (framework error, no SSE)",
        STREAM,
        {"parameters": {}},
        expect=deser("missing field `inputs`"),
    ),
    # -- / (compat): JSON errors (not arrays), SSE when stream:true -----------------------------------------
    Case("compat top_k 0", "/", params(top_k=0), expect=invalid(POSITIVE % "top_k")),
    Case(
        "compat stream with best_of",
        "/",
        {**params(best_of=2, do_sample=True), "stream": True},
        status=200,
        expect=sse_invalid("`best_of` != 1 is not supported when streaming tokens"),
    ),
    Case(
        "compat stream not a bool",
        "/",
        {"inputs": SHORT, "stream": "yes"},
        expect=deser('stream: invalid type: string "yes", expected a boolean'),
    ),
    # -- /v1/completions ------------------------------------------------------------------------------------
    Case(
        "completions suffix",
        COMPL,
        {"prompt": SHORT, "suffix": "!"},
        expect=Json(
            {
                "error": "Suffix is not supported and can be achieved by preprocessing the prompt.",
                "error_type": "suffix not supported",
            }
        ),
    ),
    Case(
        "completions 5 prompts",
        COMPL,
        {"prompt": ["a", "b", "c", "d", "e"]},
        expect=Json(
            {
                "error": "Number of prompts exceeds the maximum allowed batch size of 4",
                "error_type": "batch size exceeded",
            }
        ),
    ),
    Case("completions top_p 1.5", COMPL, {"prompt": SHORT, "top_p": 1.5}, expect=invalid(TOP_P)),  # 1: off
    Case(
        "completions 5 stop sequences",
        COMPL,
        {"prompt": SHORT, "stop": ["a", "b", "c", "d", "e"]},
        expect=invalid("`stop` supports up to 4 stop sequences. Given: 5"),
    ),
    Case(
        "completions stream max_tokens 0",
        COMPL,
        {"prompt": SHORT, "max_tokens": 0, "stream": True},
        status=200,
        expect=OpenAISse(V + POSITIVE % "max_new_tokens"),
    ),
    Case("completions missing prompt", COMPL, {"max_tokens": 3}, expect=deser("missing field `prompt`")),
    # -- /v1/chat/completions -------------------------------------------------------------------------------
    Case("chat top_p 1.5", CHAT, chat(top_p=1.5), expect=invalid(TOP_P)),  # 1: OpenAI's off
    Case(
        "chat frequency_penalty 3",
        CHAT,
        chat(frequency_penalty=3),
        expect=invalid("`frequency_penalty` must be >= -2.0 and <= 2.0"),
    ),
    Case(
        "chat stream max_tokens 0",
        CHAT,
        chat(max_tokens=0, stream=True),
        status=200,
        expect=OpenAISse(V + POSITIVE % "max_new_tokens"),
    ),
    Case(
        "chat response_format (grammar) with a keyword the engine refuses",
        CHAT,
        chat(response_format={"type": "json", "value": {"properties": {"a": {"type": "string"}}, "not": {}}}),
        expect=invalid('grammar is not valid: Unimplemented keys: ["not"]'),
    ),
    Case("chat missing messages", CHAT, {"model": "tgi"}, expect=deser("missing field `messages`")),
    # -- /tokenize ------------------------------------------------------------------------------------------
    Case(
        "tokenize inputs integer",
        "/tokenize",
        {"inputs": 5},
        expect=deser("inputs: invalid type: integer `5`, expected a string"),
    ),
    Case("tokenize malformed JSON", "/tokenize", raw=b"{", status=400, expect=Prefix(JSON_SYNTAX)),
]


# ---- harness -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded() -> Iterator[Stack]:
    """One stack for the module: API key, small token limits and payload limit, default concurrency."""
    s = Stack(
        [
            "--num-blocks", "1024",
            "--api-key", API_KEY,
            "--max-input-tokens", str(MAX_INPUT),
            "--max-total-tokens", str(MAX_TOTAL),
            "--payload-limit", str(PAYLOAD_LIMIT),
        ]
    ).wait_healthy()
    yield s
    assert s.close() == 0, "the launcher did not shut down cleanly on SIGTERM"


@pytest.fixture(scope="module")
def http(guarded: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=guarded.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def count(http: httpx.Client) -> Counter:
    """Token count of a text as the server itself tokenizes it (``/tokenize``)."""

    def tokens(text: str) -> int:
        resp = http.post("/tokenize", json={"inputs": text}, headers=AUTH)
        assert resp.status_code == 200, resp.text
        return len(resp.json())

    return tokens


def send(http: httpx.Client, case: Case) -> httpx.Response:
    headers = {"content-type": "application/json", **case.headers}
    if headers["content-type"] == "":
        del headers["content-type"]
    content = case.raw if case.raw is not None else json.dumps(case.body).encode()
    return http.post(case.path, content=content, headers=headers)


def sse_events(resp: httpx.Response) -> list[str]:
    assert resp.headers["content-type"].startswith("text/event-stream"), resp.headers
    text = resp.text
    assert text.endswith("\n\n"), text
    return text[:-2].split("\n\n")


def check(case: Case, resp: httpx.Response, count: Counter) -> None:
    assert resp.status_code == case.status, (case.name, resp.status_code, resp.text)
    expect = case.expect if isinstance(case.expect, type) or not callable(case.expect) else case.expect(count)
    if expect is Empty:
        assert resp.content == b"", resp.text
    elif isinstance(expect, Json):
        assert resp.headers["content-type"] == "application/json"
        assert resp.json() == expect.body
    elif isinstance(expect, (Text, Prefix)):
        assert resp.headers["content-type"].startswith("text/plain"), resp.headers
        if isinstance(expect, Text):
            assert resp.text == expect.text
        else:
            assert resp.text.startswith(expect.text), resp.text
    elif isinstance(expect, Sse):
        events = sse_events(resp)
        assert len(events) == 1 and events[0].startswith("data:{"), events  # no space after "data:"
        assert json.loads(events[0][len("data:"):]) == expect.body
    elif isinstance(expect, OpenAISse):
        events = sse_events(resp)
        assert len(events) == 2 and events[0].startswith("data:") and events[1] == "data: [DONE]", events
        error = {"message": expect.message, "http_status_code": expect.http_status_code}
        assert json.loads(events[0][len("data:"):]) == {"error": error}
    else:  # pragma: no cover - a table typo
        raise AssertionError(f"unknown expectation {expect!r}")


def counts_as_validation(case: Case) -> bool:
    """Rejections TGI counts as ``tgi_request_failure{err="validation"}``: every JSON/SSE 422 of this table
    (the completions route counts its ``suffix`` and prompt-count errors as validation too)."""
    return case.status in (200, 422) and not isinstance(case.expect, (Prefix, Text))


def validation_failures(http: httpx.Client) -> float:
    try:
        return metric_value(http.get("/metrics").text, 'tgi_request_failure{err="validation"}')
    except KeyError:
        return 0.0


def greedy(http: httpx.Client) -> str:
    resp = http.post("/generate", json={"inputs": SHORT, "parameters": {"max_new_tokens": 6}}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    text = resp.json()["generated_text"]
    assert isinstance(text, str) and text
    return text


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_request(case: Case, http: httpx.Client, count: Counter) -> None:
    check(case, send(http, case), count)


def test_server_keeps_serving_and_counts_validation_failures(
    guarded: Stack, http: httpx.Client, count: Counter
) -> None:
    assert len(CASES) >= 35
    before_text = greedy(http)
    before = validation_failures(http)
    for case in CASES:
        check(case, send(http, case), count)
    expected = sum(counts_as_validation(c) for c in CASES)
    assert validation_failures(http) - before == expected
    metrics = http.get("/metrics").text
    labels = {
        line.split('err="', 1)[1].split('"', 1)[0]
        for line in metrics.splitlines()
        if line.startswith("tgi_request_failure{")
    }
    assert labels <= FAILURE_LABELS, labels
    # still serving: the same greedy text as before the table, health OK, key compare case-insensitive
    assert greedy(http) == before_text
    assert http.get("/health").status_code == 200
    upper = {"Authorization": f"BEARER {API_KEY.upper()}"}
    assert http.post("/tokenize", json={"inputs": SHORT}, headers=upper).status_code == 200
    assert guarded.process.proc.poll() is None
