"""OpenAI's ``n`` through the launched stack with the ``openai`` client (router_py.http.openai_choices).

The oracles: a choice is a sequence of its own, so with a ``seed`` choice ``j`` equals the ``n=1`` answer
with ``seed + j`` (vLLM's rule), streamed or not, and greedy choices equal the ``n=1`` greedy answer (the
stack runs fp32, where a batched sequence equals a solo one). After the calls no KV block is held.
"""

from __future__ import annotations

from collections import defaultdict

import openai
import pytest

from conftest import Stack

PROMPT = "The quick brown fox"
SAMPLED = dict(model="tgi", max_tokens=8, temperature=1.0)


@pytest.fixture(scope="module")
def oa(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="-", timeout=120)


def streamed_texts(chunks) -> dict[int, str]:
    texts: dict[int, str] = defaultdict(str)
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    return dict(texts)


@pytest.mark.parametrize("stream", [False, True])
def test_seeded_choices_are_the_single_answers_with_seed_plus_index(
    stack: Stack, oa: openai.OpenAI, stream: bool
) -> None:
    singles = [oa.completions.create(prompt=PROMPT, seed=100 + j, **SAMPLED).choices[0].text for j in range(3)]
    assert len(set(singles)) > 1  # the seeds sample different texts, so the check below can fail
    if stream:
        chunks = list(oa.completions.create(prompt=PROMPT, seed=100, n=3, stream=True,
                                            stream_options={"include_usage": True}, **SAMPLED))
        assert streamed_texts(chunks) == dict(enumerate(singles))
        usage = chunks[-1].usage
    else:
        r = oa.completions.create(prompt=PROMPT, seed=100, n=3, **SAMPLED)
        assert [c.text for c in r.choices] == singles and [c.index for c in r.choices] == [0, 1, 2]
        usage = r.usage
    single = oa.completions.create(prompt=PROMPT, seed=100, **SAMPLED).usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (single.prompt_tokens, 3 * single.completion_tokens)
    assert stack.metric('prism_prefix_cache_blocks{state="in_use"}') == 0


def test_greedy_chat_choices_equal_the_single_answer(stack: Stack, oa: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": PROMPT}]
    one = oa.chat.completions.create(model="tgi", messages=messages, max_tokens=8, temperature=0)
    many = oa.chat.completions.create(model="tgi", messages=messages, max_tokens=8, temperature=0, n=3)
    assert [c.message.content for c in many.choices] == [one.choices[0].message.content] * 3
    stream = oa.chat.completions.create(model="tgi", messages=messages, max_tokens=8, temperature=0, n=2,
                                        stream=True)
    texts: dict[int, str] = defaultdict(str)
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {0: one.choices[0].message.content, 1: one.choices[0].message.content}
    assert stack.metric('prism_prefix_cache_blocks{state="in_use"}') == 0


def test_several_prompts_index_their_choices_prompt_by_prompt(oa: openai.OpenAI) -> None:
    prompts = [PROMPT, "Once upon a time"]
    r = oa.completions.create(model="tgi", prompt=prompts, max_tokens=4, temperature=0, n=2)
    singles = [oa.completions.create(model="tgi", prompt=p, max_tokens=4, temperature=0).choices[0].text
               for p in prompts]
    assert [c.text for c in r.choices] == [singles[0], singles[0], singles[1], singles[1]]
