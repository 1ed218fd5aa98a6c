"""vLLM's sampling fields on the OpenAI routes (``min_tokens``, ``stop_token_ids``, ``min_p``,
``logit_bias``): they reach the backend and the shard (they were ignored silently), and bad values are TGI's
422 validation error before any stream starts; an empty chat ``messages`` is a 422 too (it was templated into
a prompt of no message)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx
import pytest

from router_py.backend_api import ChooserParams, StoppingParams
from router_py.tests.test_batcher import close, collect, make_stack, request

ROUTES = [
    ("/v1/completions", {"prompt": "hello", "max_tokens": 4}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}),
]
FIELDS = {"min_tokens": 2, "stop_token_ids": [7, 9, 7], "min_p": 0.25, "logit_bias": {"5": 10, "6": -100.0}}


@pytest.mark.parametrize("path,body", ROUTES)
async def test_vllm_sampling_fields_reach_the_backend(
    client: httpx.AsyncClient, backend, path: str, body: dict
) -> None:
    assert (await client.post(path, json={**body, **FIELDS})).status_code == 200
    sent = backend.requests[-1]
    assert sent.sampling.min_p == 0.25
    assert sent.sampling.logit_bias == ((5, 10.0), (6, -100.0))
    assert sent.stopping.min_tokens == 2
    assert sent.stopping.stop_token_ids == (7, 9)  # duplicates dropped, as vLLM
    assert (await client.post(path, json={**body, **{k: None for k in FIELDS}})).status_code == 200
    off = backend.requests[-1]
    assert (off.sampling.min_p, off.sampling.logit_bias) == (0.0, ())
    assert (off.stopping.min_tokens, off.stopping.stop_token_ids) == (0, ())


@pytest.mark.parametrize("path,body", ROUTES)
async def test_temperature_zero_stays_greedy_with_top_k(client: httpx.AsyncClient, backend, path: str,
                                                         body: dict) -> None:
    """vLLM's temperature 0 is greedy whatever its top_k (vLLM resets it); a top_k sent on to the shard made
    the request sample there (TGI's rule: any warper samples), so ``temperature: 0, top_k: 20`` gave random
    text, another text per seed. TGI's own fields keep TGI's meaning."""
    greedy = {**body, "temperature": 0, "top_k": 20, "seed": 3}
    assert (await client.post(path, json=greedy)).status_code == 200
    sent = backend.requests[-1].sampling
    assert (sent.do_sample, sent.top_k) == (False, 0)
    assert (await client.post(path, json={**body, "temperature": 0.5, "top_k": 20})).status_code == 200
    assert backend.requests[-1].sampling.top_k == 20


BAD = [
    ({"min_tokens": -1}, "`min_tokens` must be >= 0. Given: -1"),
    ({"min_tokens": 5}, "`min_tokens` must be <= `max_tokens` (4). Given: 5"),
    ({"min_tokens": 2**32, "max_tokens": None}, "`min_tokens` must be <= 4294967295. Given: 4294967296"),
    ({"min_p": 1.5}, "`min_p` must be >= 0.0 and <= 1.0. Given: 1.5"),
    ({"min_p": -0.1}, "`min_p` must be >= 0.0 and <= 1.0. Given: -0.1"),
    ({"stop_token_ids": [3, -2]}, "`stop_token_ids` must be token ids (integers >= 0). Given: -2"),
    ({"logit_bias": {"abc": 1}}, "`logit_bias` keys must be token ids (integers >= 0). Given: 'abc'"),
    ({"logit_bias": {"-1": 1}}, "`logit_bias` keys must be token ids (integers >= 0). Given: '-1'"),
    ({"logit_bias": {"1.0": 1}}, "`logit_bias` keys must be token ids (integers >= 0). Given: '1.0'"),
    ({"logit_bias": {" 1": 1}}, "`logit_bias` keys must be token ids (integers >= 0). Given: ' 1'"),
    ({"logit_bias": {"5": 101}}, "`logit_bias` values must be >= -100 and <= 100. Given: 101 for token 5"),
    ({"logit_bias": {"5": -100.5}}, "`logit_bias` values must be >= -100 and <= 100. Given: -100.5"),
    ({"logit_bias": {"5": "x"}}, "`logit_bias` values must be numbers. Given: 'x' for token 5"),
    ({"logit_bias": {"5": True}}, "`logit_bias` values must be numbers. Given: True for token 5"),
    ({"logit_bias": {"99999": 1}}, "`logit_bias` token id 99999 is out of the vocabulary (size "),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path,body", ROUTES)
@pytest.mark.parametrize("bad,message", BAD)
async def test_bad_vllm_sampling_values_are_tgi_validation_errors(
    client: httpx.AsyncClient, backend, path: str, body: dict, bad: dict, message: str, stream: bool
) -> None:
    """A 422 in TGI's format, before a stream starts (not an error event inside it), and nothing queued."""
    queued = len(backend.requests)
    r = await client.post(path, json={**body, **bad, "stream": stream})
    assert r.status_code == 422, r.text
    assert r.json()["error_type"] == "validation"
    assert r.json()["error"].startswith(f"Input validation error: {message}")
    assert len(backend.requests) == queued


@pytest.mark.parametrize("path,body", ROUTES)
@pytest.mark.parametrize("field,value,expected", [
    ("logit_bias", [1, 2], "logit_bias: invalid type: sequence, expected a map"),
    ("stop_token_ids", "7", 'stop_token_ids: invalid type: string "7", expected a sequence'),
    ("stop_token_ids", [1.5], "stop_token_ids[0]: invalid type: floating point `1.5`, expected i64"),
    ("min_tokens", "2", 'min_tokens: invalid type: string "2", expected i64'),
])
async def test_wrong_json_types_are_the_deserializer_error(
    client: httpx.AsyncClient, path: str, body: dict, field: str, value, expected: str
) -> None:
    r = await client.post(path, json={**body, field: value})
    assert r.status_code == 422
    assert r.text == f"Failed to deserialize the JSON body into the target type: {expected}"


@pytest.mark.parametrize("stream", [False, True])
async def test_empty_chat_messages_are_a_validation_error(client: httpx.AsyncClient, backend,
                                                          stream: bool) -> None:
    r = await client.post("/v1/chat/completions", json={"messages": [], "max_tokens": 2, "stream": stream})
    assert r.status_code == 422
    message = "Input validation error: `messages` must not be empty"
    assert r.json() == {"error": message, "error_type": "validation"}
    assert backend.requests == []
    tokenize = await client.post("/chat_tokenize", json={"messages": []})
    assert tokenize.status_code == 422 and tokenize.json()["error_type"] == "validation"


async def test_the_shard_gets_them_and_a_continuation_round_only_the_min_tokens_left(tmp_path: Path) -> None:
    """Through the batcher and the gRPC client to a (fake) shard: the fields are on the wire, and past the
    1,024-token round min_tokens counts only what is left after the tokens earlier rounds generated."""
    s = await make_stack(tmp_path)
    try:
        valid = dataclasses.replace(
            request("go on", max_new_tokens=1030),
            sampling=ChooserParams(min_p=0.5, logit_bias=((3, 1.5), (8, -2.0))),
            stopping=StoppingParams(max_new_tokens=1030, min_tokens=1027, stop_token_ids=(4, 11)),
        )
        events = await collect(s.batcher, valid)
        assert events[-1].generated_tokens == 1030
        first, second = s.shard.received[-2:]
        for sent, min_tokens in ((first, 1027), (second, 3)):
            assert sent.stopping_parameters.min_tokens == min_tokens
            assert list(sent.stopping_parameters.stop_token_ids) == [4, 11]
            assert sent.parameters.min_p == pytest.approx(0.5)
            assert dict(sent.parameters.logit_bias) == {3: 1.5, 8: -2.0}
    finally:
        await close(s)
