"""OpenTelemetry for the router (tgi-compat 5): off unless an OTLP endpoint is given (``--otlp-endpoint``, or
the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``).

When on, spans go through an OTLP gRPC exporter and a BatchSpanProcessor (which reads ``OTEL_BSP_*``); the SDK
also reads ``OTEL_TRACES_SAMPLER``/``_ARG``, ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_EXPORTER_OTLP_HEADERS``/
``_TIMEOUT``/``_INSECURE``; ``OTEL_SDK_DISABLED=true`` turns it off. The service name is ``--otlp-service-name``,
else ``OTEL_SERVICE_NAME``, else TGI's ``text-generation-inference.router``.

How a request's trace connects (TGI's shape, carried through to the shard):

    HTTP span (parent: incoming ``traceparent``) ─▶ ``infer`` span (the request in the batcher, all rounds)
    ``prefill``/``decode`` batch span (a root, as TGI's batch span) ──links──▶ every ``infer`` span it serves
        └─ gRPC metadata: ``traceparent`` = the batch span, and one ``prism-request-traceparent: "<id> <tp>"``
           per request served: the shard opens a span per request under that request's ``infer`` span, so one
           trace id runs from the HTTP request through every shard span it caused.

When off, :func:`span` yields ``None`` and :func:`inject_grpc_metadata` returns ``[]`` without touching OTel.

A stop waits at most :data:`router_py.span_export.SHUTDOWN_TIMEOUT_S` for the receiver to take the last spans
(with the receiver down, the SDK's own shutdown retried the export for 7-20 s).

NOTE: tracing state is process-wide by nature (as OTel's own global provider); it lives in one holder object
that :func:`setup_tracing` replaces, rather than in OTel's set-once global, so tests can switch it on and off.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

TRACER_NAME = "router_py"
DEFAULT_SERVICE_NAME = "text-generation-inference.router"
REQUEST_TRACE_KEY = "prism-request-traceparent"  # gRPC metadata: "<request id> <traceparent>", one per request


@dataclass
class _TracingState:
    tracer: Tracer | None = None
    provider: Any = None


_STATE = _TracingState()
_PROPAGATOR = TraceContextTextMapPropagator()
_REQUEST_SPANS: ContextVar[Mapping[int, Any]] = ContextVar("prism_request_spans", default={})


def otlp_endpoint(flag: str | None) -> str | None:
    """The OTLP endpoint: the flag, else ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, else
    ``OTEL_EXPORTER_OTLP_ENDPOINT``; None (tracing off) when none is set or ``OTEL_SDK_DISABLED=true``."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    return (flag or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None)


def service_name(flag: str | None, default: str = DEFAULT_SERVICE_NAME) -> str:
    """The flag, else ``OTEL_SERVICE_NAME``, else ``default``."""
    return flag or os.environ.get("OTEL_SERVICE_NAME") or default


def setup_tracing(otlp_endpoint: str | None, service_name: str, exporter: SpanExporter | None = None) -> None:
    """Turn tracing on (endpoint or ``exporter`` given) or off (neither). ``exporter`` replaces the OTLP one
    and is flushed synchronously (SimpleSpanProcessor): for tests with ``InMemorySpanExporter``."""
    if _STATE.provider is not None:
        _STATE.provider.shutdown()
    _STATE.tracer, _STATE.provider = None, None
    if otlp_endpoint is None and exporter is None:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # NOTE: "http://host:port" is insecure and "https://" secure by the exporter's own rule; a bare
        # "host:port" (TGI's docs use both) stays insecure unless OTEL_EXPORTER_OTLP_INSECURE says otherwise.
        insecure = None if "://" in otlp_endpoint or "OTEL_EXPORTER_OTLP_INSECURE" in os.environ else True
        from router_py.span_export import BoundedBatchSpanProcessor

        otlp = OTLPSpanExporter(endpoint=otlp_endpoint, insecure=insecure)
        provider.add_span_processor(BoundedBatchSpanProcessor(otlp))
    _STATE.tracer, _STATE.provider = provider.get_tracer(TRACER_NAME), provider


def enabled() -> bool:
    return _STATE.tracer is not None


def shutdown() -> None:
    """Export the spans still queued and turn tracing off, within ``span_export.SHUTDOWN_TIMEOUT_S`` when the
    receiver is down (the router calls it on a stop; the SDK's exit hook would too, to the same bound)."""
    setup_tracing(None, "")


def parent_from_headers(headers: Mapping[str, str]) -> otel_context.Context | None:
    """The remote parent carried by a ``traceparent`` header (None when tracing is off or the header is absent
    or invalid: version ``ff``, wrong part count, zero ids)."""
    if _STATE.tracer is None or "traceparent" not in headers:
        return None
    return _PROPAGATOR.extract(carrier={"traceparent": headers["traceparent"]})


@contextmanager
def span(name: str, parent: otel_context.Context | None = None, **attrs: Any) -> Iterator[Span | None]:
    """A span made current for the block; a no-op yielding None when tracing is off. ``parent`` (from
    :func:`parent_from_headers`) overrides the current span as parent."""
    tracer = _STATE.tracer
    if tracer is None:
        yield None
        return
    clean = {k: v for k, v in attrs.items() if v is not None}
    with tracer.start_as_current_span(name, context=parent, attributes=clean) as current:
        yield current


def start_span(name: str, **attrs: Any) -> Span | None:
    """A span under the current one that outlives the block it starts in (end it with :func:`end_span`);
    None when tracing is off."""
    tracer = _STATE.tracer
    if tracer is None:
        return None
    return tracer.start_span(name, attributes={k: v for k, v in attrs.items() if v is not None})


def end_span(current: Span | None) -> None:
    if current is not None:
        current.end()


@contextmanager
def batch_span(name: str, request_spans: Mapping[int, Span | None], **attrs: Any) -> Iterator[Span | None]:
    """A root span for one batched step, linked to the span of every request it serves (TGI's follows-from),
    and made current with those requests, so :func:`inject_grpc_metadata` sends each request's trace to the
    shard. ``request_spans``: shard request id -> that request's ``infer`` span (None ones are skipped)."""
    tracer = _STATE.tracer
    if tracer is None:
        yield None
        return
    from opentelemetry.trace import Link

    live = {rid: s for rid, s in request_spans.items() if s is not None}
    links = [Link(s.get_span_context()) for s in live.values()]
    clean = {k: v for k, v in attrs.items() if v is not None}
    token = _REQUEST_SPANS.set(live)
    try:
        with tracer.start_as_current_span(name, context=otel_context.Context(), links=links,
                                          attributes=clean) as current:
            yield current
    finally:
        _REQUEST_SPANS.reset(token)


def set_attributes(current: Span | None, **attrs: Any) -> None:
    """Record fields on a span from :func:`span` (ignored when tracing is off)."""
    if current is not None:
        current.set_attributes({k: v for k, v in attrs.items() if v is not None})


def inject_grpc_metadata() -> list[tuple[str, str]]:
    """``traceparent`` (and ``tracestate``) metadata for the current span, plus one ``prism-request-traceparent``
    entry per request of the current :func:`batch_span`; ``[]`` when tracing is off or no span is active. The
    gRPC client calls it on every RPC."""
    if _STATE.tracer is None:
        return []
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    metadata = sorted(carrier.items())
    from opentelemetry import trace

    for request_id, request_span in _REQUEST_SPANS.get().items():
        one: dict[str, str] = {}
        _PROPAGATOR.inject(one, context=trace.set_span_in_context(request_span))
        if "traceparent" in one:
            metadata.append((REQUEST_TRACE_KEY, f"{request_id} {one['traceparent']}"))
    return metadata
