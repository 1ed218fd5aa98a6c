"""The prompt scored on the OpenAI routes: completions' ``echo`` with ``logprobs`` (as lm-evaluation-harness
asks for loglikelihoods), vLLM's ``echo`` with ``max_tokens`` 0 and vLLM's ``prompt_logprobs``, over the
conftest's fake backend (its prefill tokens: logprob -1 and rank 1 each, the first none; position k's
alternatives the prompt's token k, then the ids after it, logprobs -1, -2, ...)."""

from __future__ import annotations

import json

import httpx
import pytest

from router_py.tests.conftest import FakeBackend

PROMPT = "the quick brown fox jumps over the lazy dog"


def _events(body: str) -> list[str]:
    return [line[len("data:"):].strip() for line in body.splitlines() if line.startswith("data:")]


@pytest.mark.parametrize("stream", [False, True])
async def test_completion_echo_with_logprobs_scores_the_prompt(
    client: httpx.AsyncClient, backend: FakeBackend, stream: bool
) -> None:
    """As lm-evaluation-harness asks for loglikelihoods: every prompt token's logprob (the first none) and
    alternatives, then the generated tokens'; offsets count the tokens' texts from 0."""
    body = {"prompt": PROMPT, "max_tokens": 2, "echo": True, "logprobs": 1, "stream": stream, "temperature": 0}
    r = await client.post("/v1/completions", json=body)
    assert backend.finished[-1].decoder_input_details  # the prompt's logprobs asked of the backend
    if stream:
        chunks = [json.loads(e)["choices"][0] for e in _events(r.text)[:-1]]
        lp = {k: [x for c in chunks for x in c["logprobs"][k]] for k in chunks[0]["logprobs"]}
        text = "".join(c["text"] for c in chunks)
    else:
        lp, text = r.json()["choices"][0]["logprobs"], r.json()["choices"][0]["text"]
    prompt_len = backend.finished[-1].input_length
    assert len(lp["tokens"]) == prompt_len + 2 and text.startswith(PROMPT)
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:prompt_len] == [-1.0] * (prompt_len - 1)
    assert all(len(top) == 1 and max(top.values()) == own
               for top, own in zip(lp["top_logprobs"][1:prompt_len], lp["token_logprobs"][1:prompt_len]))
    assert all(len(top) == 1 for top in lp["top_logprobs"][prompt_len:])  # the generated tokens' as before
    assert lp["text_offset"] == [sum(map(len, lp["tokens"][:i])) for i in range(len(lp["tokens"]))]


@pytest.mark.parametrize("stream", [False, True])
async def test_completion_echo_with_max_tokens_0_is_the_prompt_alone(
    client: httpx.AsyncClient, backend: FakeBackend, stream: bool
) -> None:
    """vLLM's scoring call: ``echo`` with ``max_tokens`` 0 answers the prompt (and its logprobs), nothing
    generated; without ``echo``, 0 stays TGI's 422."""
    body = {"prompt": PROMPT, "max_tokens": 0, "echo": True, "logprobs": 0, "stream": stream,
            "stream_options": {"include_usage": True} if stream else None}
    r = await client.post("/v1/completions", json=body)
    if stream:
        events = [json.loads(e) for e in _events(r.text)[:-1]]
        chunks, usage = [e["choices"][0] for e in events[:-1]], events[-1]["usage"]
        text, finish = "".join(c["text"] for c in chunks), chunks[-1]["finish_reason"]
        tokens = [t for c in chunks for t in c["logprobs"]["tokens"]]
    else:
        choice, usage = r.json()["choices"][0], r.json()["usage"]
        text, finish, tokens = choice["text"], choice["finish_reason"], choice["logprobs"]["tokens"]
    assert (text, finish, usage["completion_tokens"]) == (PROMPT, "length", 0)
    assert len(tokens) == usage["prompt_tokens"] == backend.finished[-1].input_length
    plain = await client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 0})
    assert plain.status_code == 422 and "max_new_tokens" in plain.json()["error"]


async def test_prompt_logprobs_are_vllms_list(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    body = {"prompt": PROMPT, "max_tokens": 2, "prompt_logprobs": 2, "logprobs": 1}
    choice = (await client.post("/v1/completions", json=body)).json()["choices"][0]
    ids = backend.finished[-1].input_ids
    assert backend.finished[-1].decoder_input_details and backend.finished[-1].top_n_tokens == 2
    assert choice["prompt_logprobs"] == [None] + [
        {str(i): {"logprob": -1.0, "rank": 1, "decoded_token": f" t{i}"},
         str(i + 1): {"logprob": -2.0, "rank": 2, "decoded_token": f" t{i + 1}"}}
        for i in ids[1:]
    ]
    assert all(len(top) == 1 for top in choice["logprobs"]["top_logprobs"])  # logprobs' 1, not 2
    plain = (await client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2})).json()["choices"][0]
    assert "prompt_logprobs" not in plain


async def test_prompt_logprobs_on_chat_are_the_responses(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 2, "prompt_logprobs": 0}
    out = (await client.post("/v1/chat/completions", json=body)).json()
    ids = backend.finished[-1].input_ids
    assert out["prompt_logprobs"] == [None] + [
        {str(i): {"logprob": -1.0, "rank": 1, "decoded_token": f" t{i}"}} for i in ids[1:]
    ]


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": PROMPT}), ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
])
@pytest.mark.parametrize("extra,message", [
    ({"prompt_logprobs": 1, "stream": True}, "`prompt_logprobs` are not available when `stream=True`"),
    ({"prompt_logprobs": -1}, "`prompt_logprobs` must be >= 0 and <= 5. Given: -1"),
    ({"prompt_logprobs": 6}, "`prompt_logprobs` must be >= 0 and <= 5. Given: 6"),
])
async def test_prompt_logprobs_out_of_range_or_streamed_is_a_422(
    client: httpx.AsyncClient, backend: FakeBackend, path: str, body: dict, extra: dict, message: str
) -> None:
    r = await client.post(path, json={**body, **extra})
    assert r.status_code == 422 and r.json() == {"error": f"Input validation error: {message}",
                                                 "error_type": "validation"}
    assert backend.finished == []
