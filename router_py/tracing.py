"""OpenTelemetry for the router (tgi-compat 5): off unless an OTLP endpoint is given.

When on, spans go through an OTLP gRPC exporter and a BatchSpanProcessor; an incoming W3C ``traceparent``
becomes the remote parent of the handler span, and :func:`inject_grpc_metadata` carries the current span to
the shards. When off, :func:`span` yields ``None`` and :func:`inject_grpc_metadata` returns ``[]`` without
touching OTel.

NOTE: tracing state is process-wide by nature (as OTel's own global provider); it lives in one holder object
that :func:`setup_tracing` replaces, rather than in OTel's set-once global, so tests can switch it on and off.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

TRACER_NAME = "router_py"


@dataclass
class _TracingState:
    tracer: Tracer | None = None
    provider: Any = None


_STATE = _TracingState()
_PROPAGATOR = TraceContextTextMapPropagator()


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
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True))
        )
    _STATE.tracer, _STATE.provider = provider.get_tracer(TRACER_NAME), provider


def enabled() -> bool:
    return _STATE.tracer is not None


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


def set_attributes(current: Span | None, **attrs: Any) -> None:
    """Record fields on a span from :func:`span` (ignored when tracing is off)."""
    if current is not None:
        current.set_attributes({k: v for k, v in attrs.items() if v is not None})


def inject_grpc_metadata() -> list[tuple[str, str]]:
    """``traceparent`` (and ``tracestate``) metadata for the current span; ``[]`` when tracing is off or no span
    is active. The gRPC client calls it on every RPC."""
    if _STATE.tracer is None:
        return []
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return sorted(carrier.items())
