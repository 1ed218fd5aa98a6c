"""Optional OpenTelemetry: OTLP gRPC exporter and a server interceptor opening one SERVER span per RPC, named
by the full method, child of the ``traceparent`` the router put in the gRPC metadata (its batch span).

Prefill and Decode serve many requests, each with its own trace: the router sends one
``prism-request-traceparent: "<request id> <traceparent>"`` entry per request, and the interceptor records,
for each, a span of the same name and duration under that request's trace, linked to the SERVER span, so a
request's trace reaches every shard step that computed it.

On when ``--otlp-endpoint`` or the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``/``OTEL_EXPORTER_OTLP_ENDPOINT``
is set (``OTEL_SDK_DISABLED=true`` wins); the service name is ``--otlp-service-name``, else ``OTEL_SERVICE_NAME``,
else TGI's ``text-generation-inference.server``; the SDK reads the other ``OTEL_*`` variables itself.
A stop waits at most :data:`shard.span_export.SHUTDOWN_TIMEOUT_S` for the receiver to take the last spans.
"""

from __future__ import annotations

import os
import time

import grpc

DEFAULT_SERVICE_NAME = "text-generation-inference.server"
REQUEST_TRACE_KEY = "prism-request-traceparent"  # the router's name for the same key
PER_REQUEST_RPCS = ("Prefill", "Decode")


def otlp_endpoint(flag: str | None) -> str | None:
    """The flag, else the ``OTEL_EXPORTER_OTLP_*`` endpoint; None when unset or ``OTEL_SDK_DISABLED=true``."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    return (flag or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None)


def service_name(flag: str | None) -> str:
    return flag or os.environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME


def setup_tracing(endpoint: str, service_name: str) -> None:
    """Install a global tracer provider exporting to ``endpoint`` (gRPC, batched; a bare ``host:port`` is
    insecure, as ``http://``)."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    from shard.span_export import BoundedBatchSpanProcessor

    insecure = None if "://" in endpoint or "OTEL_EXPORTER_OTLP_INSECURE" in os.environ else True
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=insecure)
    provider.add_span_processor(BoundedBatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def shutdown_tracing() -> None:
    """Export the spans still queued and stop, within ``shard.span_export.SHUTDOWN_TIMEOUT_S`` when the
    receiver is down (the server calls it when it stops; the SDK's exit hook would too, to the same bound)."""
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


def request_traces(metadata: tuple[tuple[str, str | bytes], ...]) -> list[tuple[int, str]]:
    """``(request id, traceparent)`` of every well-formed ``prism-request-traceparent`` entry."""
    out = []
    for key, value in metadata:
        if key != REQUEST_TRACE_KEY or not isinstance(value, str):
            continue
        rid, _, traceparent = value.partition(" ")
        if rid.isdigit() and traceparent:
            out.append((int(rid), traceparent))
    return out


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """SERVER span ``/generate.v3.TextGenerationService/<Rpc>`` around each unary call, and per-request spans
    for Prefill and Decode (see the module doc).

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
        metadata = tuple(handler_call_details.invocation_metadata or ())
        carrier = {k: v for k, v in metadata if isinstance(v, str) and k != REQUEST_TRACE_KEY}
        service, _, rpc = method.strip("/").partition("/")
        per_request = request_traces(metadata) if rpc in PER_REQUEST_RPCS else []

        async def traced(request, context):
            tracer = trace.get_tracer("shard", tracer_provider=self.tracer_provider)
            attrs = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc, "net.transport": "unix"}
            start = time.time_ns()
            with tracer.start_as_current_span(
                method, context=extract(carrier), kind=trace.SpanKind.SERVER, attributes=attrs
            ) as server_span:
                try:
                    return await inner(request, context)
                finally:
                    _per_request_spans(tracer, method, per_request, server_span, start, attrs)

        return grpc.unary_unary_rpc_method_handler(
            traced,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _per_request_spans(tracer, method: str, per_request, server_span, start_ns: int, attrs: dict) -> None:
    from opentelemetry.propagate import extract
    from opentelemetry.trace import Link

    end_ns = time.time_ns()
    link = [Link(server_span.get_span_context())]
    for request_id, traceparent in per_request:
        parent = extract({"traceparent": traceparent})
        one = tracer.start_span(method, context=parent, links=link, start_time=start_ns,
                                attributes={**attrs, "prism.request_id": request_id})
        one.end(end_time=end_ns)
