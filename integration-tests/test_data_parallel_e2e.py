"""``prism-launcher --data-parallel 2`` on CPU: two replicas of the demo model behind one router, driven by the
PyPI ``text-generation`` client. Greedy tokens equal transformers' (alone and concurrent); requests sharing a
long prefix are served by one replica, which reuses its cache (per-replica /metrics); each replica publishes its
own KV cache events (vLLM's DP convention: endpoint port + rank), whose real subscriber's view equals that
replica's cache."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import zmq
from text_generation import Client

from conftest import Stack, child_pid, free_port, transformers_greedy
from router_py.tests.kv_subscriber import Subscriber

PROMPTS = ("The quick brown fox", "Once upon a time there was", "A cache that keeps them can answer", "Hello")
NEW = 6
SHARED = "A long shared instruction that every question repeats before it asks anything. " * 6


def _bind_pair() -> list[Subscriber]:
    """SUBs bound on two adjacent free ports (replica g publishes on the first + g), tried again when a port
    was taken meanwhile (another test's server)."""
    for _ in range(50):
        port, subs = free_port(), []
        try:
            for g in range(2):
                subs.append(Subscriber(f"tcp://127.0.0.1:{port + g}", "", bind=True))
            return subs
        except zmq.ZMQError:
            for sub in subs:
                sub.close()
    raise RuntimeError("no two adjacent free ports")


@pytest.fixture(scope="module")
def subscribers() -> Iterator[list[Subscriber]]:
    """One bound SUB per replica endpoint (vLLM's endpoint without a wildcard: the router's PUB connects),
    polled by a thread from before the stack starts."""
    subs = _bind_pair()
    stop = threading.Event()
    listener = threading.Thread(target=lambda: [s.receive(0.02) for _ in iter(stop.is_set, True) for s in subs])
    listener.start()
    yield subs
    stop.set()
    listener.join()
    for s in subs:
        s.close()


@pytest.fixture(scope="module")
def dp_stack(subscribers: list[Subscriber]) -> Iterator[Stack]:
    endpoint = subscribers[0].sock.getsockopt_string(zmq.LAST_ENDPOINT)
    events = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": endpoint}
    s = Stack(["--data-parallel", "2", "--num-blocks", "256", "--dtype", "float32",
               "--max-batch-prefill-tokens", "512", "--max-input-tokens", "400", "--max-total-tokens", "512",
               "--kv-events-config", json.dumps(events)]).wait_healthy()
    yield s
    assert s.close() == 0, "the launcher did not shut down cleanly on SIGTERM"


@pytest.fixture(scope="module")
def expected() -> dict[str, list[int]]:
    """transformers' greedy continuation of each prompt (fp32), the oracle."""
    return transformers_greedy(PROMPTS, NEW)


def test_each_replica_has_its_own_socket(dp_stack: Stack) -> None:
    assert os.path.exists(f"{dp_stack.uds}-dp0-0") and os.path.exists(f"{dp_stack.uds}-dp1-0")


def test_greedy_tokens_equal_transformers(dp_stack: Stack, expected: dict[str, list[int]]) -> None:
    client = Client(dp_stack.url, timeout=120)

    def tokens(prompt: str) -> list[int]:
        r = client.generate(prompt, max_new_tokens=NEW, decoder_input_details=False)
        return [t.id for t in r.details.tokens]

    assert {p: tokens(p) for p in PROMPTS} == expected
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        assert dict(zip(PROMPTS, pool.map(tokens, PROMPTS))) == expected
    assert all(dp_stack.metric(f'tgi_batch_inference_success{{method="prefill",replica="{g}"}}') > 0
               for g in "01")  # NOTE: the unrelated prompts used both replicas


def test_a_shared_prefix_stays_on_one_replica_and_hits(dp_stack: Stack) -> None:
    client = Client(dp_stack.url, timeout=120)

    def queried() -> list[float]:
        return [dp_stack.metric(f'prism_prefix_cache_queried_tokens{{replica="{g}"}}') for g in "01"]

    def hits() -> float:
        return sum(dp_stack.metric(f'prism_prefix_cache_hit_tokens{{replica="{g}"}}') for g in "01")

    before, hits_before = queried(), hits()
    for i in range(4):
        client.generate(f"{SHARED} Question {i}: why?", max_new_tokens=2)
    grown = [after - b for after, b in zip(queried(), before)]
    assert sorted(g > 0 for g in grown) == [False, True], grown  # every request on the same replica
    assert hits() - hits_before >= 3 * 64  # the three followers reused the shared blocks


def test_each_replica_publishes_its_own_tree(dp_stack: Stack, subscribers: list[Subscriber]) -> None:
    client = Client(dp_stack.url, timeout=120)
    client.generate(f"{SHARED} One more question?", max_new_tokens=2)
    # NOTE: a new long prefix goes to the replica that took in fewer uncached tokens: not the shared prefix's
    client.generate("Another long prompt about the sea, the wind, the waves and the boats. " * 4, max_new_tokens=2)

    def cached(g: int) -> float:
        return dp_stack.metric(f'prism_prefix_cache_blocks{{replica="{g}",state="cached"}}')

    deadline = time.monotonic() + 30
    while any(len(s.view.blocks) != cached(g) for g, s in enumerate(subscribers)) and time.monotonic() < deadline:
        time.sleep(0.3)
    for g, sub in enumerate(subscribers):
        assert sub.view.errors == [] and sub.gaps == 0
        assert len(sub.view.blocks) == cached(g) > 0, g


def test_a_killed_replica_gets_no_new_requests_while_the_other_serves(dp_stack: Stack) -> None:
    """kill -9 the shard of the replica caching SHARED: once the router has seen the loss (/health 503),
    requests with that prefix go to the other replica instead of waiting for the restart; the killed replica
    comes back and no block stays in use. Last in the module: the restart clears a replica's tree."""
    client = Client(dp_stack.url, timeout=120)

    def queried(g: int) -> float:
        return dp_stack.metric(f'prism_prefix_cache_queried_tokens{{replica="{g}"}}')

    before = [queried(g) for g in range(2)]
    client.generate(f"{SHARED} Which replica?", max_new_tokens=2)
    home = 0 if queried(0) > before[0] else 1
    os.kill(child_pid(dp_stack.process.proc.pid, f"{dp_stack.uds}-dp{home} "), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while httpx.get(f"{dp_stack.url}/health").status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    other_before = queried(1 - home)
    for i in range(3):
        client.generate(f"{SHARED} After the kill {i}?", max_new_tokens=2)
    # NOTE: before, the lost replica's tree (still the old one until it recovers) pulled them there to wait
    assert queried(1 - home) - other_before >= 3 * 64, "all three served by the live replica"
    dp_stack.wait_healthy()
    for g in range(2):
        assert dp_stack.metric(f'prism_prefix_cache_blocks{{replica="{g}",state="in_use"}}') == 0
