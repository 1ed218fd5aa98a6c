"""KV cache events from the launched stack (``--kv-events-config`` on the launcher, passed to the router): a
real ZMQ subscriber's view must equal what the router's prefix cache holds (its /metrics block count), and every
published hash must be the chained hash of the published tokens (default namespace: computable here). With host
and disk tiers, the same holds per medium (GPU, CPU, DISK) against the tiers' block counts."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import httpx
from conftest import Stack, free_port
from test_kv_tiers_e2e import generate, prompt

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


@contextlib.contextmanager
def publishing_stack(args: list[str]) -> Iterator[tuple[Stack, Subscriber, Callable[[], None]]]:
    """A stack started with ``args`` publishing KV events to a subscriber a thread keeps polling; yields the
    healthy stack, the subscriber and a function that stops the polling (call it before reading the view).
    Stops both on exit, the stack with exit code 0."""
    # The flag as vLLM's docs write it: an endpoint without a wildcard, which the router's PUB connects to, so
    # the consumer binds (and keeps polling: libzmq forwards a bound SUB's subscription to a PUB that connects
    # only when the SUB socket next polls or receives).
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": endpoint, "topic": "kv"}
    stack = Stack([*args, "--kv-events-config", json.dumps(config)])
    sub = Subscriber(endpoint, "kv", bind=True)
    stop = threading.Event()
    listener = threading.Thread(target=lambda: [sub.receive(0.05) for _ in iter(stop.is_set, True)])
    listener.start()

    def stop_listening() -> None:
        stop.set()
        listener.join()

    try:
        stack.wait_healthy()
        yield stack, sub, stop_listening
    finally:
        stop_listening()
        assert stack.close() == 0
        sub.close()


def test_subscriber_view_equals_the_router_cache() -> None:
    args = ["--num-blocks", "128", "--max-batch-prefill-tokens", "1024", "--dtype", "float32"]
    with publishing_stack(args) as (stack, sub, stop_listening):
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
        stop_listening()
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


def test_tier_copies_are_published_per_medium() -> None:
    """A 20-block device pool, a 10-block host tier and a disk tier: a flood pushes a prompt's blocks down to the
    host and on to disk, and it comes back. The subscriber's GPU / CPU / DISK views equal the tree's and the
    tiers' block counts, and every tier copy carries its block's parent and tokens (its hash recomputes)."""
    disk = tempfile.mkdtemp(prefix="prism-kv-disk-")
    args = ["--dtype", "float32", "--cache-policy", "lru", "--num-blocks", "20", "--max-batch-prefill-tokens", "256",
            "--max-total-tokens", "200", "--max-input-tokens", "180", "--kv-host-tokens", "160",
            "--kv-disk-tokens", "8192", "--kv-disk-path", disk]
    try:
        with publishing_stack(args) as (stack, sub, stop_listening):
            for text in [prompt(0), *(prompt(i) for i in range(1, 14)), prompt(0)]:
                generate(stack, text)
            seen = _media_counts(stack, sub)
            stop_listening()
            _check_tier_copies(stack, sub, seen)
    finally:
        shutil.rmtree(disk, ignore_errors=True)


def _media_counts(stack: Stack, sub: Subscriber) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(the subscriber's GPU / CPU / DISK block counts, the router's), once they agree or after 30 s."""

    def counts() -> tuple[tuple[int, ...], tuple[int, ...]]:
        view = sub.view
        got = (len(view.blocks), len(view.tiers["CPU"]), len(view.tiers["DISK"]))
        want = (stack.metric('prism_prefix_cache_blocks{state="cached"}'),
                stack.metric('prism_kv_tier_blocks{tier="host"}'),
                stack.metric('prism_kv_tier_blocks{tier="disk"}'))
        return got, tuple(int(n) for n in want)

    deadline = time.monotonic() + 30
    while (seen := counts())[0] != seen[1] and time.monotonic() < deadline:
        time.sleep(0.3)
    return seen


def _check_tier_copies(stack: Stack, sub: Subscriber, seen: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    view = sub.view
    assert view.errors == [] and sub.gaps == 0
    assert seen[0] == seen[1], f"subscriber (GPU, CPU, DISK) {seen[0]} != the router's {seen[1]}"
    media = {medium for tag, medium, _ in view.log if tag == "BlockStored"}
    assert {"CPU", "DISK"} <= media, f"no tier copy was published: {media}"
    assert stack.metric('prism_prefix_cache_tier_hit_tokens{tier="host"}') + \
        stack.metric('prism_prefix_cache_tier_hit_tokens{tier="disk"}') > 0, "the prompt never came back"
    chains = {h: (*block, None) for h, block in view.seen.items()}
    block_size = len(next(iter(view.blocks.values()))[1])
    for h in {*view.tiers["CPU"], *view.tiers["DISK"]}:
        assert block_hashes("", chain_tokens(chains, h), block_size)[-1] & HASH_MASK == h
