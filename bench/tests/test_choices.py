"""``python -m bench.choices`` against a fake server: each call asks for its ``n`` with a prompt no call used
before, the hit rate comes from the scrapes around the call, a short answer is an error, and the table has a
row per ``n``."""

from __future__ import annotations

import json

import httpx
import pytest

from bench.choices import measure, report
from bench.tests.test_workloads import _train_tokenizer
from bench.workloads.prompts import PromptBuilder


class FakeServer:
    """``/v1/completions`` answers ``n`` choices (one less with ``short``); ``/metrics`` counts every call's
    prompt as 100 queried tokens, of which the choices after the first hit 90 each."""

    def __init__(self, short: bool = False) -> None:
        self.bodies: list[dict] = []
        self.queried = self.hit = 0
        self.short = short

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/metrics":
            text = f"prism_prefix_cache_queried_tokens {self.queried}\nprism_prefix_cache_hit_tokens {self.hit}\n"
            return httpx.Response(200, text=text)
        body = json.loads(request.content)
        self.bodies.append(body)
        n = body["n"]
        self.queried += 100 * n
        self.hit += 90 * (n - 1)
        choices = [{"index": i, "text": "x"} for i in range(n - (1 if self.short else 0))]
        return httpx.Response(200, json={"choices": choices})


def _run(server: FakeServer, ns: list[int], rounds: int) -> dict:
    builder = PromptBuilder(_train_tokenizer("bytelevel"))
    with httpx.Client(transport=httpx.MockTransport(server)) as client:
        return measure(client, "http://fake", "tgi", builder, ns, 20, 4, rounds)


def test_calls_of_n_choices_with_fresh_prompts_and_their_hit_rates() -> None:
    server = FakeServer()
    results = _run(server, [1, 4], rounds=2)
    assert [b["n"] for b in server.bodies] == [1, 4, 4, 1]  # the order alternates by round
    assert len({b["prompt"] for b in server.bodies}) == 4
    assert [h for _, h in results[1]] == [0.0, 0.0]
    assert [h for _, h in results[4]] == [pytest.approx(270 / 400)] * 2
    lines = report(results).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| 1 |") and lines[3].endswith("| 67.5% |")


def test_fewer_choices_than_asked_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="asked for 3 choices, got 2"):
        _run(FakeServer(short=True), [3], rounds=1)
