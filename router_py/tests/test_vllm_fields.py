"""vLLM's request fields on the OpenAI routes that TGI would ignore: the older ``guided_*`` fields become
``structured_outputs``; the fields not served here are accepted at vLLM's defaults and a 422 naming them
otherwise (router_py.http.vllm_unserved), before anything reaches the backend."""

from __future__ import annotations

import json

import pytest

from router_py.http.grammar import GRAMMAR_TYPE_REGEX
from router_py.tests.test_tools_and_grammar import CHAT, ScriptedBackend, _client

ROUTES = [("/v1/chat/completions", CHAT), ("/v1/completions", {"prompt": "x"})]


@pytest.fixture
def scripted() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.mark.parametrize("path,body", ROUTES)
async def test_guided_fields_are_structured_outputs(scripted, tokenizer, path, body) -> None:
    async with _client(scripted, tokenizer) as client:
        ok = await client.post(path, json={**body, "guided_choice": ["a", "b"], "guided_decoding_backend": "xgrammar"})
        both = await client.post(path, json={**body, "guided_regex": "a", "structured_outputs": {"regex": "b"}})
        grammar = await client.post(path, json={**body, "guided_grammar": "root ::= x"})
    assert ok.status_code == 200, ok.text
    sampling = scripted.requests[0].sampling
    assert (sampling.grammar_type, sampling.grammar) == (GRAMMAR_TYPE_REGEX, "(a|b)")
    assert both.status_code == 422 and "cannot be used together" in both.json()["error"]
    assert grammar.status_code == 422 and "`structured_outputs.grammar` is not supported" in grammar.json()["error"]


DEFAULTS = {"use_beam_search": False, "length_penalty": 1, "skip_special_tokens": True, "priority": 0,
            "spaces_between_special_tokens": True, "include_stop_str_in_output": False, "bad_words": [],
            "prompt_logprobs": None, "allowed_token_ids": None, "return_tokens_as_token_ids": False,
            "truncate_prompt_tokens": None}


@pytest.mark.parametrize("path,body", ROUTES)
async def test_defaults_are_accepted(scripted, tokenizer, path, body) -> None:
    extra = {"echo": False} if "messages" in body else {}
    async with _client(scripted, tokenizer) as client:
        r = await client.post(path, json={**body, **DEFAULTS, **extra})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path,body", ROUTES)
@pytest.mark.parametrize("field,value", [
    ("use_beam_search", True), ("length_penalty", 0.5), ("allowed_token_ids", [1, 2]),
    ("bad_words", ["x"]), ("priority", 1),
    ("priority", True), ("logits_processors", ["mod.fn"]), ("truncate_prompt_tokens", 512),
])
async def test_other_values_are_a_422_naming_the_field(scripted, tokenizer, path, body, field, value) -> None:
    async with _client(scripted, tokenizer) as client:
        r = await client.post(path, json={**body, field: value})
    assert r.status_code == 422, r.text
    assert r.json() == {"error": f"Input validation error: `{field}` is not supported (vLLM's field; given: "
                                 f"{json.dumps(value)})", "error_type": "validation"}
    assert scripted.requests == []


async def test_route_specific_fields(scripted, tokenizer) -> None:
    async with _client(scripted, tokenizer) as client:
        chat_echo = await client.post("/v1/chat/completions", json={**CHAT, "echo": True})
        completion_echo = await client.post("/v1/completions", json={"prompt": "x", "echo": True})
        embeds = await client.post("/v1/completions", json={"prompt": "x", "prompt_embeds": "AAAA"})
    assert chat_echo.status_code == 422 and "`echo` is not supported" in chat_echo.json()["error"]
    assert completion_echo.status_code == 200  # served on completions (the prompt before the text)
    assert embeds.status_code == 422 and "`prompt_embeds`" in embeds.json()["error"]
