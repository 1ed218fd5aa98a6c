"""Tracing end to end: the launched router and shard export over OTLP/gRPC to a real OTLP trace receiver in
this process (the collector's TraceService from opentelemetry-proto on a loopback port), configured only by the
standard ``OTEL_*`` variables. Two concurrent requests with their own ``traceparent`` share batches; each trace
runs from the HTTP span through the router's ``infer`` span to a shard span for every Prefill/Decode that
computed the request, and the router's batch spans link to the requests they serve."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from conftest import Stack

PARENT_ID = "00f067aa0ba902b7"
TRACES = {"/generate": "4bf92f3577b34da6a3ce929d0e0e4736", "/generate_stream": "0af7651916cd43dd8448eb211c80319c"}
SHARD_STEPS = ("/generate.v3.TextGenerationService/Prefill", "/generate.v3.TextGenerationService/Decode")


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every exported span as (service.name, instrumentation scope, span)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, object]] = []
        self.lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 (gRPC method name)
        with self.lock:
            for rs in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    self.spans += [(attrs.get("service.name", ""), ss.scope.name, s) for s in ss.spans]
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> list[tuple[str, str, object]]:
        with self.lock:
            return [x for x in self.spans if x[2].trace_id.hex() == trace_id]


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[Stack, Receiver]]:
    receiver = Receiver()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_SERVICE_NAME": "prism-e2e",
           "OTEL_BSP_SCHEDULE_DELAY": "100"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # NOTE: the launcher (and so router and shard) inherit these at spawn
    try:
        stack = Stack(["--num-blocks", "512", "--max-batch-prefill-tokens", "1024", "--max-input-tokens", "1000",
                       "--max-total-tokens", "1100"])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v
    try:
        yield stack.wait_healthy(), receiver
    finally:
        assert stack.close() == 0
        server.stop(None)


def send(url: str, path: str, trace_id: str) -> None:
    body = {"inputs": f"Tracing request on {path} with its own trace", "parameters": {"max_new_tokens": 6}}
    headers = {"traceparent": f"00-{trace_id}-{PARENT_ID}-01"}
    resp = httpx.post(f"{url}{path}", json=body, headers=headers, timeout=120)
    assert resp.status_code == 200, resp.text


def wait_for_spans(receiver: Receiver, trace_id: str, timeout_s: float = 30.0) -> list[tuple[str, str, object]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        spans = receiver.of_trace(trace_id)
        if any(s.name in SHARD_STEPS[1:] for _, _, s in spans) and any(s.name == "infer" for _, _, s in spans):
            time.sleep(1.0)  # the last batch of the other process
            return receiver.of_trace(trace_id)
        time.sleep(0.2)
    raise AssertionError(f"trace {trace_id} incomplete: {[s.name for _, _, s in receiver.of_trace(trace_id)]}")


def test_one_trace_from_the_http_request_through_every_shard_step(traced) -> None:
    stack, receiver = traced
    threads = [threading.Thread(target=send, args=(stack.url, p, t)) for p, t in TRACES.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    for path, trace_id in TRACES.items():
        spans = wait_for_spans(receiver, trace_id)
        by_name: dict[str, list] = {}
        for service, scope, span in spans:
            assert service == "prism-e2e"
            by_name.setdefault(span.name, []).append((scope, span))
        (handler,) = [s for _, s in by_name[path.strip("/")]]
        assert handler.parent_span_id.hex() == PARENT_ID
        (infer,) = [s for _, s in by_name["infer"]]
        assert infer.parent_span_id == handler.span_id
        shard_steps = [(scope, s) for name in SHARD_STEPS for scope, s in by_name.get(name, [])]
        assert {scope for scope, _ in shard_steps} == {"shard"}
        assert all(s.parent_span_id == infer.span_id for _, s in shard_steps)
        assert len(by_name.get(SHARD_STEPS[0], [])) >= 1 and len(by_name.get(SHARD_STEPS[1], [])) >= 1
        with receiver.lock:
            batch_spans = [s for _, scope, s in receiver.spans if scope == "router_py"
                           and s.name in ("prefill", "decode")
                           and any(link.span_id == infer.span_id for link in s.links)]
        # every router batch step that served the request caused exactly one shard span in its trace
        assert len(batch_spans) == len(shard_steps) >= 2
