"""``prism-launcher --num-shard 2`` on CPU: two gloo ranks of one tensor-parallel group behind the router,
driven by the PyPI ``text-generation`` client. Greedy tokens equal transformers' on the same weights, alone
and in a concurrent batch, streamed or not; each rank serves on its own socket."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from text_generation import Client

from conftest import STARTUP_TIMEOUT_S, Stack, free_port, transformers_greedy

PROMPTS = ("The quick brown fox", "Once upon a time there was", "A cache that keeps them can answer", "Hello")
NEW = 8
SMALL = ["--max-batch-prefill-tokens", "512", "--max-input-tokens", "400", "--max-total-tokens", "512"]


@pytest.fixture(scope="module")
def tp_stack() -> Iterator[Stack]:
    s = Stack(["--num-shard", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
               "--num-blocks", "256", "--dtype", "float32", *SMALL]).wait_healthy()
    yield s
    assert s.close() == 0, "the launcher did not shut down cleanly on SIGTERM"


@pytest.fixture(scope="module")
def expected() -> dict[str, list[int]]:
    """transformers' greedy continuation of each prompt (fp32), the oracle."""
    return transformers_greedy(PROMPTS, NEW)


def test_each_rank_serves_on_its_own_socket(tp_stack: Stack) -> None:
    assert os.path.exists(f"{tp_stack.uds}-0") and os.path.exists(f"{tp_stack.uds}-1")
    assert not os.path.exists(f"{tp_stack.uds}-2")
    log = tp_stack.process.log_path.read_text(errors="replace")
    assert "tensor parallel rank 0 of 2 (gloo)" in log and "tensor parallel rank 1 of 2 (gloo)" in log


def test_greedy_tokens_equal_transformers_alone_and_batched(tp_stack: Stack, expected) -> None:
    client = Client(tp_stack.url, timeout=120)

    def tokens(prompt: str) -> list[int]:
        r = client.generate(prompt, max_new_tokens=NEW, decoder_input_details=False)
        assert r.details.generated_tokens == NEW
        return [t.id for t in r.details.tokens]

    assert tokens(PROMPTS[0]) == expected[PROMPTS[0]]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        got = dict(zip(PROMPTS, pool.map(tokens, PROMPTS)))
    assert got == expected
    streamed = [r.token.id for r in client.generate_stream(PROMPTS[1], max_new_tokens=NEW)]
    assert streamed == expected[PROMPTS[1]]


def test_a_model_that_does_not_split_stops_the_launcher_with_the_reason() -> None:
    s = Stack(["--num-shard", "3", "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
               "--num-blocks", "64", "--dtype", "float32"])
    try:
        assert s.process.proc.wait(STARTUP_TIMEOUT_S) != 0
        log = s.process.log_path.read_text(errors="replace")
        reason = "--num-shard 3: the model's attention heads 4, KV heads 2, intermediate size 128 not"
        assert reason in log
    finally:
        s.close()
