"""Grammars on /generate and chat (response_format, tools): what reaches the backend, TGI's errors, and the
OpenAI bodies a tool-calling answer becomes (checked with the ``openai`` package's own response models)."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator

import httpx
import jsonschema
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from router_py.router_config import RouterConfig
from router_py.http.grammar import GRAMMAR_TYPE_JSON, GRAMMAR_TYPE_REGEX, objects_typed
from router_py.backend_api import EndEvent, InferEvent, Token, TokenEvent, ValidRequest
from router_py.metrics import Metrics
from router_py.http.server import create_app
from router_py.tests.conftest import FakeBackend
from router_py.http.tools import ToolStream, parse_output, plan_tools, template_messages

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


class ScriptedBackend(FakeBackend):
    """Answers every request with ``self.answer``, one token per 3 characters, then a special EOS token whose
    text is not part of the generated text (as the shard reports it)."""

    answer = '{"a": 1}'

    async def _events(self, request: ValidRequest) -> AsyncIterator[InferEvent]:
        pieces = [self.answer[i : i + 3] for i in range(0, len(self.answer), 3)]
        for n, piece in enumerate(pieces):
            yield TokenEvent(Token(n, piece, -0.1), [])
        yield EndEvent(
            Token(1, "</s>", -0.1, special=True),
            [],
            generated_text=self.answer,
            generated_tokens=len(pieces) + 1,
            finish_reason="eos_token",
        )


@pytest.fixture
def scripted() -> ScriptedBackend:
    return ScriptedBackend()


def _client(backend, tokenizer, **config) -> httpx.AsyncClient:
    cfg = RouterConfig(model_id="prism-test", max_input_tokens=1000, max_total_tokens=2000, **config)
    app = create_app(backend, tokenizer, cfg, Metrics(1000, 2000))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r")


def _events(text: str) -> list[dict]:
    chunks = text[:-2].split("\n\n")
    assert chunks[-1] == "data: [DONE]"
    return [json.loads(c[len("data:") :]) for c in chunks[:-1]]


# ---- /generate grammar -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "grammar,kind,text",
    [
        ({"type": "json", "value": SCHEMA}, GRAMMAR_TYPE_JSON, SCHEMA),
        ({"type": "json", "value": json.dumps(SCHEMA)}, GRAMMAR_TYPE_JSON, SCHEMA),
        ({"type": "json_object", "value": SCHEMA}, GRAMMAR_TYPE_JSON, SCHEMA),
        ({"type": "json_schema", "value": {"name": "x", "schema": SCHEMA}}, GRAMMAR_TYPE_JSON, SCHEMA),
        ({"type": "regex", "value": "[a-z]{3}"}, GRAMMAR_TYPE_REGEX, "[a-z]{3}"),
    ],
)
async def test_generate_grammar_reaches_the_shard_fields(scripted, tokenizer, grammar, kind, text) -> None:
    async with _client(scripted, tokenizer) as client:
        resp = await client.post("/generate", json={"inputs": "x", "parameters": {"grammar": grammar}})
    assert resp.status_code == 200, resp.text
    sampling = scripted.requests[0].sampling
    assert sampling.grammar_type == kind
    assert (json.loads(sampling.grammar) if kind == GRAMMAR_TYPE_JSON else sampling.grammar) == text


def test_untyped_schemas_with_properties_are_objects() -> None:
    untyped = {
        "properties": {
            "properties": {"properties": {"x": {"type": "string"}}},  # a property named "properties"
            "list": {"type": "array", "items": {"properties": {}}, "prefixItems": [{"properties": {}}]},
            "either": {"anyOf": [{"properties": {}}, {"type": "null"}]},
            "nullable": {"type": ["object", "null"], "properties": {}},
            "data": {"const": {"properties": {}}},
        },
        "$defs": {"d": {"properties": {}, "additionalProperties": {"properties": {}}}},
    }
    typed = objects_typed(untyped)
    assert typed["type"] == "object"
    props = typed["properties"]
    named_properties = props["properties"]
    assert named_properties["type"] == "object" and named_properties["properties"]["x"] == {"type": "string"}
    assert props["list"]["items"]["type"] == props["list"]["prefixItems"][0]["type"] == "object"
    assert props["either"]["anyOf"][0]["type"] == "object" and "type" not in props["either"]
    assert props["nullable"]["type"] == ["object", "null"]
    assert props["data"] == {"const": {"properties": {}}}  # data, not a schema
    assert typed["$defs"]["d"]["type"] == typed["$defs"]["d"]["additionalProperties"]["type"] == "object"
    assert "type" not in untyped  # the request's own dict is left as it came
    for bare in (7, "x", None, [1]):  # what the untyped schema admits, and the typed one does not
        jsonschema.validate(bare, {"properties": {"a": {"type": "integer"}}})
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bare, objects_typed({"properties": {"a": {"type": "integer"}}}))


async def test_tgi_docs_grammar_example_reaches_the_shard_as_an_object(scripted, tokenizer) -> None:
    schema = {"properties": {"location": {"type": "string"}}, "required": ["location"]}
    async with _client(scripted, tokenizer) as client:
        grammar = {"type": "json", "value": schema}
        resp = await client.post("/generate", json={"inputs": "x", "parameters": {"grammar": grammar}})
    assert resp.status_code == 200, resp.text
    assert json.loads(scripted.requests[0].sampling.grammar) == {**schema, "type": "object"}


@pytest.mark.parametrize("path", ["/generate", "/v1/chat/completions"])
async def test_disabled_grammar_support_is_tgis_error(scripted, tokenizer, path) -> None:
    body = (
        {"inputs": "x", "parameters": {"grammar": {"type": "regex", "value": "a"}}}
        if path == "/generate"
        else {**CHAT, "tools": [WEATHER], "tool_choice": "required"}
    )
    async with _client(scripted, tokenizer, disable_grammar_support=True) as client:
        resp = await client.post(path, json=body)
    assert resp.status_code == 422
    assert resp.json() == {
        "error": "Input validation error: grammar is not supported",
        "error_type": "validation",
    }


# ---- chat: response_format -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response_format,expected",
    [
        ({"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "strict": True}}, SCHEMA),
        ({"type": "json_object"}, {"type": "object"}),
        ({"type": "json", "value": SCHEMA}, SCHEMA),
    ],
)
async def test_response_format_becomes_a_json_grammar(scripted, tokenizer, response_format, expected) -> None:
    async with _client(scripted, tokenizer) as client:
        resp = await client.post("/v1/chat/completions", json={**CHAT, "response_format": response_format})
    ChatCompletion.model_validate(resp.json())
    assert resp.json()["choices"][0]["message"]["content"] == '{"a": 1}'
    assert json.loads(scripted.requests[0].sampling.grammar) == expected


@pytest.mark.parametrize(
    "response_format,kind,expected",
    [
        ({"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}, GRAMMAR_TYPE_JSON, SCHEMA),
        ({"type": "json_object"}, GRAMMAR_TYPE_JSON, {"type": "object"}),
        ({"type": "regex", "value": "[a-z]{3}"}, GRAMMAR_TYPE_REGEX, "[a-z]{3}"),
        ({"type": "text"}, 0, ""),
    ],
)
async def test_completions_response_format_is_a_grammar_too(
    scripted, tokenizer, response_format, kind, expected
) -> None:
    """vLLM serves ``response_format`` on /v1/completions too; ignored, the output would not follow it."""
    async with _client(scripted, tokenizer) as client:
        body = {"prompt": "x", "response_format": response_format}
        resp = await client.post("/v1/completions", json=body)
        assert resp.status_code == 200, resp.text
        bad = await client.post("/v1/completions", json={**body, "response_format": {"type": "yaml"}})
    sampling = scripted.requests[0].sampling
    assert sampling.grammar_type == kind
    assert (json.loads(sampling.grammar) if kind == GRAMMAR_TYPE_JSON else sampling.grammar) == expected
    assert bad.status_code == 422 and "`response_format` type `yaml`" in bad.json()["error"]


# ---- chat: tools -----------------------------------------------------------------------------------------

CALL = '{"function": {"_name": "get_weather", "city": "Paris}", "unit": "c"}}'


async def test_tool_call_non_streaming_as_openai_parses_it(scripted, tokenizer) -> None:
    scripted.answer = CALL
    async with _client(scripted, tokenizer) as client:
        resp = await client.post(
            "/v1/chat/completions", json={**CHAT, "tools": [WEATHER, TIME], "tool_choice": "required"}
        )
    completion = ChatCompletion.model_validate(resp.json())
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris}", "unit": "c"}
    request = scripted.requests[0]
    schema = json.loads(request.sampling.grammar)
    jsonschema.validate(json.loads(CALL), schema)
    assert "get_time" in json.dumps(schema) and "no_tool" not in json.dumps(schema)
    assert "get_weather" in request.inputs  # the template saw the tools


async def test_tool_call_streaming_deltas_concatenate_to_the_arguments(scripted, tokenizer) -> None:
    scripted.answer = CALL
    async with _client(scripted, tokenizer) as client:
        resp = await client.post(
            "/v1/chat/completions",
            json={
                **CHAT,
                "tools": [WEATHER],
                "stream": True,
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            },
        )
    chunks = [ChatCompletionChunk.model_validate(e) for e in _events(resp.text)]
    calls = [c for ch in chunks for c in (ch.choices[0].delta.tool_calls or [])]
    assert calls[0].id.startswith("call_") and calls[0].function.name == "get_weather"
    assert all(c.index == 0 for c in calls) and all(c.function.name is None for c in calls[1:])
    arguments = "".join(c.function.arguments or "" for c in calls)
    assert json.loads(arguments) == {"city": "Paris}", "unit": "c"}
    assert [ch.choices[0].finish_reason for ch in chunks][-1] == "tool_calls"
    assert all(ch.choices[0].finish_reason is None for ch in chunks[:-1])


async def test_tool_call_stream_accumulates_as_the_openai_stream_helper_does(scripted, tokenizer) -> None:
    """``client.chat.completions.stream`` folds the chunks with ChatCompletionStreamState, which concatenates
    strings: a role in every chunk made the message's role ``assistantassistant...``."""
    scripted.answer = CALL
    async with _client(scripted, tokenizer) as client:
        resp = await client.post(
            "/v1/chat/completions",
            json={**CHAT, "tools": [WEATHER], "tool_choice": "required", "stream": True},
        )
    state = ChatCompletionStreamState()
    for event in _events(resp.text):
        state.handle_chunk(ChatCompletionChunk.model_validate(event))
    choice = state.get_final_completion().choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "Paris}", "unit": "c"}


async def test_auto_may_answer_in_text(scripted, tokenizer) -> None:
    scripted.answer = '{"function": {"_name": "no_tool", "content": "Hello!"}}'
    async with _client(scripted, tokenizer) as client:
        plain = (await client.post("/v1/chat/completions", json={**CHAT, "tools": [WEATHER]})).json()
        stream = await client.post("/v1/chat/completions", json={**CHAT, "tools": [WEATHER], "stream": True})
    assert plain["choices"][0]["message"] == {"role": "assistant", "content": "Hello!"}
    assert plain["choices"][0]["finish_reason"] == "stop"
    chunks = [ChatCompletionChunk.model_validate(e) for e in _events(stream.text)]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello!"
    streamed = await _stream_text(scripted, tokenizer, {"type": "json_object"})
    assert streamed == scripted.answer  # the EOS token's text is not content
    assert "no_tool" in scripted.requests[0].sampling.grammar


async def _stream_text(backend, tokenizer, response_format) -> str:
    async with _client(backend, tokenizer) as client:
        resp = await client.post(
            "/v1/chat/completions", json={**CHAT, "stream": True, "response_format": response_format}
        )
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in _events(resp.text))


async def test_tool_errors(scripted, tokenizer) -> None:
    async with _client(scripted, tokenizer) as client:
        unknown = await client.post(
            "/v1/chat/completions",
            json={
                **CHAT,
                "tools": [WEATHER],
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
        )
        both = await client.post(
            "/v1/chat/completions",
            json={
                **CHAT,
                "tools": [WEATHER],
                "tool_choice": "required",
                "response_format": {"type": "json_object"},
            },
        )
        scripted.answer = '{"function": {"_name": "get_wea'  # cut by max_tokens
        cut = await client.post(
            "/v1/chat/completions", json={**CHAT, "tools": [WEATHER], "tool_choice": "required"}
        )
    assert unknown.status_code == 422
    assert unknown.json() == {
        "error": "Tool error: Tool with name nope not found",
        "error_type": "tool_error",
    }
    assert both.status_code == 422 and both.json()["error_type"] == "validation"
    assert cut.status_code == 422 and cut.json()["error_type"] == "tool_error"


def test_tool_schema_accepts_calls_and_nothing_else() -> None:
    plan = plan_tools([WEATHER, TIME], "auto", None, None)
    schema = plan.grammar["value"]
    for good in [
        CALL,
        '{"function": {"_name": "get_time"}}',
        '{"function": {"_name": "no_tool", "content": ""}}',
    ]:
        jsonschema.validate(json.loads(good), schema)
    for bad in [
        '{"function": {"_name": "get_time", "x": 1}}',
        '{"function": {"_name": "get_weather"}}',
        '{"function": {"_name": "other"}}',
        '{"function": {"_name": "get_weather", "city": 3}}',
    ]:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(json.loads(bad), schema)


@pytest.mark.parametrize("seed", range(20))
def test_tool_stream_any_chunking_gives_the_parsed_arguments(seed) -> None:
    rng = random.Random(seed)
    text = rng.choice(
        [CALL, '{"function": {"_name": "get_time"}}', '{"function": {"_name": "f", "a": {"b": "}}"}}}']
    )
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 12)))
    stream = ToolStream()
    deltas = []
    for piece in [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]:
        deltas += stream.push(piece)
    deltas += stream.finish()
    calls = [c for d in deltas for c in d["tool_calls"]]
    assert calls[0]["function"]["name"] == parse_output(text).calls[0]["function"]["name"]
    arguments = "".join(c["function"]["arguments"] for c in calls)
    assert json.loads(arguments) == json.loads(parse_output(text).calls[0]["function"]["arguments"])


def test_history_with_tool_calls_renders_for_plain_and_native_templates() -> None:
    history = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "12 C"},
    ]
    plain = template_messages(history, native_tool_calls=False)
    assert plain[1]["content"] == '{"function": {"_name": "get_weather", "city": "Oslo"}}'
    native = template_messages(history, native_tool_calls=True)
    assert (
        native[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"} and native[1]["content"] == ""
    )


async def test_history_with_tool_turns_goes_through_the_template(scripted, tokenizer) -> None:
    history = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "12 C"},
    ]
    async with _client(scripted, tokenizer) as client:
        resp = await client.post("/v1/chat/completions", json={"messages": history})
    assert resp.status_code == 200, resp.text
    assert '"_name": "get_weather", "city": "Oslo"' in scripted.requests[0].inputs
    assert "12 C" in scripted.requests[0].inputs


def test_text_answer_cut_by_max_tokens_keeps_its_content() -> None:
    cut = '{"function": {"_name": "no_tool", "content": "Hel\\u00e9lo\\u03'
    assert parse_output(cut).content == "Helélo"
    stream = ToolStream()
    assert stream.push('{"function": {"_name": "no_tool", "content": "Hi th') == []
    assert stream.finish() == [{"role": "assistant", "content": "Hi th"}]
