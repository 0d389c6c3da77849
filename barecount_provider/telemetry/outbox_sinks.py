"""Telemetry's part of the outbox: the OTLP metric sink and span exporter of a task process, which keep
their points and spans in the outbox (:mod:`barecount_provider.outbox`) for the forwarder to export
(:mod:`barecount_provider.runtime.forwarding`) instead of exporting them over the network themselves."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from barecount_provider import config, outbox
from barecount_provider.telemetry.metrics import EMIT_FAILURES


def metrics_spooled() -> bool:
    return config.otlp_metrics_on()


def traces_spooled() -> bool:
    """BareCount's own provider exporting over OTLP (under Airflow's tracing, Airflow exports the spans)."""
    if not (config.traces_on() and config.traces_exporter() == "otlp"):
        return False
    from barecount_provider.telemetry.tracing import airflow_tracing_on

    return not airflow_tracing_on()


def enabled() -> bool:
    """Whether anything goes through the spool (OTLP metrics or OTLP traces of BareCount's own provider)."""
    return metrics_spooled() or traces_spooled()


# ------------------------------------------------------------------------------------------- task process


class SpoolMetricSink:
    """The task process's OTLP metric sink: keeps the points for the spool (no exporter, no thread)."""

    name = "otlp_metrics"

    def describe(self) -> str:
        return f"otlp {config.otlp_endpoint('metrics')} (spooled)"

    def send(self, points: list[tuple[str, str, float, dict[str, str]]]) -> None:
        outbox.add_points(points)

    def flush(self, timeout_ms: int) -> None:
        outbox.write_pending()


def span_record(span: Any) -> dict[str, Any]:
    """A finished SDK span as a JSON-able record, complete enough to rebuild it for OTLP."""
    ctx = span.get_span_context()
    parent = span.parent
    status = span.status
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "trace_flags": int(ctx.trace_flags),
        "parent_span_id": f"{parent.span_id:016x}" if parent else None,
        "parent_remote": bool(parent.is_remote) if parent else None,
        "start": span.start_time,
        "end": span.end_time,
        "status": status.status_code.name,
        "status_description": status.description,
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": e.name, "time": e.timestamp, "attributes": dict(e.attributes or {})} for e in span.events
        ],
        "links": [
            {
                "trace_id": f"{link.context.trace_id:032x}",
                "span_id": f"{link.context.span_id:016x}",
                "trace_flags": int(link.context.trace_flags),
                "attributes": dict(link.attributes or {}),
            }
            for link in span.links
        ],
    }


@functools.cache
def span_exporter_class() -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class SpoolSpanExporter(SpanExporter):
        """Keeps finished spans for the spool (used with a SimpleSpanProcessor: no thread, no queue)."""

        def export(self, spans: Sequence[Any]) -> Any:
            try:
                records = [span_record(span) for span in spans]
            except Exception:
                EMIT_FAILURES.record("traces", "spool")
                return SpanExportResult.FAILURE
            outbox.add_span_records(records)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            return None

    return SpoolSpanExporter


def span_exporter() -> Any:
    return span_exporter_class()()


def rebuild_span(record: dict[str, Any], resource: Any = None) -> Any:
    """The SDK span a record was taken from, as an exporter sees it (same ids, times, attributes...)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

    from barecount_provider.telemetry.tracing import TRACER_NAME

    trace_id = int(record["trace_id"], 16)
    parent = None
    if record.get("parent_span_id"):
        parent = SpanContext(
            trace_id,
            int(record["parent_span_id"], 16),
            is_remote=bool(record.get("parent_remote", True)),
            trace_flags=TraceFlags(record.get("trace_flags", 1)),
        )
    status_code = StatusCode[record.get("status", "UNSET")]
    return ReadableSpan(
        name=record["name"],
        context=SpanContext(
            trace_id, int(record["span_id"], 16), is_remote=False, trace_flags=TraceFlags(record.get("trace_flags", 1))
        ),
        parent=parent,
        resource=resource or Resource({"service.name": "barecount"}),
        attributes=_attributes(record.get("attributes")),
        events=[
            Event(e["name"], _attributes(e.get("attributes")), timestamp=e.get("time"))
            for e in record.get("events", ())
        ],
        links=[
            Link(
                SpanContext(
                    int(link["trace_id"], 16),
                    int(link["span_id"], 16),
                    is_remote=True,
                    trace_flags=TraceFlags(link.get("trace_flags", 1)),
                ),
                _attributes(link.get("attributes")),
            )
            for link in record.get("links", ())
        ],
        kind=SpanKind[record.get("kind", "INTERNAL")],
        status=Status(status_code, record.get("status_description") if status_code == StatusCode.ERROR else None),
        start_time=record.get("start"),
        end_time=record.get("end"),
        instrumentation_scope=InstrumentationScope(TRACER_NAME),
    )


def _attributes(values: dict[str, Any] | None) -> dict[str, Any]:
    # JSON turned the SDK's tuples into lists; OTLP encodes both as arrays, the SDK keeps tuples.
    return {key: tuple(value) if isinstance(value, list) else value for key, value in (values or {}).items()}
