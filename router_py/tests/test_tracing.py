"""Tracing: off by default (no-op), an incoming traceparent parents the handler span, and the metadata
injected for the shard carries the same trace."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from router_py import tracing

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
async def test_incoming_traceparent_parents_handler_and_reaches_backend(
    exporter, client, backend, path
) -> None:
    body = {"inputs": "hello world", "parameters": {}}
    resp = await client.post(path, json=body, headers={"traceparent": TRACEPARENT})
    assert resp.status_code == 200
    spans = {s.name: s for s in exporter.get_finished_spans()}
    handler = spans[path.strip("/")]
    assert f"{handler.context.trace_id:032x}" == TRACE_ID
    assert f"{handler.parent.span_id:016x}" == PARENT_ID and handler.parent.is_remote
    (metadata,) = backend.grpc_metadata
    assert dict(metadata)["traceparent"] == f"00-{TRACE_ID}-{handler.context.span_id:016x}-01"
