"""The tracing interceptor opens a SERVER span per RPC, named by full method, under the caller's trace."""

from __future__ import annotations

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
