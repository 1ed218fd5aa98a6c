"""vLLM's sampling fields through the launched stack with the ``openai`` client (random weights: each check is
one where only the field can explain the output). Before, the routes ignored them silently."""

from __future__ import annotations

import httpx
import openai
import pytest

from conftest import Stack

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def oa(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="-", timeout=120)


def greedy(stack: Stack, n: int) -> tuple[list[int], str]:
    """The prompt's first ``n`` greedy token ids and their text (TGI's /generate), with no EOS among them."""
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": n, "details": True}}
    out = httpx.post(f"{stack.url}/generate", json=body, timeout=120).json()
    assert out["details"]["finish_reason"] == "length", out
    return [t["id"] for t in out["details"]["tokens"]], out["generated_text"]


@pytest.fixture(scope="module")
def token(stack: Stack) -> tuple[int, str]:
    """(id, text) of a word's token that greedy decoding of the prompt does not produce."""
    ids, _ = greedy(stack, 4)
    pieces = httpx.post(f"{stack.url}/tokenize", json={"inputs": "hello world apple"}, timeout=60).json()
    return next((p["id"], p["text"]) for p in pieces if p["id"] not in ids and p["text"].strip())


def test_logit_bias_makes_every_greedy_token_that_token(oa: openai.OpenAI, token: tuple[int, str]) -> None:
    x, text = token
    bias = {str(x): 100}
    comp = oa.completions.create(model="tgi", prompt=PROMPT, max_tokens=4, temperature=0, logit_bias=bias)
    assert comp.choices[0].text == text * 4 and comp.choices[0].finish_reason == "length"
    chat = oa.chat.completions.create(
        model="tgi", messages=[{"role": "user", "content": PROMPT}], max_tokens=3, temperature=0,
        logit_bias=bias, logprobs=True,
    )
    assert [c.token for c in chat.choices[0].logprobs.content] == [text] * 3
    assert chat.choices[0].message.content == text * 3


@pytest.mark.parametrize("stream", [False, True])
def test_stop_token_ids_end_the_generation_after_min_tokens(
    stack: Stack, oa: openai.OpenAI, token: tuple[int, str], stream: bool
) -> None:
    """logit_bias pushes X to the top, stop_token_ids=[X] stops on it, min_tokens=3 masks it for three tokens:
    the three greedy tokens come out, then X ends the generation ("stop") without its text."""
    x, _ = token
    _, three = greedy(stack, 3)
    args = {"model": "tgi", "prompt": PROMPT, "max_tokens": 10, "temperature": 0,
            "logit_bias": {str(x): 100}, "extra_body": {"stop_token_ids": [x], "min_tokens": 3}}
    if not stream:
        comp = oa.completions.create(**args)
        assert (comp.choices[0].text, comp.choices[0].finish_reason) == (three, "stop")
        assert comp.usage.completion_tokens == 4  # the stop token counts, as in vLLM
        return
    chunks = list(oa.completions.create(**args, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == three
    assert [c.choices[0].finish_reason for c in chunks] == [None] * 3 + ["stop"]


def test_min_p_one_keeps_only_the_top_token(oa: openai.OpenAI) -> None:
    """Sampling (temperature 1, any seed) with min_p 1.0 can only draw the likeliest token: greedy text."""
    args = {"model": "tgi", "prompt": PROMPT, "max_tokens": 8, "extra_body": {"ignore_eos": True}}
    greedy_text = oa.completions.create(**args, temperature=0).choices[0].text
    for seed in (1, 2):
        extra = {"ignore_eos": True, "min_p": 1.0}
        sampled = oa.completions.create(**{**args, "extra_body": extra}, temperature=1.0, seed=seed)
        assert sampled.choices[0].text == greedy_text


@pytest.mark.parametrize("body", [
    {"messages": []},
    {"messages": [{"role": "user", "content": "hi"}], "extra_body": {"min_p": 2}},
    {"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"5": 500}},
    {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "extra_body": {"min_tokens": 3}},
])
def test_bad_values_are_422(oa: openai.OpenAI, body: dict) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as err:
        oa.chat.completions.create(model="tgi", **body)
    assert err.value.response.json()["error_type"] == "validation"
    assert err.value.response.json()["error"].startswith("Input validation error: ")


def test_min_tokens_with_a_stop_token_id_beyond_the_vocabulary(stack: Stack, oa: openai.OpenAI) -> None:
    """Such an id can never be generated (the route passes any id, as vLLM does): nothing to mask, and the
    greedy text is unchanged. It was a 424 (IndexError in the shard's batched mask)."""
    _, text = greedy(stack, 6)
    extra = {"min_tokens": 2, "stop_token_ids": [2**31], "ignore_eos": True}
    comp = oa.completions.create(model="tgi", prompt=PROMPT, max_tokens=6, temperature=0, extra_body=extra)
    assert (comp.choices[0].text, comp.choices[0].finish_reason) == (text, "length")


def test_temperature_zero_with_top_k_is_greedy(stack: Stack, oa: openai.OpenAI) -> None:
    """vLLM's temperature 0 is greedy whatever its top_k; here it sampled (another text per seed)."""
    _, text = greedy(stack, 6)
    for seed in (1, 2):
        comp = oa.completions.create(model="tgi", prompt=PROMPT, max_tokens=6, temperature=0, seed=seed,
                                     extra_body={"top_k": 20, "ignore_eos": True})
        assert comp.choices[0].text == text
