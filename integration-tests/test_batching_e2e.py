"""Batching and the prefix cache through the launched stack: concurrent greedy streams equal their solo runs,
clients that disconnect mid-stream give their blocks back, and a repeated 1,000-token prefix is served from
the cache with the same output."""

from __future__ import annotations

import asyncio
import time

import httpx
from text_generation import AsyncClient

from conftest import Stack

IN_USE = 'prism_prefix_cache_blocks{state="in_use"}'


def prompts(n: int) -> list[str]:
    return [f"Request number {i} asks about topic {i * 7 % 13} and more" for i in range(n)]


def wait_metric(stack: Stack, series: str, want: float, timeout_s: float = 60.0) -> float:
    """Poll /metrics until ``series`` equals ``want`` (the batcher updates it after its next step)."""
    deadline = time.monotonic() + timeout_s
    value = stack.metric(series)
    while value != want and time.monotonic() < deadline:
        time.sleep(0.2)
        value = stack.metric(series)
    return value


async def stream_result(client: AsyncClient, prompt: str, max_new_tokens: int) -> tuple[list[int], str | None]:
    """Token ids and the final event's generated_text of one greedy stream."""
    events = [e async for e in client.generate_stream(prompt, max_new_tokens=max_new_tokens)]
    return [e.token.id for e in events], events[-1].generated_text


async def solo_result(client: AsyncClient, prompt: str, max_new_tokens: int) -> tuple[list[int], str | None]:
    r = await client.generate(prompt, max_new_tokens=max_new_tokens)
    return [t.id for t in r.details.tokens], r.generated_text


async def disconnect_after(url: str, prompt: str, events: int) -> None:
    """Open a long stream, read ``events`` token events, then drop the connection."""
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 400}}
    async with httpx.AsyncClient(timeout=120) as http:
        async with http.stream("POST", f"{url}/generate_stream", json=body) as resp:
            seen = 0
            async for line in resp.aiter_lines():
                seen += line.startswith("data:")
                if seen >= events:
                    return


async def test_64_concurrent_streams_match_solo_runs_then_blocks_return(stack: Stack) -> None:
    client = AsyncClient(stack.url, timeout=300)
    texts = prompts(64)
    solo = [await solo_result(client, p, 12) for p in texts]
    together = await asyncio.gather(*(stream_result(client, p, 12) for p in texts))
    assert together == solo
    assert wait_metric(stack, IN_USE, 0) == 0


async def test_clients_gone_mid_stream_release_their_blocks(stack: Stack) -> None:
    await asyncio.gather(*(disconnect_after(stack.url, p, 3) for p in prompts(16)))
    assert wait_metric(stack, IN_USE, 0) == 0
    assert stack.metric('tgi_request_failure{err="dropped"}') >= 16
    assert httpx.get(f"{stack.url}/health", timeout=30).status_code == 200


def test_repeated_1000_token_prefix_is_served_from_cache(stack: Stack) -> None:
    words = " ".join(f"segment{i % 97} value{i * 31 % 101}" for i in range(900))
    tokens = httpx.post(f"{stack.url}/tokenize", json={"inputs": words}, timeout=60).json()
    prefix = words[: tokens[999]["stop"]]
    body = {"inputs": prefix + " and then the question", "parameters": {"max_new_tokens": 8}}
    hits_before = stack.metric("prism_prefix_cache_hit_tokens")
    first = httpx.post(f"{stack.url}/generate", json=body, timeout=300).json()
    hits_between = stack.metric("prism_prefix_cache_hit_tokens")
    second = httpx.post(f"{stack.url}/generate", json=body, timeout=300).json()
    hits_after = stack.metric("prism_prefix_cache_hit_tokens")
    assert second["generated_text"] == first["generated_text"]
    assert hits_between - hits_before < 100
    assert hits_after - hits_between >= 992  # the prompt's full 16-token blocks


def test_one_prompt_cached_whole_and_sent_at_once_is_served_to_all(stack: Stack) -> None:
    """A prompt of whole blocks (32 token ids), cached, then sent by 8 clients at once: each request computes
    its last prompt token into a block of its own. Before, they all rewrote the last token's slot in the
    shared block, and the shard refused the batch (a failure for every request in it)."""
    body = {"model": "tgi", "prompt": list(range(100, 132)), "max_tokens": 4, "temperature": 0}
    url = f"{stack.url}/v1/completions"
    solo = httpx.post(url, json=body, timeout=60).json()["choices"][0]["text"]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(url, json=body) for _ in range(8)))

    for _ in range(3):
        answers = asyncio.run(burst())
        assert [r.status_code for r in answers] == [200] * 8, answers[0].text
        assert {r.json()["choices"][0]["text"] for r in answers} == {solo}
    assert wait_metric(stack, IN_USE, 0) == 0
