"""The tracing interceptor opens a SERVER span per RPC, named by full method, under the caller's trace."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from proto.generate.v3 import generate_pb2 as pb
from proto.generate.v3 import generate_pb2_grpc as pb_grpc
from shard.tracing import TracingInterceptor

TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


class _Health(pb_grpc.TextGenerationServiceServicer):
    async def Health(self, request, context):
        return pb.HealthResponse()

    async def Decode(self, request, context):
        return pb.DecodeResponse()


async def test_server_span_continues_the_routers_trace(tmp_path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = grpc.aio.server(interceptors=[TracingInterceptor(provider)])
    pb_grpc.add_TextGenerationServiceServicer_to_server(_Health(), server)
    address = f"unix://{tmp_path}/t"
    server.add_insecure_port(address)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            await pb_grpc.TextGenerationServiceStub(channel).Health(
                pb.HealthRequest(), metadata=[("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")]
            )
    finally:
        await server.stop(None)
    (span,) = exporter.get_finished_spans()
    assert span.name == "/generate.v3.TextGenerationService/Health"
    assert span.kind == SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert format(span.parent.span_id, "016x") == PARENT_ID
    assert span.attributes["rpc.method"] == "Health"


async def test_decode_records_a_span_in_every_served_requests_trace(tmp_path) -> None:
    """The router's batch span is the RPC's parent; each ``prism-request-traceparent`` gets a span of the same
    name under its own trace, linked to the SERVER span."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = grpc.aio.server(interceptors=[TracingInterceptor(provider)])
    pb_grpc.add_TextGenerationServiceServicer_to_server(_Health(), server)
    address = f"unix://{tmp_path}/t"
    server.add_insecure_port(address)
    await server.start()
    requests = {7: "0af7651916cd43dd8448eb211c80319c", 9: "11111111111111111111111111111111"}
    metadata = [("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")]
    metadata += [("prism-request-traceparent", f"{rid} 00-{tid}-b7ad6b7169203331-01") for rid, tid in requests.items()]
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            await pb_grpc.TextGenerationServiceStub(channel).Decode(pb.DecodeRequest(), metadata=metadata)
    finally:
        await server.stop(None)
    spans = exporter.get_finished_spans()
    (rpc,) = [s for s in spans if s.kind == SpanKind.SERVER]
    assert format(rpc.context.trace_id, "032x") == TRACE_ID
    per_request = {s.attributes["prism.request_id"]: s for s in spans if s.kind != SpanKind.SERVER}
    assert set(per_request) == set(requests)
    for rid, span in per_request.items():
        assert span.name == "/generate.v3.TextGenerationService/Decode"
        assert format(span.context.trace_id, "032x") == requests[rid]
        assert format(span.parent.span_id, "016x") == "b7ad6b7169203331"
        assert [link.context.span_id for link in span.links] == [rpc.context.span_id]


STOP_LIMIT_S = 4.0  # shard.span_export.SHUTDOWN_TIMEOUT_S (2 s) and slack for a loaded machine
EXIT_AFTER_A_SPAN = """
import sys, time
from opentelemetry import trace
from shard.tracing import setup_tracing
setup_tracing(sys.argv[1], "prism-test")
with trace.get_tracer("shard").start_as_current_span("/generate.v3.TextGenerationService/Prefill"):
    pass
print(time.monotonic(), flush=True)
"""  # then the interpreter exits: the SDK's exit hook shuts the global provider down


def test_exit_with_the_receiver_down_returns_within_the_bound() -> None:
    """A shard process that stops with a span queued and nothing listening on the OTLP endpoint: the SDK's
    shutdown retried the export with backoff for 7-10 s; now the process is gone within 2 s."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", EXIT_AFTER_A_SPAN, f"http://127.0.0.1:{closed}"], cwd=root,
                          capture_output=True, text=True, timeout=60, check=False)
    gone = time.monotonic()
    assert proc.returncode == 0, proc.stderr
    assert gone - float(proc.stdout.split()[-1]) < STOP_LIMIT_S  # NOTE: CLOCK_MONOTONIC is system-wide
