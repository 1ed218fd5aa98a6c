"""``/v1/completions`` with token-id prompts and vLLM's ``stream_options.continuous_usage_stats``, through the
launched stack with the ``openai`` client. Before, a token-id prompt was a 422 and the usage flag was ignored.

The oracle: the shard computes on exactly the given ids, so the ids that a text prompt tokenizes to (BOS
included) give that text prompt's greedy output, streamed or not, and hit the prefix cache its blocks filled.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from conftest import Stack

PROMPT = "The quick brown fox"
CONTINUOUS = {"include_usage": True, "continuous_usage_stats": True}


@pytest.fixture(scope="module")
def oa(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="-", timeout=120)


def token_ids(stack: Stack, text: str) -> list[int]:
    """The router's tokenization of a completions text prompt (BOS added, as there)."""
    return [t["id"] for t in httpx.post(f"{stack.url}/tokenize", json={"inputs": text}, timeout=60).json()]


def streamed(oa: openai.OpenAI, prompt, **kw) -> tuple[str, list]:
    chunks = list(oa.completions.create(model="tgi", prompt=prompt, stream=True, **kw))
    return "".join(c.choices[0].text for c in chunks if c.choices), chunks


@pytest.mark.parametrize("stream", [False, True])
def test_greedy_output_of_the_ids_equals_the_text_prompts(
    stack: Stack, oa: openai.OpenAI, stream: bool
) -> None:
    ids = token_ids(stack, PROMPT)
    kw = dict(model="tgi", max_tokens=12, temperature=0)
    if stream:
        by_text, _ = streamed(oa, PROMPT, max_tokens=12, temperature=0)
        usage = {"include_usage": True}
        by_ids, chunks = streamed(oa, ids, max_tokens=12, temperature=0, stream_options=usage)
        assert chunks[-1].usage.prompt_tokens == len(ids)
    else:
        by_text = oa.completions.create(prompt=PROMPT, **kw).choices[0].text
        r = oa.completions.create(prompt=ids, **kw)
        by_ids = r.choices[0].text
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), 12)
    assert by_ids == by_text and by_text


def test_no_bos_is_added_to_token_ids(stack: Stack, oa: openai.OpenAI) -> None:
    """The same ids without their BOS are a prompt one token shorter (a text prompt would get BOS back)."""
    ids = token_ids(stack, PROMPT)
    r = oa.completions.create(model="tgi", prompt=ids[1:], max_tokens=2, temperature=0)
    assert r.usage.prompt_tokens == len(ids) - 1


def test_several_id_prompts_and_echo(stack: Stack, oa: openai.OpenAI) -> None:
    first, second = token_ids(stack, PROMPT), token_ids(stack, "hello world")
    r = oa.completions.create(model="tgi", prompt=[first, second], max_tokens=4, temperature=0)
    solo = [oa.completions.create(model="tgi", prompt=p, max_tokens=4, temperature=0).choices[0].text
            for p in (PROMPT, "hello world")]
    assert [c.text for c in sorted(r.choices, key=lambda c: c.index)] == solo
    assert r.usage.prompt_tokens == len(first) + len(second)
    echoed = oa.completions.create(model="tgi", prompt=first, max_tokens=4, temperature=0, echo=True)
    assert echoed.choices[0].text.endswith(PROMPT + solo[0])  # BOS decoded first, as vLLM's echo


def test_token_ids_hit_the_prefix_cache_a_text_prompt_filled(stack: Stack, oa: openai.OpenAI) -> None:
    text = " ".join(f"item{i} costs {i * 7 % 13}" for i in range(40))
    ids = token_ids(stack, text)
    assert len(ids) > 64
    oa.completions.create(model="tgi", prompt=text, max_tokens=2, temperature=0)
    before = stack.metric("prism_prefix_cache_hit_tokens")
    oa.completions.create(model="tgi", prompt=ids, max_tokens=2, temperature=0)
    assert stack.metric("prism_prefix_cache_hit_tokens") - before >= 16 * ((len(ids) - 1) // 16) - 16


@pytest.mark.parametrize("prompt,message", [
    ([], "`prompt` cannot be empty"),
    ([1, -1], "`prompt` token id -1 is out of the vocabulary"),
    ([1, 10**9], "`prompt` token id 1000000000 is out of the vocabulary"),
    (["a", 1], "`prompt` mixes strings and token ids"),
    ([[[1]]], "`prompt[0][0]` is nested too deep"),
])
def test_wrong_token_prompts_are_tgis_422(stack: Stack, prompt, message: str) -> None:
    r = httpx.post(f"{stack.url}/v1/completions", json={"prompt": prompt, "max_tokens": 2}, timeout=60)
    assert r.status_code == 422 and r.json()["error_type"] == "validation"
    assert r.json()["error"].startswith(f"Input validation error: {message}")


def test_a_too_long_id_prompt_gets_the_text_prompts_length_error(stack: Stack) -> None:
    limit = httpx.get(f"{stack.url}/info", timeout=30).json()["max_input_tokens"]
    text = "hello " * (limit + 8)
    ids = token_ids(stack, text)
    assert len(ids) > limit
    as_text = httpx.post(f"{stack.url}/v1/completions", json={"prompt": text, "max_tokens": 1}, timeout=60)
    as_ids = httpx.post(f"{stack.url}/v1/completions", json={"prompt": ids, "max_tokens": 1}, timeout=60)
    assert as_ids.status_code == as_text.status_code == 422
    assert as_ids.json() == as_text.json()
    assert as_ids.json()["error_type"] == "validation" and f"Given: {len(ids)}" in as_ids.json()["error"]


@pytest.mark.parametrize("route", ["completions", "chat"])
def test_continuous_usage_stats_on_every_chunk(stack: Stack, oa: openai.OpenAI, route: str) -> None:
    kw = dict(model="tgi", max_tokens=6, temperature=0, stream=True, stream_options=CONTINUOUS)
    if route == "chat":
        chunks = list(oa.chat.completions.create(messages=[{"role": "user", "content": PROMPT}], **kw))
    else:
        chunks = list(oa.completions.create(prompt=token_ids(stack, PROMPT), **kw))
    *tokens, final = chunks
    prompt = final.usage.prompt_tokens
    assert final.choices == [] and final.usage.completion_tokens == 6 and prompt > 0
    assert [c.usage.completion_tokens for c in tokens] == [1, 2, 3, 4, 5, 6]
    assert all(c.usage.prompt_tokens == prompt and c.usage.total_tokens == prompt + c.usage.completion_tokens
               for c in tokens)
    plain = list(oa.completions.create(model="tgi", prompt=PROMPT, max_tokens=3, temperature=0, stream=True))
    assert all(c.usage is None for c in plain)
