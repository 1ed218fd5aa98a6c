"""A request's generated tokens enter the prefix cache after its prompt (as vLLM and SGLang cache them), so the
next turn of a chat or the next step of an agent, which sends them back, reuses them; before, only the prompt's
blocks were cached and every answer was computed again in the next turn.

The oracle (fp32, where greedy tokens are exact): the follow-up's greedy output from the cache equals its output
computed cold, under another ``cache_salt`` (a namespace of its own, so nothing is shared).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from conftest import Stack

PROMPT = "The castle by the river has a king and a queen who rule the mountain lands"
BLOCK = 16


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    s = Stack(["--dtype", "float32"]).wait_healthy()
    yield s
    assert s.close() == 0, "the launcher did not shut down cleanly on SIGTERM"


def _completion(stack: Stack, prompt: list[int], salt: str) -> tuple[str, float]:
    """Greedy text of a token-id prompt and the prefix-cache hit tokens it had."""
    before = stack.metric("prism_prefix_cache_hit_tokens")
    body = {"model": "tgi", "prompt": prompt, "max_tokens": 12, "temperature": 0, "cache_salt": salt}
    r = httpx.post(f"{stack.url}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"], stack.metric("prism_prefix_cache_hit_tokens") - before


def test_the_next_turn_reuses_the_answer_and_gets_the_cold_output(stack: Stack) -> None:
    params = {"max_new_tokens": 40, "do_sample": False, "details": True, "cache_salt": "chat"}
    r = httpx.post(f"{stack.url}/generate", json={"inputs": PROMPT, "parameters": params}, timeout=120)
    assert r.status_code == 200, r.text
    answer = [t["id"] for t in r.json()["details"]["tokens"]]
    prompt = [t["id"] for t in httpx.post(f"{stack.url}/tokenize", json={"inputs": PROMPT}, timeout=60).json()]
    turn = prompt + answer + prompt[1:9]  # the answer sent back, then a new message
    cold, cold_hit = _completion(stack, turn, "elsewhere")
    warm, warm_hit = _completion(stack, turn, "chat")
    assert cold_hit == 0 and cold
    # NOTE: the answer's last token was never fed back, so it has no KV; the prompt alone fills one block
    assert warm_hit == (len(prompt) + len(answer) - 1) // BLOCK * BLOCK > len(prompt) // BLOCK * BLOCK
    assert warm == cold
