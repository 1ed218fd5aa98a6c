"""vLLM's ``stream_options.continuous_usage_stats`` on the OpenAI streams: with ``include_usage`` every chunk
carries ``usage``, the running counts of its prompt and choice (prompt tokens, tokens generated so far with
the chunk's own, their sum); the usage-only chunk before ``[DONE]`` still counts the whole request. Without it
(or without ``include_usage``, as in vLLM) nothing changes. Before, the flag was ignored."""

from __future__ import annotations

import json

import httpx
import pytest
from openai.types.chat import ChatCompletionChunk

from router_py.tests.test_tools_and_grammar import CALL, WEATHER, ScriptedBackend, _client

CHAT = {"messages": [{"role": "user", "content": "hello world"}]}
CONTINUOUS = {"include_usage": True, "continuous_usage_stats": True}


def _chunks(text: str) -> list[dict]:
    data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    assert data[-1] == "[DONE]", data
    return [json.loads(d) for d in data[:-1]]


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def test_every_completion_chunk_carries_the_running_usage(client: httpx.AsyncClient, backend) -> None:
    body = {"prompt": "hello world", "max_tokens": 4, "stream": True, "stream_options": CONTINUOUS}
    chunks = _chunks((await client.post("/v1/completions", json=body)).text)
    prompt = backend.requests[0].input_length
    *tokens, final = chunks
    assert [c["usage"] for c in tokens] == [_usage(prompt, n) for n in (1, 2, 3, 4)]
    assert final["choices"] == [] and final["usage"] == _usage(prompt, 4)


async def test_with_several_prompts_each_chunk_counts_its_own(client: httpx.AsyncClient, backend) -> None:
    """vLLM's completion_stream_generator: a chunk's usage is its prompt's tokens and its choice's tokens so
    far; the final chunk sums all prompts."""
    body = {"prompt": [[5, 6], [7, 8, 9]], "max_tokens": 2, "stream": True, "stream_options": CONTINUOUS}
    chunks = _chunks((await client.post("/v1/completions", json=body)).text)
    per_choice: dict[int, list] = {0: [], 1: []}  # NOTE: the prompts stream side by side, interleaved
    for c in chunks[:-1]:
        per_choice[c["choices"][0]["index"]].append(c["usage"])
    assert per_choice == {0: [_usage(2, 1), _usage(2, 2)], 1: [_usage(3, 1), _usage(3, 2)]}
    assert chunks[-1]["usage"] == _usage(5, 4)


async def test_echo_and_logprobs_chunks_carry_it_too(client: httpx.AsyncClient) -> None:
    body = {"prompt": [5, 6], "max_tokens": 2, "stream": True, "echo": True, "stream_options": CONTINUOUS}
    chunks = _chunks((await client.post("/v1/completions", json=body)).text)
    assert [c["usage"]["completion_tokens"] for c in chunks] == [1, 2, 2]
    body = {"prompt": [5, 6], "max_tokens": 2, "stream": True, "logprobs": 1, "stream_options": CONTINUOUS}
    chunks = _chunks((await client.post("/v1/completions", json=body)).text)
    assert [c["usage"]["completion_tokens"] for c in chunks] == [1, 2, 2]
    assert all(c["choices"][0]["logprobs"] for c in chunks[:-1])


@pytest.mark.parametrize("options", [None, {"include_usage": True}, {"continuous_usage_stats": True}])
async def test_without_the_flag_completion_chunks_have_no_usage(client: httpx.AsyncClient, options) -> None:
    body = {"prompt": "hello world", "max_tokens": 3, "stream": True, "stream_options": options}
    chunks = _chunks((await client.post("/v1/completions", json=body)).text)
    with_choices = [c for c in chunks if c["choices"]]
    assert len(with_choices) == 3 and all("usage" not in c for c in with_choices)
    assert len(chunks) == (4 if options == {"include_usage": True} else 3)


async def test_every_chat_chunk_carries_the_running_usage(client: httpx.AsyncClient, backend) -> None:
    body = {**CHAT, "max_tokens": 3, "stream": True, "stream_options": CONTINUOUS}
    chunks = _chunks((await client.post("/v1/chat/completions", json=body)).text)
    prompt = backend.requests[0].input_length
    assert [c["usage"] for c in chunks] == [_usage(prompt, n) for n in (1, 2, 3, 3)]
    assert chunks[-1]["choices"] == []
    for c in chunks:
        ChatCompletionChunk.model_validate(c)


@pytest.mark.parametrize("options", [None, {"include_usage": True}, {"continuous_usage_stats": True}])
async def test_without_the_flag_chat_chunks_have_null_usage(client: httpx.AsyncClient, options) -> None:
    body = {**CHAT, "max_tokens": 3, "stream": True, "stream_options": options}
    chunks = _chunks((await client.post("/v1/chat/completions", json=body)).text)
    assert [c["usage"] for c in chunks if c["choices"]] == [None] * 3


async def test_tool_call_chunks_carry_the_running_usage(tokenizer) -> None:
    scripted = ScriptedBackend()
    scripted.answer = CALL
    body = {**CHAT, "tools": [WEATHER], "tool_choice": "required", "stream": True,
            "stream_options": CONTINUOUS}
    async with _client(scripted, tokenizer) as client:
        chunks = _chunks((await client.post("/v1/chat/completions", json=body)).text)
    prompt = scripted.requests[0].input_length
    generated = [c["usage"]["completion_tokens"] for c in chunks[:-1]]
    assert generated == sorted(generated) and generated[-1] == scripted_tokens(CALL)
    assert all(c["usage"]["prompt_tokens"] == prompt for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == _usage(prompt, scripted_tokens(CALL))


def scripted_tokens(answer: str) -> int:
    """ScriptedBackend's tokens for ``answer``: one per 3 characters, then EOS."""
    return -(-len(answer) // 3) + 1
