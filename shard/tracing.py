"""Optional OpenTelemetry: OTLP gRPC exporter and a server interceptor opening one SERVER span per RPC,
named by the full method, child of the ``traceparent`` the router put in the gRPC metadata."""

from __future__ import annotations

import grpc


def setup_tracing(endpoint: str, service_name: str) -> None:
    """Install a global tracer provider exporting to ``endpoint`` (insecure gRPC, batched)."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    trace.set_tracer_provider(provider)


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """SERVER span ``/generate.v3.TextGenerationService/<Rpc>`` around each unary call.

    ``tracer_provider``: None = the global one (installed by :func:`setup_tracing`); tests pass their own.
    """

    def __init__(self, tracer_provider: object | None = None) -> None:
        self.tracer_provider = tracer_provider

    async def intercept_service(self, continuation, handler_call_details):
        from opentelemetry import trace
        from opentelemetry.propagate import extract

        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner, method = handler.unary_unary, handler_call_details.method
        carrier = {k: v for k, v in (handler_call_details.invocation_metadata or ()) if isinstance(v, str)}
        service, _, rpc = method.strip("/").partition("/")

        async def traced(request, context):
            tracer = trace.get_tracer("shard", tracer_provider=self.tracer_provider)
            attrs = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc, "net.transport": "unix"}
            with tracer.start_as_current_span(
                method, context=extract(carrier), kind=trace.SpanKind.SERVER, attributes=attrs
            ):
                return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            traced,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
