"""``prism-launcher --data-parallel 2`` on CPU: two replicas of the demo model behind one router, driven by the
PyPI ``text-generation`` client. Greedy tokens equal transformers' (alone and concurrent); requests sharing a
long prefix are served by one replica, which reuses its cache (per-replica /metrics)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from text_generation import Client

from conftest import Stack
from router_py.launch.model_source import demo_model

PROMPTS = ("The quick brown fox", "Once upon a time there was", "A cache that keeps them can answer", "Hello")
NEW = 6
SHARED = "A long shared instruction that every question repeats before it asks anything. " * 6


@pytest.fixture(scope="module")
def dp_stack() -> Iterator[Stack]:
    s = Stack(["--data-parallel", "2", "--num-blocks", "256", "--dtype", "float32",
               "--max-batch-prefill-tokens", "512", "--max-input-tokens", "400", "--max-total-tokens", "512"]
              ).wait_healthy()
    yield s
    assert s.close() == 0, "the launcher did not shut down cleanly on SIGTERM"


@pytest.fixture(scope="module")
def expected() -> dict[str, list[int]]:
    """transformers' greedy continuation of each prompt (fp32), the oracle."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = demo_model()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    out = {}
    for p in PROMPTS:
        ids = tok(p, return_tensors="pt").input_ids
        gen = model.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
        out[p] = gen[0, ids.shape[1]:].tolist()
    return out


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
