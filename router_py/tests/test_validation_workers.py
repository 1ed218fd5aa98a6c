"""Prompts are tokenized on the validation workers (TGI's ``--validation-workers``), not on the event loop."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from router_py.http.server import create_app
from router_py.router_config import RouterConfig
from router_py.tokenizer import Tokenizer


class _SlowTokenizer:
    """The real tokenizer, but ``encode`` takes 0.3 s (a very long prompt) and notes its thread."""

    def __init__(self, inner: Tokenizer) -> None:
        self._inner = inner
        self.threads: set[str] = set()

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.threads.add(threading.current_thread().name)
        time.sleep(0.3)
        return self._inner.encode(text, add_special_tokens)

    def encode_with_offsets(self, text: str, add_special_tokens: bool = True) -> list[dict]:
        self.threads.add(threading.current_thread().name)
        return self._inner.encode_with_offsets(text, add_special_tokens)


async def test_a_long_tokenization_does_not_hold_the_event_loop(backend, tokenizer, metrics) -> None:
    config = RouterConfig(
        model_id="prism-test", max_input_tokens=64, max_total_tokens=128, validation_workers=3
    )
    slow = _SlowTokenizer(tokenizer)
    app = create_app(backend, slow, config, metrics)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as client:
        start = time.perf_counter()
        generating = asyncio.create_task(client.post("/generate", json={"inputs": "hello world"}))
        await asyncio.sleep(0.05)  # its prompt is being tokenized now
        info = await client.get("/info")
        answered_in = time.perf_counter() - start
        still_tokenizing = not generating.done()
        assert (await generating).status_code == 200
        assert (await client.post("/tokenize", json={"inputs": "hello world"})).status_code == 200
    assert answered_in < 0.25 and still_tokenizing  # not after the 0.3 s tokenization
    assert info.json()["validation_workers"] == 3
    assert slow.threads and all(name.startswith("validation") for name in slow.threads)


def test_validation_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="`validation_workers` must be > 0"):
        RouterConfig(validation_workers=0)
