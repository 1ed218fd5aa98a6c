"""The OTLP span processor of the shard's tracing, with a stop bounded in time (router_py/span_export.py
is its twin: the import rules keep the router's packages and the shard's apart).

NOTE: the SDK's BatchSpanProcessor waits, on shutdown, for its worker's last export, and the OTLP exporter
retries an unreachable receiver with backoff for up to ``OTEL_EXPORTER_OTLP_TIMEOUT`` (10 s) per batch;
neither applies a timeout of its own (opentelemetry-python #4555, #4568). With the receiver down a stop took
7-20 s longer. Here the stop gives up after ``SHUTDOWN_TIMEOUT_S``: the exporter is shut down, which ends
its backoff wait and cancels the RPC in flight, and the spans it had not delivered are dropped, with a
warning. A receiver that is up takes them in milliseconds, well within the bound.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

SHUTDOWN_TIMEOUT_S = 2.0  # the most a stop waits for the OTLP receiver to take the last spans

log = logging.getLogger(__name__)


class BoundedBatchSpanProcessor(BatchSpanProcessor):
    """A BatchSpanProcessor whose :meth:`shutdown` returns within about ``timeout_s`` even when the receiver
    is down (see the module doc); batching and export are the SDK's, ``OTEL_BSP_*`` included."""

    def __init__(self, exporter: SpanExporter, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        self.exporter = OnceShutdownExporter(exporter)
        self.timeout_s = timeout_s
        super().__init__(self.exporter)

    def shutdown(self) -> None:
        timer = threading.Timer(self.timeout_s, self.give_up)
        timer.daemon = True
        timer.start()
        try:
            super().shutdown()  # type: ignore[no-untyped-call]  # NOTE: the SDK leaves it unannotated
        finally:
            timer.cancel()

    def give_up(self) -> None:
        """Shut the exporter down now: a pending export ends at once and what it held is dropped."""
        if not self.exporter.stopped:
            log.warning("tracing: the OTLP receiver did not take the last spans within %.1f s; dropping them",
                        self.timeout_s)
            self.exporter.shutdown()


class OnceShutdownExporter(SpanExporter):
    """``exporter`` whose shutdown runs once: the processor's own call after :meth:`BoundedBatchSpanProcessor.
    give_up` is then a no-op (the OTLP exporter would warn that it is already shut down)."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        self.stopped = False
        self.lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.exporter.export(spans)

    def shutdown(self) -> None:
        with self.lock:
            if self.stopped:
                return
            self.stopped = True
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)
