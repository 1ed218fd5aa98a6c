"""A request that can never fit the KV pool (issue 16 item 1), against the real stack.

With ``--num-blocks 256`` the shard reports 4,096 tokens of capacity, but block 0 is reserved (health probe),
so 255 blocks (4,080 tokens) are usable. A 4,000-token prompt with ``max_new_tokens`` 95 reserves
4,000 + 95 - 1 = 4,094 tokens = 256 blocks: it can never be admitted. It must be refused at validation with
TGI's 422, the small request after it must be served, ``/health`` stays truthful and SIGTERM is prompt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from conftest import Stack

LIMIT_S = 60.0


@pytest.fixture(scope="module")
def small_pool() -> Iterator[Stack]:
    s = Stack(["--num-blocks", "256", "--max-batch-prefill-tokens", "2048"]).wait_healthy()
    yield s
    s.close()


def _prompt_of(stack: Stack, tokens: int) -> str:
    """A prompt of at least ``tokens`` tokens (measured with the server's own /tokenize)."""
    text = "the quick brown fox jumps over the lazy dog "
    prompt = text
    while len(httpx.post(f"{stack.url}/tokenize", json={"inputs": prompt}).json()) < tokens:
        prompt += text * 20
    return prompt


def test_never_fitting_request_is_refused_and_the_queue_keeps_moving(small_pool: Stack) -> None:
    url = small_pool.url
    info = httpx.get(f"{url}/info").json()
    big = {"inputs": _prompt_of(small_pool, 4000), "parameters": {"truncate": 4000, "max_new_tokens": 95}}
    with httpx.Client(timeout=LIMIT_S) as http:
        r = http.post(f"{url}/generate", json=big)
        assert r.status_code == 422, r.text
        assert r.json()["error_type"] == "validation"
        limit = info["max_total_tokens"]
        assert r.json()["error"] == (
            f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= {limit}. "
            "Given: 4000 `inputs` tokens and 95 `max_new_tokens`"
        )
        # the advertised limit is what the pool can hold: (256 - 1 reserved) blocks x 16 tokens
        assert limit <= 255 * 16
        small = http.post(f"{url}/generate", json={"inputs": "hello", "parameters": {"max_new_tokens": 3}})
        assert small.status_code == 200, small.text
        assert http.get(f"{url}/health").status_code == 200


def test_largest_request_that_fits_is_served(small_pool: Stack) -> None:
    """The boundary: a request reserving exactly the usable pool is admitted and completes."""
    url = small_pool.url
    limit = httpx.get(f"{url}/info").json()["max_total_tokens"]
    prompt_tokens = limit - 40
    body = {"inputs": _prompt_of(small_pool, prompt_tokens),
            "parameters": {"truncate": prompt_tokens, "max_new_tokens": 40}}
    r = httpx.post(f"{url}/generate", json=body, timeout=LIMIT_S * 3)
    assert r.status_code == 200, r.text


def test_sigterm_is_prompt_while_a_request_waits() -> None:
    """SIGTERM with a client connected stops the stack well within the launcher's grace period."""
    s = Stack(["--num-blocks", "256", "--max-batch-prefill-tokens", "2048"]).wait_healthy()
    try:
        big = {"inputs": _prompt_of(s, 4000), "parameters": {"truncate": 4000, "max_new_tokens": 95}}
        t = threading.Thread(target=lambda: httpx.post(f"{s.url}/generate", json=big, timeout=LIMIT_S * 3))
        t.start()
        time.sleep(1.0)
        start = time.monotonic()
        code = s.close()
        elapsed = time.monotonic() - start
        t.join(LIMIT_S)
        assert code == 0
        assert elapsed < 20, f"shutdown took {elapsed:.1f} s"
    finally:
        s.close()
