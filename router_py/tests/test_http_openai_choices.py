"""OpenAI's ``n`` on ``/v1/completions`` and ``/v1/chat/completions`` (router_py.http.openai_choices): each
choice its own sequence, seeds ``seed + j``, indices over the prompts, the prompt counted once in usage,
streamed choices side by side; bad values are TGI-style 422s; a stream that fails or is left releases every
choice's request."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from router_py.tests.test_http_generate import serve_until_gone

CHAT = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 3}


def _events(text: str) -> list[str]:
    return [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]


def _chunks(text: str) -> list[dict]:
    events = _events(text)
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


async def test_completions_give_n_choices_per_prompt_indexed_over_the_prompts(client, backend) -> None:
    body = {"prompt": ["hello world", "the quick fox"], "max_tokens": 3, "n": 3, "seed": 40, "temperature": 0.7}
    r = await client.post("/v1/completions", json=body)
    assert r.status_code == 200
    out = r.json()
    assert [c["index"] for c in out["choices"]] == list(range(6))
    seeds = [q.sampling.seed for q in backend.requests]
    assert sorted(seeds) == [40, 40, 41, 41, 42, 42]
    one = (await client.post("/v1/completions", json={**body, "n": 1})).json()
    prompt_tokens = one["usage"]["prompt_tokens"]
    assert out["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 18,
                            "total_tokens": prompt_tokens + 18}


async def test_a_seed_makes_choices_reproducible_and_unseeded_ones_differ(client, backend) -> None:
    body = {"prompt": "hello world", "max_tokens": 3, "n": 2, "logprobs": 0, "temperature": 0.9}
    seeded = [(await client.post("/v1/completions", json={**body, "seed": 7})).json() for _ in range(2)]
    assert seeded[0]["choices"] == seeded[1]["choices"]
    backend.requests.clear()
    await client.post("/v1/completions", json=body)
    assert len({q.sampling.seed for q in backend.requests}) == 2


async def test_the_largest_seed_wraps_around(client, backend) -> None:
    body = {"prompt": "hello", "max_tokens": 1, "n": 2, "seed": 2**64 - 1, "temperature": 0.5}
    assert (await client.post("/v1/completions", json=body)).status_code == 200
    assert sorted(q.sampling.seed for q in backend.requests) == [0, 2**64 - 1]


async def test_greedy_choices_are_equal(client) -> None:
    out = (await client.post("/v1/chat/completions", json={**CHAT, "n": 2, "temperature": 0})).json()
    first, second = (c["message"]["content"] for c in out["choices"])
    assert first == second and first


async def test_chat_gives_n_choices_and_counts_the_prompt_once(client) -> None:
    one = (await client.post("/v1/chat/completions", json=CHAT)).json()
    out = (await client.post("/v1/chat/completions", json={**CHAT, "n": 3})).json()
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert all(c["message"]["role"] == "assistant" and c["finish_reason"] for c in out["choices"])
    prompt_tokens = one["usage"]["prompt_tokens"]
    assert out["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 9,
                            "total_tokens": prompt_tokens + 9}


async def test_only_the_first_choice_keeps_the_session(client, backend) -> None:
    r = await client.post("/v1/chat/completions", json={**CHAT, "n": 3}, headers={"x-session-id": "s1"})
    assert r.status_code == 200
    assert sorted(q.session or "" for q in backend.requests) == ["", "", "s1"]


async def test_streamed_completion_choices_match_the_whole_answer(client) -> None:
    body = {"prompt": ["hello world", "the quick fox"], "max_tokens": 4, "n": 2, "seed": 3, "temperature": 0.8}
    whole = (await client.post("/v1/completions", json=body)).json()
    r = await client.post("/v1/completions", json={**body, "stream": True,
                                                    "stream_options": {"include_usage": True}})
    chunks = _chunks(r.text)
    texts: dict[int, str] = defaultdict(str)
    finishes: dict[int, list] = defaultdict(list)
    for chunk in chunks[:-1]:
        (choice,) = chunk["choices"]
        texts[choice["index"]] += choice["text"]
        if choice["finish_reason"]:
            finishes[choice["index"]].append(choice["finish_reason"])
    assert {i: texts[i] for i in range(4)} == {c["index"]: c["text"] for c in whole["choices"]}
    assert all(len(finishes[i]) == 1 for i in range(4))
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


async def test_streamed_chat_choices_each_start_with_the_role(client) -> None:
    body = {**CHAT, "n": 2, "seed": 5, "stream": True, "stream_options": {"include_usage": True}}
    chunks = _chunks((await client.post("/v1/chat/completions", json=body)).text)
    by_index: dict[int, list[dict]] = defaultdict(list)
    for chunk in chunks[:-1]:
        (choice,) = chunk["choices"]
        by_index[choice["index"]].append(choice)
    assert sorted(by_index) == [0, 1]
    for choices in by_index.values():
        assert [("role" in c["delta"]) for c in choices] == [True] + [False] * (len(choices) - 1)
        assert choices[-1]["finish_reason"] and not any(c["finish_reason"] for c in choices[:-1])
    assert chunks[-1]["usage"]["completion_tokens"] == 6


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": "hello", "max_tokens": 2}),
    ("/v1/chat/completions", CHAT),
])
async def test_n_below_one_or_above_the_permits_is_a_clear_422(client, backend, path: str, body: dict) -> None:
    r = await client.post(path, json={**body, "n": 0})
    assert r.status_code == 422
    assert r.json() == {"error": "Input validation error: `n` must be at least 1. Given: 0", "error_type": "validation"}
    r = await client.post(path, json={**body, "n": 129})
    assert r.status_code == 422 and "max_concurrent_requests (128)" in r.json()["error"]
    assert backend.requests == []
    for n in (1, None):
        ok = await client.post(path, json={**body, "n": n})
        assert ok.status_code == 200 and len(ok.json()["choices"]) == 1


async def test_completions_count_the_prompts_times_n_against_the_permits(client) -> None:
    r = await client.post("/v1/completions", json={"prompt": ["a", "b"], "max_tokens": 1, "n": 65})
    assert r.status_code == 422 and "Given: 65 x 2" in r.json()["error"]


async def test_a_failing_stream_ends_every_choice_with_one_error(app, client, backend) -> None:
    """The first failure ends the call: choices not yet at the backend never get there, the others are
    closed, and every permit is back."""
    body = {"prompt": "FAIL now", "max_tokens": 3, "n": 3, "stream": True}
    events = _events((await client.post("/v1/completions", json=body)).text)
    errors = [e for e in events if e != "[DONE]" and "error" in json.loads(e)]
    assert len(errors) == 1 and events[-1] == "[DONE]"
    assert backend.finished == [] and len(backend.requests) >= 1
    assert {id(r) for r in backend.closed} == {id(r) for r in backend.requests}
    assert app.state.prism.permits.in_use == 0


async def test_a_client_leaving_a_stream_releases_every_choice(app, backend) -> None:
    seen: set[int] = set()

    def every_choice_seen(chunk: bytes) -> bool:
        for event in _events(chunk.decode()):
            seen.update(c["index"] for c in json.loads(event)["choices"])
        return len(seen) == 3  # the client leaves once every choice has streamed its first token

    body = {"prompt": "SLOW please", "max_tokens": 5, "n": 3, "stream": True}
    await serve_until_gone(app, "/v1/completions", body, every_choice_seen)
    assert len(backend.requests) == 3 and backend.finished == []
    assert {id(r) for r in backend.closed} == {id(r) for r in backend.requests}  # NOTE: in any order
    assert app.state.prism.permits.in_use == 0
