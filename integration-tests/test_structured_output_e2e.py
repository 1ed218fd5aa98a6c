"""Structured output end to end on the launched demo stack (random weights: only the grammar makes the output
valid). The ``openai`` client's tools / tool_choice / response_format, streaming and not; the
``text-generation``
client's JSON and regex grammars; a grammar request's prompt still hits the prefix cache; a grammar the engine
refuses is a 422 for that request only."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest
from text_generation import Client
from text_generation.errors import ValidationError
from text_generation.types import Grammar, GrammarType

from conftest import Stack

WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 8},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TIME_PARAMS = {
    "type": "object",
    "properties": {"zone": {"enum": ["UTC", "CET", "PST"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather forecast", "parameters": WEATHER_PARAMS},
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "Current time", "parameters": TIME_PARAMS},
    },
]
PARAMS = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"enum": ["yes", "no"]},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
    },
    "required": ["answer", "confidence", "tags"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris for the next three days?"}]
SEEDS = range(4)


@pytest.fixture(scope="module")
def oai(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="-", timeout=300)


def _check_call(name: str, arguments: str) -> None:
    jsonschema.validate(json.loads(arguments), PARAMS[name])


@pytest.mark.parametrize("seed", SEEDS)
def test_openai_tools_required(oai: openai.OpenAI, seed: int) -> None:
    r = oai.chat.completions.create(
        model="tgi", messages=MESSAGES, tools=TOOLS, tool_choice="required", seed=seed, max_tokens=300
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id
    _check_call(call.function.name, call.function.arguments)


@pytest.mark.parametrize("seed", SEEDS)
def test_openai_tools_streaming(oai: openai.OpenAI, seed: int) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}} if seed % 2 else "required"
    stream = oai.chat.completions.create(
        model="tgi",
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice=choice,
        seed=seed,
        max_tokens=300,
        stream=True,
    )
    name, arguments, ids, finish = None, "", set(), []
    for chunk in stream:
        delta = chunk.choices[0].delta
        finish.append(chunk.choices[0].finish_reason)
        for call in delta.tool_calls or []:
            assert call.index == 0
            ids.add(call.id) if call.id else None
            name = call.function.name or name
            arguments += call.function.arguments or ""
    assert finish[-1] == "tool_calls" and all(f is None for f in finish[:-1])
    assert len(ids) == 1 and (name == "get_weather" or seed % 2 == 0)
    _check_call(name, arguments)


def test_openai_tools_auto_and_none(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model="tgi", messages=MESSAGES, tools=TOOLS, seed=1, max_tokens=300)
    message = r.choices[0].message
    if message.tool_calls:
        _check_call(message.tool_calls[0].function.name, message.tool_calls[0].function.arguments)
        assert r.choices[0].finish_reason == "tool_calls"
    else:  # a text answer (random weights: usually cut by max_tokens)
        assert isinstance(message.content, str) and r.choices[0].finish_reason in ("length", "stop")
    plain = oai.chat.completions.create(
        model="tgi", messages=MESSAGES, tools=TOOLS, tool_choice="none", max_tokens=5
    )
    assert plain.choices[0].message.tool_calls is None and plain.choices[0].finish_reason in (
        "length",
        "stop",
    )


def test_openai_tool_results_in_history(oai: openai.OpenAI) -> None:
    first = oai.chat.completions.create(
        model="tgi", messages=MESSAGES, tools=TOOLS, tool_choice="required", seed=3, max_tokens=300
    )
    call = first.choices[0].message.tool_calls[0]
    history = [
        *MESSAGES,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
    ]
    second = oai.chat.completions.create(model="tgi", messages=history, max_tokens=4)
    assert second.choices[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_openai_response_format_json_schema(oai: openai.OpenAI, seed: int, stream: bool) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA, "strict": True}}
    r = oai.chat.completions.create(
        model="tgi", messages=MESSAGES, response_format=fmt, seed=seed, max_tokens=300, stream=stream
    )
    if stream:
        chunks = list(r)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = chunks[-1].choices[0].finish_reason
    else:
        text, finish = r.choices[0].message.content, r.choices[0].finish_reason
    assert finish == "stop", text
    jsonschema.validate(json.loads(text), ANSWER_SCHEMA)


@pytest.fixture(scope="module")
def tgi(stack: Stack) -> Client:
    return Client(stack.url, timeout=300)


@pytest.mark.parametrize("seed", SEEDS)
def test_text_generation_json_grammar(tgi: Client, seed: int) -> None:
    grammar = Grammar(type=GrammarType.Json, value=ANSWER_SCHEMA)
    r = tgi.generate("Answer:", max_new_tokens=300, do_sample=True, seed=seed, grammar=grammar)
    assert r.details.finish_reason == "eos_token", r.generated_text
    jsonschema.validate(json.loads(r.generated_text), ANSWER_SCHEMA)
    text = "".join(
        s.token.text
        for s in tgi.generate_stream(
            "Answer:", max_new_tokens=300, do_sample=True, seed=seed, grammar=grammar
        )
        if not s.token.special
    )
    assert text == r.generated_text


@pytest.mark.parametrize("seed", range(2))
def test_schema_without_type_is_an_object(tgi: Client, seed: int) -> None:
    """TGI's own grammar example gives ``properties`` and no ``type``; outlines, behind TGI, makes it an
    object, while plain JSON Schema would also admit a bare number or string."""
    untyped = {key: value for key, value in ANSWER_SCHEMA.items() if key != "type"}
    grammar = Grammar(type=GrammarType.Json, value=untyped)
    r = tgi.generate("Answer:", max_new_tokens=300, do_sample=True, seed=seed, grammar=grammar)
    assert r.details.finish_reason == "eos_token", r.generated_text
    jsonschema.validate(json.loads(r.generated_text), ANSWER_SCHEMA)


@pytest.mark.parametrize("seed", SEEDS)
def test_text_generation_regex_grammar(tgi: Client, seed: int) -> None:
    regex = r"(19|20)[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9] (sunny|rainy)"
    r = tgi.generate(
        "Date:",
        max_new_tokens=60,
        do_sample=True,
        seed=seed,
        grammar=Grammar(type=GrammarType.Regex, value=regex),
    )
    assert re.fullmatch(regex, r.generated_text), r.generated_text
    assert r.details.finish_reason == "eos_token"


def test_bad_grammar_is_refused_alone(tgi: Client) -> None:
    bad = Grammar(type=GrammarType.Json, value={"properties": {"a": {"type": "integer"}}, "not": {}})
    with ThreadPoolExecutor(2) as pool:
        good = pool.submit(tgi.generate, "Hello", max_new_tokens=5)
        with pytest.raises(ValidationError, match="grammar is not valid"):
            tgi.generate("Hello", max_new_tokens=5, grammar=bad)
        assert good.result().details.generated_tokens == 5


def test_grammar_request_prompt_hits_the_prefix_cache(stack: Stack) -> None:
    words = " ".join(f"record{i % 89} field{i * 17 % 83}" for i in range(300))
    grammar = {"type": "json", "value": ANSWER_SCHEMA}
    body = {
        "inputs": words,
        "parameters": {"max_new_tokens": 300, "grammar": grammar, "seed": 5, "do_sample": True},
    }
    first = httpx.post(f"{stack.url}/generate", json=body, timeout=300).json()
    hits = stack.metric("prism_prefix_cache_hit_tokens")
    second = httpx.post(f"{stack.url}/generate", json=body, timeout=300).json()
    assert stack.metric("prism_prefix_cache_hit_tokens") - hits >= 256  # the prompt's full blocks, reused
    assert second["generated_text"] == first["generated_text"]  # same seed, cached prefix: same output
    jsonschema.validate(json.loads(first["generated_text"]), ANSWER_SCHEMA)


def test_disable_grammar_support_env_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    """TGI's env twin of --disable-grammar-support: every grammar, response format and tool call is
    refused."""
    monkeypatch.setenv("DISABLE_GRAMMAR_SUPPORT", "1")
    stack = Stack(["--num-blocks", "1024"]).wait_healthy()
    try:
        expected = {"error": "Input validation error: grammar is not supported", "error_type": "validation"}
        gen = httpx.post(
            f"{stack.url}/generate",
            timeout=60,
            json={"inputs": "x", "parameters": {"grammar": {"type": "regex", "value": "a+"}}},
        )
        chat = httpx.post(
            f"{stack.url}/v1/chat/completions",
            timeout=60,
            json={"messages": MESSAGES, "tools": TOOLS, "tool_choice": "required"},
        )
        assert (gen.status_code, gen.json()) == (422, expected)
        assert (chat.status_code, chat.json()) == (422, expected)
        assert (
            httpx.post(
                f"{stack.url}/generate", timeout=60, json={"inputs": "x", "parameters": {"max_new_tokens": 2}}
            ).status_code
            == 200
        )
    finally:
        assert stack.close() == 0


@pytest.mark.parametrize("seed", [1, 2])
def test_vllm_structured_outputs(oai: openai.OpenAI, seed: int) -> None:
    """vLLM's ``structured_outputs`` (``extra_body``, as a vLLM client sends it): a choice is one of its
    strings, a regex matches whole, a JSON schema validates, on chat and completions, streamed or not."""
    kw = dict(model="tgi", max_tokens=40, temperature=1.0, seed=seed)
    choices = ["yes", "no (never)", "maybe?"]
    chat = oai.chat.completions.create(messages=MESSAGES, extra_body={"structured_outputs": {"choice": choices}}, **kw)
    assert chat.choices[0].message.content in choices
    regex = r"[a-z]{3}-[0-9]{2}"
    comp = oai.completions.create(prompt="Code:", extra_body={"structured_outputs": {"regex": regex}}, **kw)
    assert re.fullmatch(regex, comp.choices[0].text)
    as_json = {"structured_outputs": {"json": ANSWER_SCHEMA}}
    stream = oai.completions.create(prompt="Answer:", stream=True, extra_body=as_json, **{**kw, "max_tokens": 300})
    text = "".join(c.choices[0].text for c in stream if c.choices)
    jsonschema.validate(json.loads(text), ANSWER_SCHEMA)
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        oai.completions.create(prompt="x", extra_body={"structured_outputs": {"grammar": "root ::= \"a\""}}, **kw)
    assert "`structured_outputs.grammar` is not supported" in refused.value.response.json()["error"]
