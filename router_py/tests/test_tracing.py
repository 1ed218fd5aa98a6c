"""Tracing: off by default (no-op), an incoming traceparent parents the handler span; the real batcher over
real gRPC (fake shard servers) sends, with every Prefill/Decode, the batch span as ``traceparent`` and each
served request's own trace (``prism-request-traceparent``), and links its batch spans to every request; the
standard ``OTEL_*`` variables are read. End to end with a real OTLP receiver: integration-tests/test_tracing_e2e.py.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from router_py.shard_client.fake_shard import FakeOptions
from router_py import tracing
from router_py.tests.test_batcher import close, collect, make_stack, request

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.setup_tracing(None, "text-generation-inference.router", exporter=exporter)
    yield exporter
    tracing.setup_tracing(None, "text-generation-inference.router")


def test_off_by_default_is_a_no_op() -> None:
    assert not tracing.enabled()
    with tracing.span("generate", answer=42) as span:
        assert span is None
        assert tracing.inject_grpc_metadata() == []
    assert tracing.parent_from_headers({"traceparent": TRACEPARENT}) is None


def test_span_and_injected_metadata_share_the_trace(exporter: InMemorySpanExporter) -> None:
    with tracing.span("outer", size=3) as span:
        metadata = dict(tracing.inject_grpc_metadata())
        tracing.set_attributes(span, seed=7, skipped=None)
    (finished,) = exporter.get_finished_spans()
    context = finished.get_span_context()
    assert metadata["traceparent"].split("-")[1:3] == [f"{context.trace_id:032x}", f"{context.span_id:016x}"]
    assert finished.attributes == {"size": 3, "seed": 7}
    assert finished.resource.attributes["service.name"] == "text-generation-inference.router"


def test_invalid_traceparent_starts_a_new_trace(exporter: InMemorySpanExporter) -> None:
    parent = tracing.parent_from_headers({"traceparent": f"ff-{TRACE_ID}-{PARENT_ID}-01"})
    with tracing.span("generate", parent=parent):
        pass
    (finished,) = exporter.get_finished_spans()
    assert finished.parent is None and f"{finished.context.trace_id:032x}" != TRACE_ID


@pytest.mark.parametrize("path", ["/generate", "/generate_stream"])
async def test_incoming_traceparent_parents_handler(exporter, client, path) -> None:
    body = {"inputs": "hello world", "parameters": {}}
    resp = await client.post(path, json=body, headers={"traceparent": TRACEPARENT})
    assert resp.status_code == 200
    spans = {s.name: s for s in exporter.get_finished_spans()}
    handler = spans[path.strip("/")]
    assert f"{handler.context.trace_id:032x}" == TRACE_ID
    assert f"{handler.parent.span_id:016x}" == PARENT_ID and handler.parent.is_remote


@pytest.mark.parametrize(
    ("path", "body", "handler"),
    [
        ("/v1/completions", {"prompt": ["hello world", "hello"], "max_tokens": 3}, "completions"),
        ("/v1/completions", {"prompt": ["hello", "world"], "max_tokens": 3, "stream": True}, "completions"),
        ("/vertex", {"instances": [{"inputs": "hello world"}, {"inputs": "hello"}]}, "vertex_compatibility"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, "chat_completions"),
        ("/", {"inputs": "hello world", "stream": True}, "generate_stream"),
    ],
)
async def test_every_generating_route_joins_the_incoming_trace(exporter, client, path, body, handler) -> None:
    """Every span a request causes is in the trace its ``traceparent`` names, under TGI's handler span.
    Before, /v1/completions and /vertex read no ``traceparent``: each prompt's span started a trace of its own
    (and a streamed completion had no handler span at all)."""
    resp = await client.post(path, json=body, headers={"traceparent": TRACEPARENT})
    assert resp.status_code == 200 and "error" not in resp.text
    spans = exporter.get_finished_spans()
    (top,) = [s for s in spans if s.name == handler]
    assert f"{top.parent.span_id:016x}" == PARENT_ID and top.parent.is_remote
    assert spans and {f"{s.context.trace_id:032x}" for s in spans} == {TRACE_ID}
    assert all(s.parent is not None for s in spans)


async def test_batched_steps_carry_every_requests_trace_to_the_shard(exporter, tmp_path) -> None:
    """Two requests from two traces share one batch: every Prefill/Decode the fake shard receives names both
    requests' ``infer`` spans, the batch spans link to both, and nothing is sent from a fake backend."""
    stack = await make_stack(tmp_path, FakeOptions(step_delay_s=0.01))
    other = "0af7651916cd43dd8448eb211c80319c"
    try:
        async def run(trace_id: str, prompt: str) -> None:
            parent = tracing.parent_from_headers({"traceparent": f"00-{trace_id}-{PARENT_ID}-01"})
            with tracing.span("generate", parent=parent):
                await collect(stack.batcher, request(prompt, max_new_tokens=4))

        await asyncio.gather(run(TRACE_ID, "a b c"), run(other, "d e f"))
    finally:
        await close(stack)
    spans = exporter.get_finished_spans()
    infer = {f"{s.context.trace_id:032x}": s for s in spans if s.name == "infer"}
    assert set(infer) == {TRACE_ID, other}
    assert all(s.parent.span_id == next(h for h in spans if h.name == "generate" and h.context.trace_id
                                        == s.context.trace_id).context.span_id for s in infer.values())
    steps = [(name, md, items) for name, md, items in zip(stack.shard.calls, stack.shard.metadata,
                                                          stack.shard.metadata_items) if name in ("Prefill", "Decode")]
    assert {step[0] for step in steps} == {"Prefill", "Decode"}
    batch_spans = {f"{s.context.span_id:016x}": s for s in spans if s.name in ("prefill", "decode")}
    for name, md, items in steps:
        batch_span_id = md["traceparent"].split("-")[2]
        assert batch_span_id in batch_spans and batch_spans[batch_span_id].name == name.lower()
        linked = {f"{link.context.trace_id:032x}" for link in batch_spans[batch_span_id].links}
        carried = {tp.split("-")[1] for tp in _request_traces(items)}
        assert carried <= linked and carried, (name, md)
    carried_all = {tp.split("-")[1] for _, _, items in steps for tp in _request_traces(items)}
    assert carried_all == {TRACE_ID, other}


def _request_traces(items: list[tuple[str, str]]) -> list[str]:
    return [v.split(" ", 1)[1] for k, v in items if k == tracing.REQUEST_TRACE_KEY]


def test_standard_otel_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME",
                 "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    assert tracing.otlp_endpoint(None) is None
    assert tracing.service_name(None) == "text-generation-inference.router"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "my-llm")
    assert tracing.otlp_endpoint(None) == "http://collector:4317"
    assert tracing.service_name(None) == "my-llm"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317")
    assert tracing.otlp_endpoint(None) == "http://traces:4317"
    assert tracing.otlp_endpoint("http://flag:4317") == "http://flag:4317"
    assert tracing.service_name("flag-name") == "flag-name"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.otlp_endpoint("http://flag:4317") is None


# ---- stopping with the OTLP receiver up or down ------------------------------------------------------------

STOP_LIMIT_S = 4.0  # router_py.span_export.SHUTDOWN_TIMEOUT_S (2 s) and slack for a loaded machine


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP trace receiver (the collector's TraceService) keeping the names of the spans it gets."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            self.names += [s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        return trace_service_pb2.ExportTraceServiceResponse()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_stop_with_the_receiver_down_returns_within_the_bound() -> None:
    """The SDK's shutdown retried the last export with backoff for 7-10 s (OTEL_EXPORTER_OTLP_TIMEOUT) when
    nothing listened on the endpoint; a stop now gives up after 2 s."""
    tracing.setup_tracing(f"http://127.0.0.1:{closed_port()}", "prism-test")
    with tracing.span("generate"):
        pass
    start = time.monotonic()
    tracing.setup_tracing(None, "prism-test")  # turning tracing off shuts the provider down, as a stop does
    assert time.monotonic() - start < STOP_LIMIT_S
    assert not tracing.enabled()


def test_a_stop_delivers_the_last_spans_to_a_receiver_that_is_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")  # NOTE: nothing exported before the stop
    receiver = Receiver()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        tracing.setup_tracing(f"http://127.0.0.1:{port}", "prism-test")
        with tracing.span("generate"), tracing.span("infer"):
            pass
        assert receiver.names == []
        start = time.monotonic()
        tracing.shutdown()
        assert time.monotonic() - start < STOP_LIMIT_S
    finally:
        server.stop(None)
    assert sorted(receiver.names) == ["generate", "infer"]
