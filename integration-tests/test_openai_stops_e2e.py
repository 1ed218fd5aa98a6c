"""OpenAI's ``stop``, ``top_p`` 1 and completions ``logprobs`` / ``echo`` through the launched stack with the
``openai`` client. Before: ``stop="..."`` (one string) was a 422, a stop string inside a token never ended
the generation (TGI's shard only matches at the end of the text) and the text kept the stop string, finish
reason ``stop_sequence``; ``top_p=1`` was a 422; ``logprobs`` and ``echo`` were ignored; ``echo`` with
``logprobs`` was a 422."""

from __future__ import annotations

import httpx
import openai
import pytest

from conftest import Stack

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def oa(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="-", timeout=120)


def greedy_tokens(stack: Stack, n: int) -> list[str]:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": n, "details": True}}
    out = httpx.post(f"{stack.url}/generate", json=body, timeout=120).json()
    assert out["details"]["finish_reason"] == "length", out
    return [t["text"] for t in out["details"]["tokens"]]


def inside_token_stop(texts: list[str]) -> tuple[str, str, int]:
    """A stop string inside (not at the end of) a greedy token's text, found nowhere before: the stop, the
    text before it, and the tokens up to the one holding it."""
    for k, piece in enumerate(texts[1:], 1):
        stop = piece[:-1]
        before = "".join(texts[:k])
        if len(stop) >= 2 and stop not in before + piece[:-2] and (before + piece).find(stop) == len(before):
            return stop, before, k + 1
    pytest.skip(f"no greedy token with a usable inner stop string: {texts}")


@pytest.mark.parametrize("stream", [False, True])
def test_stop_inside_a_token_cuts_the_text_and_frees_the_request(
    stack: Stack, oa: openai.OpenAI, stream: bool
) -> None:
    stop, before, tokens = inside_token_stop(greedy_tokens(stack, 12))
    kw = dict(model="tgi", prompt=PROMPT, max_tokens=40, temperature=0, top_p=1.0, stop=stop)
    if stream:
        chunks = list(oa.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        used = chunks[-1].usage.completion_tokens
    else:
        r = oa.completions.create(**kw)
        text, finish, used = r.choices[0].text, r.choices[0].finish_reason, r.usage.completion_tokens
    assert (text, finish, used) == (before, "stop", tokens)
    metrics = httpx.get(f"{stack.url}/metrics", timeout=30).text
    assert 'prism_prefix_cache_blocks{state="in_use"} 0' in metrics


def test_chat_stop_string_is_left_out(oa: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": PROMPT}]
    full = oa.chat.completions.create(model="tgi", messages=messages, max_tokens=12, temperature=0)
    text = full.choices[0].message.content
    stop = text[3:6]
    r = oa.chat.completions.create(model="tgi", messages=messages, max_tokens=12, temperature=0, stop=[stop])
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (text[: text.find(stop)], "stop")


def test_completion_logprobs_and_echo(oa: openai.OpenAI) -> None:
    r = oa.completions.create(model="tgi", prompt=PROMPT, max_tokens=3, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.token_logprobs) == 3
    assert all(len(top) == 2 for top in lp.top_logprobs) and lp.text_offset[0] == 0
    echoed = oa.completions.create(model="tgi", prompt=PROMPT, max_tokens=3, temperature=0, echo=True)
    assert echoed.choices[0].text == PROMPT + r.choices[0].text


def _transformers_prompt_logprobs(prompt: str):
    """transformers' fp32 logprobs at each prompt position but the last (the next token's), and the ids."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from router_py.launch.model_source import demo_model

    tok = AutoTokenizer.from_pretrained(demo_model())
    model = AutoModelForCausalLM.from_pretrained(demo_model(), dtype=torch.float32, attn_implementation="eager")
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        return torch.log_softmax(model(ids).logits[0, :-1].float(), -1), ids[0]


def _transformers_prompt_scores(prompt: str) -> tuple[list[float], list[float]]:
    """transformers' logprob of each prompt token after the first, and the likeliest token's there."""
    logprobs, ids = _transformers_prompt_logprobs(prompt)
    return logprobs.gather(1, ids[1:, None])[:, 0].tolist(), logprobs.max(-1).values.tolist()


def test_echo_with_logprobs_scores_the_prompt_as_transformers(oa: openai.OpenAI) -> None:
    """lm-evaluation-harness's loglikelihood call (``echo``, ``logprobs``, ``max_tokens`` 0): the prompt alone,
    each token's logprob and the likeliest alternative's as transformers' (fp32, within 1e-4)."""
    r = oa.completions.create(model="tgi", prompt=PROMPT, max_tokens=0, echo=True, logprobs=1, temperature=0)
    choice, (own, best) = r.choices[0], _transformers_prompt_scores(PROMPT)
    assert (choice.text, choice.finish_reason, r.usage.completion_tokens) == (PROMPT, "length", 0)
    lp = choice.logprobs
    assert len(lp.token_logprobs) == len(own) + 1 == r.usage.prompt_tokens and lp.token_logprobs[0] is None
    assert all(abs(a - b) <= 1e-4 for a, b in zip(lp.token_logprobs[1:], own))
    assert all(abs(max(top.values()) - b) <= 1e-4 for top, b in zip(lp.top_logprobs[1:], best))


def test_lm_eval_loglikelihood_requests_are_transformers(stack: Stack) -> None:
    """lm-evaluation-harness's ``local-completions`` loglikelihood call, as it sends it (token-id prompts, context
    then continuation, ``echo``, ``logprobs`` 1, ``max_tokens`` 1) and reads it (the continuation's summed
    logprobs and whether each token is the likeliest): transformers' numbers (fp32, within 1e-4)."""
    from transformers import AutoTokenizer

    from router_py.launch.model_source import demo_model

    tok = AutoTokenizer.from_pretrained(demo_model())
    pairs = [("The quick brown fox", " jumps over"), ("A cache that keeps them", " can answer")]
    prompts = [tok(c + x).input_ids for c, x in pairs]
    ctxlens = [len(tok(c).input_ids) for c, _ in pairs]
    body = {"model": "tgi", "prompt": prompts, "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234,
            "echo": True}
    out = httpx.post(f"{stack.url}/v1/completions", json=body, timeout=120).json()
    for choice, ids, ctxlen, (c, x) in zip(sorted(out["choices"], key=lambda c: c["index"]), prompts, ctxlens, pairs):
        lp = choice["logprobs"]
        own = lp["token_logprobs"][ctxlen:-1]
        greedy = all(t == max(top.values()) for t, top in zip(own, lp["top_logprobs"][ctxlen:-1]))
        logprobs, want_ids = _transformers_prompt_logprobs(c + x)
        rows = logprobs[ctxlen - 1 :]
        want = rows.gather(1, want_ids[ctxlen:, None])[:, 0]
        assert want_ids.tolist() == ids and len(own) == len(want)
        assert abs(sum(own) - float(want.sum())) <= 1e-4
        assert greedy == bool((rows.argmax(-1) == want_ids[ctxlen:]).all())


def test_prompt_logprobs_are_transformers(oa: openai.OpenAI) -> None:
    """vLLM's ``prompt_logprobs``: each prompt token's logprob and rank, and its position's 2 likeliest, as
    transformers' (fp32; logprobs within 1e-4)."""
    r = oa.completions.create(model="tgi", prompt=PROMPT, max_tokens=1, extra_body={"prompt_logprobs": 2})
    got = r.choices[0].model_extra["prompt_logprobs"]
    logprobs, ids = _transformers_prompt_logprobs(PROMPT)
    assert got[0] is None and len(got) == len(ids)
    for entry, row, token in zip(got[1:], logprobs, ids[1:].tolist()):
        top = row.topk(2)
        want = {token: float(row[token])} | dict(zip(top.indices.tolist(), top.values.tolist()))
        assert [int(k) for k in entry] == list(want)  # the prompt's token first
        assert all(abs(entry[str(k)]["logprob"] - v) <= 1e-4 for k, v in want.items())
        assert entry[str(token)]["rank"] == int((row > row[token]).sum()) + 1


def test_skip_special_tokens_false_keeps_their_text(oa: openai.OpenAI) -> None:
    """vLLM's ``skip_special_tokens`` false: a special token (BOS, forced by ``logit_bias``) keeps its text."""
    kw = dict(model="tgi", prompt=PROMPT, max_tokens=3, temperature=0, logit_bias={"0": 100})
    assert oa.completions.create(**kw).choices[0].text == ""
    kept = oa.completions.create(**kw, extra_body={"skip_special_tokens": False})
    streamed = oa.completions.create(**kw, stream=True, extra_body={"skip_special_tokens": False})
    assert kept.choices[0].text == "".join(c.choices[0].text for c in streamed) == "<s>" * 3


def test_include_stop_str_in_output_keeps_the_stop_string(stack: Stack, oa: openai.OpenAI) -> None:
    """vLLM's ``include_stop_str_in_output``: the same cut, after the stop string instead of before it."""
    stop, before, tokens = inside_token_stop(greedy_tokens(stack, 12))
    kw = dict(model="tgi", prompt=PROMPT, max_tokens=40, temperature=0, stop=stop,
              extra_body={"include_stop_str_in_output": True})
    r = oa.completions.create(**kw)
    assert (r.choices[0].text, r.choices[0].finish_reason, r.usage.completion_tokens) == (before + stop, "stop", tokens)
    streamed = "".join(c.choices[0].text for c in oa.completions.create(**kw, stream=True) if c.choices)
    assert streamed == before + stop


@pytest.mark.parametrize("stream", [False, True])
def test_tokens_as_ids_are_the_generated_ids(stack: Stack, oa: openai.OpenAI, stream: bool) -> None:
    """vLLM's ``return_tokens_as_token_ids``: the completion's logprobs name the ids /generate's details give."""
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 6, "details": True}}
    details = httpx.post(f"{stack.url}/generate", json=body, timeout=120).json()["details"]
    kw = dict(model="tgi", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=1,
              extra_body={"return_tokens_as_token_ids": True})
    if stream:
        chunks = [c for c in oa.completions.create(**kw, stream=True) if c.choices]
        names = [n for c in chunks for n in c.choices[0].logprobs.tokens]
    else:
        names = oa.completions.create(**kw).choices[0].logprobs.tokens
    assert names == [f"token_id:{t['id']}" for t in details["tokens"]]
