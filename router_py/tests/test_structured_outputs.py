"""vLLM's ``structured_outputs`` on the OpenAI routes (router_py.http.structured_outputs): each served
constraint reaches the shard as a grammar, a choice is a regex matching exactly its strings, and what is not
served or is ambiguous is a 422 naming the field, before anything is generated."""

from __future__ import annotations

import json
import re

import pytest

from router_py.http.grammar import GRAMMAR_TYPE_JSON, GRAMMAR_TYPE_REGEX
from router_py.http.structured_outputs import structured_outputs_grammar
from router_py.tests.test_tools_and_grammar import CHAT, SCHEMA, WEATHER, ScriptedBackend, _client

ROUTES = [("/v1/chat/completions", CHAT), ("/v1/completions", {"prompt": "x"})]


@pytest.fixture
def scripted() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.mark.parametrize("path,body", ROUTES)
@pytest.mark.parametrize(
    "outputs,kind,expected",
    [
        ({"json": SCHEMA}, GRAMMAR_TYPE_JSON, SCHEMA),
        ({"json": json.dumps(SCHEMA)}, GRAMMAR_TYPE_JSON, SCHEMA),
        ({"json_object": True}, GRAMMAR_TYPE_JSON, {"type": "object"}),
        ({"regex": "[a-z]{3}", "disable_any_whitespace": False}, GRAMMAR_TYPE_REGEX, "[a-z]{3}"),
        ({"choice": ["yes", "no"]}, GRAMMAR_TYPE_REGEX, "(yes|no)"),
    ],
)
async def test_each_constraint_reaches_the_shard(scripted, tokenizer, path, body, outputs, kind, expected) -> None:
    async with _client(scripted, tokenizer) as client:
        resp = await client.post(path, json={**body, "structured_outputs": outputs})
    assert resp.status_code == 200, resp.text
    sampling = scripted.requests[0].sampling
    assert sampling.grammar_type == kind
    assert (json.loads(sampling.grammar) if kind == GRAMMAR_TYPE_JSON else sampling.grammar) == expected


def test_a_choice_matches_exactly_its_strings_metacharacters_included() -> None:
    choices = ["a.b", "(x|y)", "1+1=2", "$5 [net]", "back\\slash", "plain"]
    pattern = structured_outputs_grammar({"choice": choices})["value"]
    for text in choices:
        assert re.fullmatch(pattern, text)
    for text in ["axb", "x", "11=2", "plai", "plainplain", "back\\\\slash"]:
        assert not re.fullmatch(pattern, text), text


@pytest.mark.parametrize("path,body", ROUTES)
@pytest.mark.parametrize(
    "outputs,words",
    [
        ({}, "needs exactly one of json, regex, choice, json_object. Given: none"),
        ({"json": SCHEMA, "regex": "a"}, "Given: json, regex"),
        ({"grammar": "root ::= \"a\""}, "`structured_outputs.grammar` is not supported"),
        ({"structural_tag": "{}"}, "`structured_outputs.structural_tag` is not supported"),
        ({"choice": []}, "`structured_outputs.choice` must be a list of non-empty strings"),
        ({"choice": ["a", 3]}, "must be a list of non-empty strings"),
        ({"regex": 5}, "`structured_outputs.regex` must be a string"),
        ({"regex": "a", "disable_any_whitespace": True}, "`structured_outputs.disable_any_whitespace`"),
        ({"regex": "a", "colour": "red"}, "unknown fields: colour"),
        ({"regex": "(a"}, "grammar is not valid"),
    ],
)
async def test_what_is_not_served_is_a_clear_422(scripted, tokenizer, path, body, outputs, words) -> None:
    async with _client(scripted, tokenizer) as client:
        resp = await client.post(path, json={**body, "structured_outputs": outputs})
    assert resp.status_code == 422 and resp.json()["error_type"] == "validation", resp.text
    assert words in resp.json()["error"]
    assert scripted.requests == []


@pytest.mark.parametrize("extra", [
    {"response_format": {"type": "json_object"}},
    {"tools": [WEATHER]},
])
async def test_with_response_format_or_tools_is_a_422(scripted, tokenizer, extra) -> None:
    async with _client(scripted, tokenizer) as client:
        resp = await client.post("/v1/chat/completions", json={**CHAT, **extra, "structured_outputs": {"regex": "a"}})
        text_format = {**CHAT, "response_format": {"type": "text"}, "structured_outputs": {"regex": "a"}}
        ok = await client.post("/v1/chat/completions", json=text_format)
    assert resp.status_code == 422 and "cannot be used together" in resp.json()["error"]
    assert ok.status_code == 200
