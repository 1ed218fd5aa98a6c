"""``/v1/completions`` with token-id prompts (vLLM's and OpenAI's ``[1, 2, 3]`` and ``[[1, 2], [3, 4]]``): the
ids reach the backend exactly as given (no BOS added, never tokenized again, also in the rounds past 1,024 new
tokens), ``usage.prompt_tokens`` is their number, ``echo`` shows them decoded, and wrong ones are TGI's JSON
422. Before, any token-id prompt was the deserializer's text/plain 422."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from router_py.backend_api import ChooserParams, EndEvent, StoppingParams, ValidRequest
from router_py.tests.test_batcher import close, collect, drained, encode, make_stack, text_of

IDS = [5, 6, 7]


def _chunks(text: str) -> list[dict]:
    data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    assert data[-1] == "[DONE]", data
    return [json.loads(d) for d in data[:-1]]


async def test_token_ids_reach_the_backend_as_given(client: httpx.AsyncClient, backend, tokenizer) -> None:
    r = await client.post("/v1/completions", json={"prompt": IDS, "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200, r.text
    sent = backend.requests[0]
    assert sent.input_ids == tuple(IDS) and sent.ids_given and sent.add_special_tokens is False
    assert sent.inputs == tokenizer.decode(IDS, skip_special_tokens=False)
    body = r.json()
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert body["choices"][0]["text"] == " t5 t6"  # the fake backend's tokens are the prompt's ids


async def test_token_id_lists_are_one_prompt_each(client: httpx.AsyncClient, backend) -> None:
    r = await client.post("/v1/completions", json={"prompt": [[5, 6], [7, 8, 9]], "max_tokens": 1})
    assert r.status_code == 200, r.text
    assert sorted(req.input_ids for req in backend.requests) == [(5, 6), (7, 8, 9)]
    choices = r.json()["choices"]
    assert [(c["index"], c["text"]) for c in choices] == [(0, " t5"), (1, " t7")]
    assert r.json()["usage"]["prompt_tokens"] == 5


async def test_the_ids_of_a_text_prompt_are_served_as_that_prompt(
    client: httpx.AsyncClient, backend, tokenizer
) -> None:
    """The text prompt's own tokenization (BOS included) given as ids: the same ids reach the backend, so the
    same answer comes back."""
    ids = tokenizer.encode("hello world", add_special_tokens=True)
    as_text = (await client.post("/v1/completions", json={"prompt": "hello world", "max_tokens": 3})).json()
    as_ids = (await client.post("/v1/completions", json={"prompt": ids, "max_tokens": 3})).json()
    assert backend.requests[0].input_ids == backend.requests[1].input_ids == tuple(ids)
    assert as_ids["choices"] == as_text["choices"] and as_ids["usage"] == as_text["usage"]


async def test_echo_shows_the_ids_decoded(client: httpx.AsyncClient, tokenizer) -> None:
    ids = tokenizer.encode("hello world", add_special_tokens=True)
    decoded = tokenizer.decode(ids, skip_special_tokens=False)
    assert decoded == "<s>hello world"
    body = {"prompt": ids, "max_tokens": 2, "echo": True}
    whole = (await client.post("/v1/completions", json=body)).json()
    generated = "".join(f" t{i}" for i in ids[:2])
    assert whole["choices"][0]["text"] == decoded + generated
    chunks = _chunks((await client.post("/v1/completions", json={**body, "stream": True})).text)
    assert chunks[0]["choices"][0]["text"].startswith(decoded)
    assert "".join(c["choices"][0]["text"] for c in chunks) == decoded + generated


async def test_logprobs_of_a_token_prompt_start_at_the_generated_text(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/completions", json={"prompt": IDS, "max_tokens": 2, "logprobs": 1})
    assert r.json()["choices"][0]["logprobs"]["text_offset"] == [0, 3]


@pytest.mark.parametrize("prompt,message", [
    ([], "`prompt` cannot be empty"),
    ([[1, 2], []], "`prompt[1]` cannot be empty"),
    ([1, -2], "`prompt` token id -2 is out of the vocabulary (size 321)"),
    ([1, 321], "`prompt` token id 321 is out of the vocabulary (size 321)"),
    (["hello", 5], "`prompt` mixes strings and token ids"),
    ([[[1, 2]]], "`prompt[0][0]` is nested too deep"),
])
@pytest.mark.parametrize("stream", [False, True])
async def test_wrong_token_prompts_are_tgis_422_before_any_stream(
    client: httpx.AsyncClient, backend, tokenizer, prompt, message: str, stream: bool
) -> None:
    assert tokenizer.vocab_size == 321  # the conftest's tokenizer
    r = await client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 2, "stream": stream})
    assert r.status_code == 422 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["error_type"] == "validation"
    assert body["error"].startswith(f"Input validation error: {message}"), body
    assert backend.requests == []


async def test_a_too_long_token_prompt_gets_the_text_prompts_length_error(
    client: httpx.AsyncClient, tokenizer
) -> None:
    text = "hello world " * 40
    ids = tokenizer.encode(text, add_special_tokens=True)
    assert len(ids) > 64  # the conftest's max_input_tokens
    as_text = await client.post("/v1/completions", json={"prompt": text, "max_tokens": 2})
    as_ids = await client.post("/v1/completions", json={"prompt": ids, "max_tokens": 2})
    assert as_ids.status_code == as_text.status_code == 422
    assert as_ids.json() == as_text.json() == {
        "error": f"Input validation error: `inputs` must have less than 64 tokens. Given: {len(ids)}",
        "error_type": "validation",
    }


async def test_the_prompt_count_limit_counts_token_id_lists(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/completions", json={"prompt": [[1]] * 5})
    assert r.status_code == 422 and r.json()["error_type"] == "batch size exceeded"
    one = await client.post("/v1/completions", json={"prompt": [1] * 5, "max_tokens": 1})
    assert one.status_code == 200 and len(one.json()["choices"]) == 1  # one prompt of five ids


async def test_tgi_routes_still_take_only_text(client: httpx.AsyncClient) -> None:
    r = await client.post("/generate", json={"inputs": [1, 2, 3]})
    assert r.status_code == 422 and "invalid type: sequence, expected a string" in r.text


async def test_rounds_past_1024_tokens_keep_the_given_ids(tmp_path: Path) -> None:
    """A generation longer than one shard round continues from the client's ids plus the generated text's
    tokens; a text prompt's continuation tokenizes ``inputs + text`` again, which for decoded ids may not give
    the ids back."""
    s = await make_stack(tmp_path)
    try:
        ids = (11, 12, 13)
        req = ValidRequest(
            inputs="a b c", input_ids=ids, truncate=2000, sampling=ChooserParams(),
            stopping=StoppingParams(max_new_tokens=1030), add_special_tokens=False, ids_given=True,
        )
        events = await collect(s.batcher, req)
        assert isinstance(events[-1], EndEvent) and events[-1].generated_tokens == 1030
        first, second = s.shard.received[-2:]
        assert tuple(first.input_ids) == ids
        assert list(second.input_ids) == [*ids, *encode(text_of(events[:1024]), False)]
        await drained(s)
    finally:
        await close(s)
