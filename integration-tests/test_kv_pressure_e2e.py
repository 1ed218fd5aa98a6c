"""A small KV pool under pressure, against the real stack (64 blocks of 16 tokens, prefill steps of 16 tokens,
so a long prompt is prefilled in dozens of chunks; fp32, where greedy tokens are exact): clients that leave
during a chunked prefill leave in the prefix cache only the chunks their prompt had computed, which a later
request with that prompt reads without its tokens changing, and a storm
of requests needing several times the pool ends with every request served, each as it is served alone, and
the pool and the queue back to idle."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from conftest import Stack, generated_or_gone

PROMPT = " ".join(["castle river mountain king queen"[i % 20:] for i in range(90)])  # ~760 tokens


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    s = Stack(["--num-blocks", "64", "--max-batch-prefill-tokens", "16", "--dtype", "float32"]).wait_healthy()
    yield s
    assert s.close() == 0, "the launcher did not shut down cleanly on SIGTERM"


def _greedy(stack: Stack, prompt: str, max_new_tokens: int, cold: bool = False) -> tuple[str, float]:
    """The text and the seconds it took. ``cold``: with ``decoder_input_details``, which bypasses the prefix
    cache (TGI's rule)."""
    params = {"max_new_tokens": max_new_tokens, "do_sample": False, "decoder_input_details": cold}
    start = time.monotonic()
    r = httpx.post(f"{stack.url}/generate", json={"inputs": prompt, "parameters": params}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["generated_text"], time.monotonic() - start


def _idle(stack: Stack, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    series = ("tgi_batch_current_size", "tgi_queue_size", 'prism_prefix_cache_blocks{state="in_use"}')
    while any(stack.metric(s) != 0 for s in series):
        assert time.monotonic() < deadline, {s: stack.metric(s) for s in series}
        time.sleep(0.05)


def test_a_client_leaving_during_a_chunked_prefill_does_not_poison_the_cache(stack: Stack) -> None:
    """Before: the dropped request's prompt blocks went into the prefix cache with only its first chunks
    computed, and the next request with that prompt generated other tokens. Each try leaves at another point
    of the ~48 chunks of a prompt of its own; the cold reference runs last, since its KV would otherwise be
    left in the very blocks the dropped request gets, making their uncomputed part look right. The chunks
    computed before the client left are cached (the shard says how many): the next request with that prompt
    reads some but not all of it from the cache, at least once in the four tries."""
    partial = 0
    for n, fraction in enumerate((0.15, 0.3, 0.5, 0.7)):
        prompt = f"{n} {PROMPT}"
        took = _greedy(stack, f"other {prompt}", 12, cold=True)[1]  # mostly a chunked prefill of this length
        params = {"max_new_tokens": 12, "do_sample": False}
        body = json.dumps({"inputs": prompt, "parameters": params}).encode()
        with socket.create_connection(("127.0.0.1", stack.port)) as sock:
            sock.sendall(f"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            time.sleep(took * fraction)
        _idle(stack)
        hit_before = stack.metric("prism_prefix_cache_hit_tokens")
        warm = _greedy(stack, prompt, 12)[0]
        hit = stack.metric("prism_prefix_cache_hit_tokens") - hit_before
        tokens = len(httpx.post(f"{stack.url}/tokenize", json={"inputs": prompt}, timeout=30).json())
        partial += 0 < hit < tokens - 16
        assert warm == _greedy(stack, prompt, 12, cold=True)[0], f"left at {fraction:.0%} of the prefill"
    assert partial >= 1, "no prompt left mid-prefill had its computed chunks reused"


def test_a_storm_several_times_the_pool_is_served_as_each_request_alone(stack: Stack) -> None:
    """24 concurrent greedy requests over two shared prefixes needing ~5x the pool's 1,008 tokens, a quarter
    of them given up mid-way: every other one ends 200 with the tokens it gets alone, and the pool and the
    queue are idle after."""
    shared = [" ".join(["river king"] * 60), " ".join(["mountain queen"] * 40)]
    prompts = [f"{shared[i % 2]} request {i} " + "castle " * (i * 3) for i in range(24)]
    solo = [_greedy(stack, p, 48)[0] for p in prompts[::3]]

    async def storm() -> list[str | None]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(  # a quarter give up, while queued or running
                generated_or_gone(client, stack.url, {"inputs": prompts[i], "parameters": {
                    "max_new_tokens": 48, "do_sample": False}}, 0.05 * i if i % 4 == 1 else None)
                for i in range(24)))

    texts = asyncio.run(storm())
    for i, expected in zip(range(0, 24, 3), solo):
        if texts[i] is not None:
            assert texts[i] == expected, f"request {i}"
    assert sum(t is not None for t in texts) == 18
    _idle(stack)
    assert httpx.get(f"{stack.url}/health").status_code == 200
