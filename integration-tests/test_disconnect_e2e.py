"""Clients that leave and long generations (issue 16 item 4), against the real stack: a non-streamed request
whose client disconnected leaves the batch within a step or two (not at the end of its 1,024-token round), its
blocks return, so do those of streams left just before their last token, the router logs no "Task was
destroyed but it is pending!", and a generation past 3,072 tokens gets every token it asked for."""

from __future__ import annotations

import socket
import time

import httpx

from conftest import Stack


def _raw_post(stack: Stack, path: str, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", stack.port))
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    return sock


def _wait_idle(stack: Stack, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if stack.metric("tgi_batch_current_size") == 0 and stack.metric("tgi_queue_size") == 0:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"still generating {timeout_s} s after the client left")


def test_non_streamed_request_stops_when_its_client_leaves(stack: Stack) -> None:
    dropped = stack.metric('tgi_request_failure{err="dropped"}') if "dropped" in httpx.get(
        f"{stack.url}/metrics").text else 0.0
    body = b'{"inputs": "tell me a long story", "parameters": {"max_new_tokens": 1000, "do_sample": false}}'
    sock = _raw_post(stack, "/generate", body)
    deadline = time.monotonic() + 30
    while stack.metric("tgi_batch_current_size") == 0:  # wait until it is generating
        assert time.monotonic() < deadline
        time.sleep(0.02)
    sock.close()
    took = _wait_idle(stack, 3.0)
    assert took < 3.0
    assert stack.metric('tgi_request_failure{err="dropped"}') == dropped + 1
    assert stack.metric('prism_prefix_cache_blocks{state="in_use"}') == 0
    # the server is fine: the same request completes for a client that stays
    r = httpx.post(f"{stack.url}/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 5}},
                   timeout=60)
    assert r.status_code == 200


def test_streams_dropped_mid_way_log_no_pending_task(stack: Stack) -> None:
    for _ in range(3):
        sock = _raw_post(stack, "/generate_stream",
                         b'{"inputs": "go", "parameters": {"max_new_tokens": 500}}')
        sock.recv(200)
        sock.close()
    _wait_idle(stack, 10.0)
    time.sleep(0.5)
    assert "Task was destroyed but it is pending" not in stack.process.log_tail(200_000)


def test_streams_left_before_their_last_token_hold_no_blocks(stack: Stack) -> None:
    """A client that reads its first token and leaves, its request finishing in the next step or two: each
    held its blocks (and its cached path) for good before, until no request could be admitted."""
    for n in range(12):
        body = f'{{"inputs": "leave before the end {n}", "parameters": {{"max_new_tokens": {2 + n % 3}}}}}'
        sock = _raw_post(stack, "/generate_stream", body.encode())
        sock.settimeout(30)
        received = b""
        while b"data:" not in received:  # the headers may come alone first
            chunk = sock.recv(4096)
            assert chunk, "the stream ended before its first token"
            received += chunk
        sock.close()
    _wait_idle(stack, 10.0)
    time.sleep(0.2)
    assert stack.metric('prism_prefix_cache_blocks{state="in_use"}') == 0


def test_generation_past_3072_tokens_is_not_cut_short(stack: Stack) -> None:
    """With the demo model, "once upon a time" generates text whose re-tokenization is longer than the tokens
    generated: the fourth round's prompt no longer fit and the generation stopped at 3,072 with ``length``."""
    prompt = "once upon a time"
    n_input = len(httpx.post(f"{stack.url}/tokenize", json={"inputs": prompt}).json())
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 4000, "details": True}}
    details = httpx.post(f"{stack.url}/generate", json=body, timeout=600).json()["details"]
    info = httpx.get(f"{stack.url}/info").json()
    assert n_input + 4000 <= info["max_total_tokens"]
    # greedy on the fixed-seed demo model: no EOS in these 4,000 tokens
    assert (details["finish_reason"], details["generated_tokens"]) == ("length", 4000)
