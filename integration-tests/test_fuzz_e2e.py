"""Seeded fuzzing of every route against the real stack (issue 16 item 3): no 5xx, no hang, the keep-alive
connection survives every error, and the stack is healthy with every KV block back afterwards. The longer
run: ``python integration-tests/fuzz.py --requests 1000`` (results in docs/robustness.md)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from conftest import Stack
from fuzz import STACK_ARGS, run

CI_REQUESTS = 250


@pytest.fixture(scope="module")
def fuzz_stack() -> Iterator[Stack]:
    s = Stack(STACK_ARGS).wait_healthy()
    yield s
    assert s.close() == 0


def test_fuzzed_requests_get_no_5xx_and_never_hang(fuzz_stack: Stack) -> None:
    report = run(fuzz_stack.url, seed=16, n=CI_REQUESTS)
    assert report.findings == [], report.summary()
    assert sum(report.statuses.values()) == CI_REQUESTS
    assert httpx.get(f"{fuzz_stack.url}/health").status_code == 200
    deadline = time.monotonic() + 20
    while fuzz_stack.metric('prism_prefix_cache_blocks{state="in_use"}') != 0:
        assert time.monotonic() < deadline, "KV blocks still in use after the fuzz run"
        time.sleep(0.1)
    normal = {"inputs": "hello", "parameters": {"max_new_tokens": 3}}
    r = httpx.post(f"{fuzz_stack.url}/generate", json=normal, timeout=60)
    assert r.status_code == 200


MALFORMED = [
    b'{"inputs": "x", "parameters": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    b'{"inputs": "\\ud800"}',
    b'{"inputs": "x", "parameters": {"stop": "\\udc00"}}',
    b"\xff\xfe",
    b'{"inputs": 1}',
]


@pytest.mark.parametrize("path", ["/generate", "/tokenize", "/v1/completions", "/v1/chat/completions"])
def test_keep_alive_connection_survives_every_error(fuzz_stack: Stack, path: str) -> None:
    """On ONE raw connection: each malformed body gets a 4xx, and the connection still answers the next."""
    with socket.create_connection(("127.0.0.1", fuzz_stack.port), timeout=30) as sock:
        reader = sock.makefile("rb")
        ordinary = b'{"inputs": "hi", "prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}'
        for body in MALFORMED + [ordinary]:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status_line = reader.readline()
            assert status_line, f"connection closed after {body[:40]!r}"
            status = int(status_line.split()[1])
            headers = {}
            while (line := reader.readline()) not in (b"\r\n", b""):
                key, _, value = line.decode().partition(":")
                headers[key.strip().lower()] = value.strip()
            reader.read(int(headers.get("content-length", "0")))
            assert status < 500, (status, body[:60])
            assert headers.get("connection", "").lower() != "close"
