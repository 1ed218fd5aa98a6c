"""A seeded HTTP fuzzer for the launched stack: every route, valid bodies mutated with hostile values, broken
JSON, odd headers, wrong methods and content types. A finding is a 5xx or a request that does not finish in
time.

CI runs a bounded slice (``test_fuzz_e2e.py``). The longer run launches its own stack (or targets ``--url``):

    PYTHONPATH=. python integration-tests/fuzz.py --requests 1000 --seed 16

It prints one line per finding and a summary (status counts, slowest request); exit code 1 on any finding.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# The stack the fuzzer expects: small limits keep every accepted generation short.
STACK_ARGS = ["--num-blocks", "256", "--max-input-tokens", "96", "--max-total-tokens", "128",
              "--max-batch-prefill-tokens", "256", "--payload-limit", "100000"]
TIMEOUT_S = 30.0

POST_ROUTES = ["/", "/generate", "/generate_stream", "/v1/chat/completions", "/v1/completions", "/tokenize",
               "/chat_tokenize", "/invocations", "/vertex"]
GET_ROUTES = ["/", "/health", "/ping", "/info", "/metrics", "/v1/models", "/api-doc/openapi.json", "/docs"]
PARAMS = ["best_of", "temperature", "repetition_penalty", "frequency_penalty", "top_k", "top_p", "typical_p",
          "do_sample", "max_new_tokens", "return_full_text", "stop", "truncate", "watermark", "details",
          "decoder_input_details", "seed", "top_n_tokens", "grammar", "adapter_id"]
OPENAI_FIELDS = ["model", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "stream_options",
                 "logprobs", "top_logprobs", "frequency_penalty", "presence_penalty", "n", "logit_bias",
                 "response_format", "tools", "tool_choice", "suffix", "repetition_penalty", "echo",
                 "prompt_logprobs", "skip_special_tokens"]
NASTY = [None, True, False, 0, -1, 1, 2, 5, 7, 1e-45, -1e-45, 1e308, -1e308, 0.5, 1.0, 2**31, 2**32, 2**64,
         -(2**63), 3.5, "", "x", "1", "null", "\u0000", "\U0001F600", "é" * 50, "a" * 3000, [], [1], ["a"],
         ["a"] * 10, {}, {"type": "json", "value": {}}, {"type": "regex", "value": "[a-z]+"},
         {"type": "json", "value": {"properties": {"a": {"type": "string"}}}}, {"a": [None]}, [[[]]],
         {"include_usage": True}, {"include_usage": "yes"}]
RAW = [b"", b"{", b"[", b"null", b"42", b'"s"', b"{}", b"[]", b'{"inputs": }', b'{"inputs": "x",}',
       b"\xff\xfe\xfa", b'{"inputs": NaN}', b'{"inputs": "x", "parameters": {"temperature": Infinity}}',
       b'{"inputs": "\\ud800"}', b'{"inputs": "\\udc00x"}', b'{"inputs": "a\\u0000b"}',
       b'{"prompt": "\\ud83d"}', b'{"messages": [{"role": "user", "content": "\\udfff"}]}',
       b'{"inputs": "x"' + b" " * 1000 + b"}", b'{"inputs": "' + b"\\" + b'"}']


HEADERS = [("traceparent", "00-zz-yy-01"), ("traceparent", "ff-" + "0" * 32 + "-" + "0" * 16 + "-00"),
           ("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01"), ("authorization", "Bearer \u00e9"),
           ("authorization", "x" * 4000), ("x-tenant", "é" * 10), ("accept", "text/event-stream"),
           ("content-encoding", "gzip"), ("expect", "100-continue"), ("x-request-id", "\u65e5\u672c")]


@dataclass
class Case:
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str | bytes] = field(default_factory=lambda: {"content-type": "application/json"})

    def describe(self) -> str:
        body = (self.body or b"")[:160]
        return f"{self.method} {self.path} {self.headers.get('content-type')} {body!r}"


def _prompt(rng: random.Random) -> str:
    words = ["hello", "world", "the", "fox", "é", "日本", "\U0001F600", "<s>", "</s>", "\n", "{{", "}}",
             " "]
    return "".join(rng.choice(words) + rng.choice(["", " "]) for _ in range(rng.randint(0, 40)))


def _valid_body(rng: random.Random, path: str) -> dict:
    if path in ("/v1/chat/completions", "/chat_tokenize"):
        roles = ["system", "user", "assistant", "tool", "bad", ""]
        msgs = [{"role": rng.choice(roles[:3]), "content": _prompt(rng)} for _ in range(rng.randint(1, 3))]
        return {"model": "tgi", "messages": msgs, "max_tokens": rng.randint(1, 20)}
    if path == "/v1/completions":
        return {"model": "tgi", "prompt": _prompt(rng) or "x", "max_tokens": rng.randint(1, 20)}
    if path == "/vertex":
        return {"instances": [{"inputs": _prompt(rng) or "x", "parameters": {"max_new_tokens": 4}}]}
    return {"inputs": _prompt(rng) or "x", "parameters": {"max_new_tokens": rng.randint(1, 20)}}


def _nasty(rng: random.Random) -> object:
    return copy.deepcopy(rng.choice(NASTY))  # NOTE: a shared mutable value could end up inside itself


def _mutate(rng: random.Random, body: dict) -> dict:
    for _ in range(rng.randint(0, 4)):
        kind = rng.random()
        target = body.get("parameters") if isinstance(body.get("parameters"), dict) else body
        if kind < 0.55:
            key = rng.choice(PARAMS if target is not body else PARAMS + OPENAI_FIELDS + ["inputs", "prompt"])
            target[key] = _nasty(rng)
        elif kind < 0.7 and body:
            body.pop(rng.choice(list(body)))
        elif kind < 0.8:
            body["messages"] = rng.choice([[], [{"role": rng.choice(["user", "bad", 1])}], "x",
                                           [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                                           [{"role": "user", "content": _nasty(rng)}]])
        elif kind < 0.9:
            body["stream"] = rng.choice([True, False, "yes", None])
        else:
            body["parameters"] = _nasty(rng)
    return body


def _nested(rng: random.Random) -> bytes:
    depth = rng.choice([127, 128, 129, 500, 1000, 5000])
    return b'{"inputs": "x", "parameters": {"grammar": ' + b"[" * depth + b"]" * depth + b"}}"


def cases(seed: int, n: int) -> Iterator[Case]:
    """``n`` requests, the same for the same seed."""
    rng = random.Random(seed)
    for _ in range(n):
        roll = rng.random()
        if roll < 0.08:
            yield Case("GET", rng.choice(GET_ROUTES), headers={})
        elif roll < 0.12:
            method = rng.choice(["PUT", "DELETE", "PATCH", "GET", "OPTIONS"])
            yield Case(method, rng.choice(POST_ROUTES + ["/nope", "/generate/", "//", "/v1"]), b"{}")
        elif roll < 0.22:
            yield Case("POST", rng.choice(POST_ROUTES), rng.choice(RAW))
        elif roll < 0.26:
            yield Case("POST", rng.choice(POST_ROUTES), _nested(rng))
        elif roll < 0.30:
            ctype = rng.choice(["text/plain", "", "application/x-www-form-urlencoded",
                                "application/json; x=y", "application/problem+json"])
            path = rng.choice(POST_ROUTES)
            yield Case("POST", path, json.dumps(_valid_body(rng, path)).encode(), {"content-type": ctype})
        else:
            path = rng.choice(POST_ROUTES)
            body = _mutate(rng, _valid_body(rng, path))
            case = Case("POST", path, json.dumps(body, ensure_ascii=rng.random() < 0.5).encode())
            if rng.random() < 0.15:
                key, value = rng.choice(HEADERS)
                case.headers[key] = value.encode("utf-8")  # NOTE: raw UTF-8 bytes on the wire
            yield case


@dataclass
class Report:
    statuses: Counter = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)
    slowest: tuple[float, str] = (0.0, "")

    def summary(self) -> str:
        return (f"{sum(self.statuses.values())} requests, statuses {dict(sorted(self.statuses.items()))}, "
                f"{len(self.findings)} findings, "
                f"slowest {self.slowest[0]:.2f} s ({self.slowest[1][:100]})")


def run(url: str, seed: int, n: int, timeout_s: float = TIMEOUT_S, concurrency: int = 4) -> Report:
    """Send the cases from ``concurrency`` workers, each over one keep-alive client (an error must not break
    the connection for the worker's next request); hostile requests share batches with ordinary ones."""
    report = Report()
    all_cases = list(cases(seed, n))
    lock = threading.Lock()

    def worker(mine: list[Case]) -> None:
        with httpx.Client(base_url=url, timeout=timeout_s) as client:
            for case in mine:
                try:
                    outcome = _send(client, case, timeout_s)
                except Exception as e:  # noqa: BLE001 - the client refused to send it: a fuzzer bug, reported
                    outcome = (None, b"", 0.0, f"CLIENT {type(e).__name__} {e}")
                with lock:
                    _record(report, case, *outcome)

    threads = [threading.Thread(target=worker, args=(all_cases[i::concurrency],)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return report


def _send(client: httpx.Client, case: Case, timeout_s: float) -> tuple[int | None, bytes, float, str]:
    start = time.monotonic()
    try:
        with client.stream(case.method, case.path, content=case.body, headers=case.headers) as r:
            body = r.read()
        return r.status_code, body, time.monotonic() - start, ""
    except httpx.TimeoutException:
        return None, b"", time.monotonic() - start, f"HANG after {timeout_s:.0f} s"
    except httpx.TransportError as e:
        return None, b"", time.monotonic() - start, f"TRANSPORT {type(e).__name__} {e}"


def _record(report: Report, case: Case, status: int | None, body: bytes, took: float, failure: str) -> None:
    if status is None:
        report.findings.append(f"{failure}: {case.describe()}")
        return
    report.statuses[status] += 1
    report.slowest = max(report.slowest, (took, case.describe()))
    # NOTE: a 424 is a finding too: every accepted parameter is numerically safe, and a request failing alone
    # in the shard means accepted input broke generation (issue 16 item 2).
    if (status >= 500 or status == 424 or b'"http_status_code":5' in body or b'"http_status_code":424' in body
            or b'"error_type":"internal"' in body or b'"error_type":"generation"' in body):
        report.findings.append(f"{status} {body[:200]!r}: {case.describe()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--url", default=None, help="fuzz a running server instead of launching one")
    args = parser.parse_args(argv)
    stack = None
    if args.url is None:
        sys.path.insert(0, str(Path(__file__).parent))
        from conftest import Stack

        stack = Stack(STACK_ARGS).wait_healthy()
    try:
        start = time.monotonic()
        report = run(args.url or stack.url, args.seed, args.requests, concurrency=args.concurrency)
        health = httpx.get(f"{args.url or stack.url}/health", timeout=TIMEOUT_S).status_code
        for finding in report.findings:
            print(finding)
        print(f"seed {args.seed}, {args.concurrency} workers: {report.summary()}; /health {health}; "
              f"{time.monotonic() - start:.0f} s")
        return 1 if report.findings or health != 200 else 0
    finally:
        if stack is not None:
            stack.close()


if __name__ == "__main__":
    raise SystemExit(main())
