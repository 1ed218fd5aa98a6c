"""KV cache events from the launched stack (``--kv-events-config`` on the launcher, passed to the router): a
real ZMQ subscriber's view must equal what the router's prefix cache holds (its /metrics block count), and every
published hash must be the chained hash of the published tokens (default namespace: computable here)."""

from __future__ import annotations

import json
import threading
import time

import httpx

from conftest import Stack, free_port
from prism_cache import block_hashes
from router_py.kv_events.wire import HASH_MASK
from router_py.tests.kv_subscriber import Subscriber

PROMPTS = [
    "The quick brown fox jumps over the lazy dog, then runs far away into the forest and hides. " * 3,
    "The quick brown fox jumps over the lazy dog, then runs far away into the forest and sleeps. " * 2,
    "A completely different prompt about the sea, the wind, the waves and the sailors on their boats. " * 2,
]


def chain_tokens(blocks: dict, h: int) -> list[int]:
    """The tokens from the root to block ``h`` (inclusive) in the subscriber's view."""
    out: list[tuple[int, ...]] = []
    node: int | None = h
    while node is not None:
        parent, tokens, _ = blocks[node]
        out.append(tokens)
        node = parent
    return [t for tokens in reversed(out) for t in tokens]


def test_subscriber_view_equals_the_router_cache() -> None:
    # The flag as vLLM's docs write it: an endpoint without a wildcard, which the router's PUB connects to, so
    # the consumer binds (and keeps polling: libzmq forwards a bound SUB's subscription to a PUB that connects
    # only when the SUB socket next polls or receives).
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": endpoint, "topic": "kv"}
    stack = Stack(["--num-blocks", "128", "--max-batch-prefill-tokens", "1024", "--dtype", "float32",
                   "--kv-events-config", json.dumps(config)])
    sub = Subscriber(endpoint, "kv", bind=True)
    stop = threading.Event()
    listener = threading.Thread(target=lambda: [sub.receive(0.05) for _ in iter(stop.is_set, True)])
    listener.start()
    try:
        stack.wait_healthy()
        for prompt in PROMPTS * 2:
            r = httpx.post(f"{stack.url}/generate", timeout=120,
                           json={"inputs": prompt, "parameters": {"max_new_tokens": 3}})
            assert r.status_code == 200, r.text
        deadline = time.monotonic() + 30
        while True:
            time.sleep(0.3)
            cached = stack.metric('prism_prefix_cache_blocks{state="cached"}')
            if len(sub.view.blocks) == cached or time.monotonic() > deadline:
                break
        stop.set()
        listener.join()
        view = sub.view
        assert view.errors == [] and sub.gaps == 0
        assert view.batches > 0 and cached > 0
        assert len(view.blocks) == cached
        block_size = len(next(iter(view.blocks.values()))[1])
        for h in view.blocks:
            tokens = chain_tokens(view.blocks, h)
            assert block_hashes("", tokens, block_size)[-1] & HASH_MASK == h
        ids = httpx.post(f"{stack.url}/tokenize", json={"inputs": PROMPTS[0]}).json()
        first = [t["id"] for t in ids]
        n_full = len(first) // block_size
        assert n_full >= 2
        assert block_hashes("", first, block_size)[n_full - 1] & HASH_MASK in view.blocks, \
            "the first prompt's full blocks are cached and published"
    finally:
        stop.set()
        listener.join()
        assert stack.close() == 0
        sub.close()
