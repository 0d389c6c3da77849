"""Traces: one span per task try, one per task and one per DAG run, sampled all-or-nothing per run.

Two modes:

* Airflow's tracing on (``[traces] otel_on``): BareCount never replaces Airflow's tracer provider. The try
  span is a child of Airflow's ``worker.<task>`` span and rides on Airflow's per-run head-sampling
  decision; :func:`install_tenant_sampler` supplies the tenant's ratio to that decision.
* Airflow's tracing off: BareCount runs a provider of its own. Every id of a run is a keyed hash of the
  run's identity (see :mod:`barecount_provider.context`), so all task processes of a run share one trace
  with no shared state, and whether the run is sampled is decided from ``hash(dag_id, run_id)`` against
  the tenant's ratio: a run is traced completely or not at all.

Upstream dependencies are span links to the upstream task's span, whose id is derived the same way; the
scheduler side emits the task and run spans when the run ends (:func:`emit_run_spans`).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from barecount_provider import config, context, outbox, redaction
from barecount_provider.adapters import airflow as airflow_adapter
from barecount_provider.adapters import opentelemetry as otel_adapter
from barecount_provider.jsonlines import append_lines
from barecount_provider.telemetry import outbox_sinks
from barecount_provider.telemetry.metrics import EMIT_FAILURES

log = logging.getLogger(__name__)

TRACER_NAME = "barecount_provider"


def airflow_tracing_on() -> bool:
    try:
        from airflow.configuration import conf

        return conf.getboolean("traces", "otel_on", fallback=False)
    except Exception:
        return False


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span as one JSON line (the embedded default; read by `barecount runs`)."""

    def __init__(self, path: str):
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        # Airflow's own spans come here too (OTEL_TRACES_EXPORTER=barecount_file): their attributes were
        # never redacted (BareCount's try spans were, when they were made).
        return self.write_lines([redaction.redact(_span_as_dict(span)) for span in spans])

    def write_lines(self, records: list[dict[str, Any]]) -> SpanExportResult:
        """Append the spans' JSON lines with one ``write``; a failure is counted, never raised."""
        try:
            append_lines(self.path, records)
            return SpanExportResult.SUCCESS
        except Exception:
            EMIT_FAILURES.record("traces", "export")
            return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        return None


class TelemetryDirSpanExporter(JsonLinesSpanExporter):
    """The JSON-lines exporter on ``telemetry_dir/spans.jsonl``, with no arguments, so that Airflow's own
    tracing can use it: ``OTEL_TRACES_EXPORTER=barecount_file`` (entry point ``opentelemetry_traces_exporter``).
    """

    def __init__(self) -> None:
        super().__init__(os.path.join(config.telemetry_dir(), "spans.jsonl"))


def _span_as_dict(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    parent = span.parent
    return {
        "name": span.name,
        "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
        "span_id": f"{ctx.span_id:016x}" if ctx else None,
        "parent_span_id": f"{parent.span_id:016x}" if parent else None,
        "start_time_unix_nano": span.start_time,
        "end_time_unix_nano": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events],
        "links": [
            {"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}",
             "attributes": dict(link.attributes or {})}
            for link in span.links
        ],
    }


class TrySpan:
    """A task-try span of BareCount's own provider, recorded without the SDK's span machinery.

    The SDK's span start and end (sampler, attribute cleaning through ABC checks, span processors, context
    attach for the export) cost a task process about 1 ms; a try span needs none of it: its parent is the
    task span (remote, derived ids) whose sampled flag decides, as ``ParentBased(ALWAYS_ON)`` does; its
    attributes are strings and numbers. It makes the span the SDK would have made (ids from the provider's
    id generator, times from ``time.time_ns()``, the same attributes, events, links and status) and, when
    it ends, hands it to the exporter: one JSON line to the span file or a record to the OTLP spool directly,
    anything else as an SDK ``ReadableSpan`` through the provider's span processors.
    """

    __slots__ = (
        "_tracing", "name", "trace_id", "span_id", "parent_span_id", "sampled", "attributes", "events",
        "links", "status", "start_time", "end_time",
    )

    def __init__(
        self,
        tracing: Tracing,
        name: str,
        *,
        trace_id: int,
        parent_span_id: int | None,
        sampled: bool,
        attributes: dict[str, Any],
        upstream: Sequence[tuple[str, int]] = (),
        span_id: int | None = None,
        start_time: int | None = None,
    ) -> None:
        self._tracing = tracing
        self.name = name
        self.trace_id = trace_id
        self.span_id = tracing.ids.generate_span_id() if span_id is None else span_id
        self.parent_span_id = parent_span_id
        self.sampled = bool(sampled)
        self.attributes = {key: value for key, value in attributes.items() if value is not None} if sampled else {}
        self.links = (
            [(span_id, {"airflow.task_id": task_id, "barecount.link": "upstream"}) for task_id, span_id in upstream]
            if sampled
            else []
        )
        self.events: list[tuple[str, dict[str, Any], int]] = []
        self.status: Any = None
        self.start_time = time.time_ns() if start_time is None else start_time
        self.end_time: int | None = None

    def get_span_context(self) -> SpanContext:
        return SpanContext(
            self.trace_id,
            self.span_id,
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED if self.sampled else TraceFlags.DEFAULT),
        )

    def is_recording(self) -> bool:
        return self.sampled and self.end_time is None

    def set_attribute(self, key: str, value: Any) -> None:
        if self.is_recording() and value is not None:
            self.attributes[key] = value

    def add_event(self, name: str, attributes: dict[str, Any] | None = None, timestamp: int | None = None) -> None:
        if self.is_recording():
            self.events.append((name, dict(attributes or {}), timestamp or time.time_ns()))

    def set_status(self, status: Any) -> None:
        if self.is_recording():
            self.status = status

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is not None:
            return
        self.end_time = end_time or time.time_ns()
        if self.sampled:
            try:
                self._tracing.export_try_span(self)
            except Exception:
                EMIT_FAILURES.record("traces", "export")

    def record(self) -> dict[str, Any]:
        """The span as the OTLP spool keeps it (see outbox_sinks.span_record)."""
        status = self.status
        code = status.status_code.name if status is not None else "UNSET"
        return {
            "name": self.name,
            "kind": "INTERNAL",
            "trace_id": f"{self.trace_id:032x}",
            "span_id": f"{self.span_id:016x}",
            "trace_flags": 1,
            "parent_span_id": None if self.parent_span_id is None else f"{self.parent_span_id:016x}",
            "parent_remote": True,
            "start": self.start_time,
            "end": self.end_time,
            "status": code,
            "status_description": status.description if status is not None else None,
            "attributes": self.attributes,
            "events": [{"name": name, "time": when, "attributes": attrs} for name, attrs, when in self.events],
            "links": [
                {"trace_id": f"{self.trace_id:032x}", "span_id": f"{span_id:016x}", "trace_flags": 1, "attributes": attrs}
                for span_id, attrs in self.links
            ],
        }

    def file_line(self) -> dict[str, Any]:
        """The span as the JSON-lines span file has it (see _span_as_dict)."""
        return {
            "name": self.name,
            "trace_id": f"{self.trace_id:032x}",
            "span_id": f"{self.span_id:016x}",
            "parent_span_id": None if self.parent_span_id is None else f"{self.parent_span_id:016x}",
            "start_time_unix_nano": self.start_time,
            "end_time_unix_nano": self.end_time,
            "status": self.status.status_code.name if self.status is not None else "UNSET",
            "attributes": self.attributes,
            "events": [{"name": name, "attributes": attrs} for name, attrs, _ in self.events],
            "links": [
                {"trace_id": f"{self.trace_id:032x}", "span_id": f"{span_id:016x}", "attributes": attrs}
                for span_id, attrs in self.links
            ],
        }


class Tracing:
    """BareCount's tracer, in whichever of the two modes applies.

    With a provider of its own, no SDK ``TracerProvider`` is built unless something needs one (an exporter
    other than the span file or the OTLP spool, or a test's in-memory exporter): try spans and the fixed run
    and task spans are :class:`TrySpan` records handed straight to the exporter. A ``TracerProvider``
    registers an at-fork handler that re-runs the resource detectors (a thread pool) in every forked child:
    about 1.5 ms of every task process, were one built in the process that forks them.
    """

    def __init__(
        self,
        provider: Any = None,
        airflow_mode: bool | None = None,
        exporter_desc: str = "none",
        exporter: SpanExporter | None = None,
    ):
        self.airflow_mode = airflow_tracing_on() if airflow_mode is None else airflow_mode
        self.exporter_desc = exporter_desc
        self._exporter = exporter
        self._provider: Any = None
        self._tracer: Any = None
        if self.airflow_mode:
            self._provider = trace.get_tracer_provider()
            self.exporter_desc = "airflow's tracer provider"
        elif provider is not None:
            self._provider = provider
        # The span ids of try spans: a given provider's own generator (its SDK spans draw from the same).
        self.ids = getattr(self._provider, "id_generator", None) or RandomIdGenerator()

    @property
    def provider(self) -> Any:
        """The SDK tracer provider (Airflow's under Airflow's tracing), built on first use otherwise."""
        if self._provider is None:
            from opentelemetry.sdk.resources import Resource

            provider = TracerProvider(
                sampler=ParentBased(ALWAYS_ON),
                id_generator=self.ids,
                resource=Resource({"service.name": "barecount"}),  # no resource detectors: ~3 ms per process
                shutdown_on_exit=False,
            )
            if self._exporter is not None:
                provider.add_span_processor(SimpleSpanProcessor(self._exporter))
            self._provider = provider
        return self._provider

    @property
    def tracer(self) -> Any:
        if self._tracer is None:
            self._tracer = self.provider.get_tracer(TRACER_NAME)
        return self._tracer

    # ---------------------------------------------------------------------------------------- task side

    def run_parent(self, ctx: context.RunContext, sampled: bool, trace_id: int | None = None) -> Any:
        """The OTel context a try span starts in."""
        if self.airflow_mode:
            return None  # the current context: Airflow's worker.<task> span
        parent = SpanContext(
            trace_id=trace_id or context.trace_id_for(ctx.dag_id, ctx.run_id),
            span_id=context.task_span_id_for(ctx.dag_id, ctx.run_id, ctx.task_id, ctx.map_index),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT),
        )
        return trace.set_span_in_context(NonRecordingSpan(parent))

    def upstream_links(self, ctx: context.RunContext, trace_id: int, upstream_task_ids: Iterable[str]) -> list[Link]:
        return [
            Link(
                SpanContext(
                    trace_id=trace_id,
                    span_id=context.task_span_id_for(ctx.dag_id, ctx.run_id, upstream, -1),
                    is_remote=True,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED),
                ),
                attributes={"airflow.task_id": upstream, "barecount.link": "upstream"},
            )
            for upstream in sorted(upstream_task_ids)
        ]

    def start_try_span(
        self,
        ctx: context.RunContext,
        *,
        sampled: bool,
        upstream_task_ids: Iterable[str] = (),
        max_tries: int | None = None,
        resumed: bool = False,
    ) -> Any:
        if self.airflow_mode:
            trace_id = trace.get_current_span().get_span_context().trace_id
        else:
            trace_id = context.trace_id_for(ctx.dag_id, ctx.run_id)
        attributes: dict[str, Any] = {
            "airflow.dag_id": ctx.dag_id,
            "airflow.task_id": ctx.task_id,
            "airflow.dag_run.run_id": ctx.run_id,
            "airflow.task_instance.try_number": ctx.try_number,
            "airflow.task_instance.map_index": ctx.map_index,
            "barecount.tenant": ctx.tenant,
            "barecount.pipeline": ctx.pipeline,
            "barecount.runner_class": ctx.runner_class,
            "barecount.size": ctx.size,
            "barecount.network_profile": ctx.network_profile,
            "barecount.correlation_id": ctx.correlation_id,
            "barecount.retry.attempt": max(0, ctx.try_number - 1),
            "process.pid": os.getpid(),
        }
        if max_tries is not None:
            attributes["barecount.retry.max_tries"] = max_tries
        if ctx.image_or_driver_digest:
            attributes["barecount.image_or_driver_digest"] = ctx.image_or_driver_digest
        if self.airflow_mode:
            span = self.tracer.start_span(
                f"task_try {ctx.task_id}",
                context=self.run_parent(ctx, sampled, trace_id),
                kind=SpanKind.INTERNAL,
                attributes=_redact_attributes(attributes),
                links=self.upstream_links(ctx, trace_id, upstream_task_ids) if trace_id else (),
            )
        else:
            span = TrySpan(
                self,
                f"task_try {ctx.task_id}",
                trace_id=trace_id,
                parent_span_id=context.task_span_id_for(ctx.dag_id, ctx.run_id, ctx.task_id, ctx.map_index),
                sampled=sampled,
                attributes=_redact_attributes(attributes),
                upstream=[
                    (upstream, context.task_span_id_for(ctx.dag_id, ctx.run_id, upstream, -1))
                    for upstream in sorted(upstream_task_ids)
                ],
            )
        if ctx.try_number > 1:
            span.add_event("retry", {"barecount.retry.attempt": ctx.try_number - 1})
        if resumed:
            span.add_event("resumed", {})
        return span

    def _sole_exporter(self) -> Any:
        """The exporter of a provider whose only span processor is a SimpleSpanProcessor (None otherwise);
        ``()`` when nothing is exported."""
        if self._provider is None:
            return () if self._exporter is None else self._exporter  # no SDK provider: the exporter itself
        processors = otel_adapter.span_processors(self._provider)
        if processors is None:
            return None
        if len(processors) == 0:
            return ()
        if len(processors) == 1 and isinstance(processors[0], SimpleSpanProcessor):
            return processors[0].span_exporter
        return None

    def try_spans_reach_the_forwarder(self) -> bool:
        """Whether a try span ends as a record the spool's forwarder writes or exports (the OTLP spool; the
        span file when this process hands its outputs off), not in this process."""
        if self.airflow_mode:
            return False
        exporter = self._sole_exporter()
        if isinstance(exporter, JsonLinesSpanExporter):
            return outbox.handoff()
        return isinstance(exporter, outbox_sinks.span_exporter_class())

    def export_try_span(self, span: TrySpan) -> None:
        """Hand a finished try span to the exporter: directly to the span file or the OTLP spool, as an SDK
        span through the provider's span processors otherwise."""
        exporter = self._sole_exporter()
        if exporter == ():
            return  # no processor: nothing is exported
        if isinstance(exporter, JsonLinesSpanExporter):
            if outbox.handoff():  # the forwarder appends it, with the try's other outputs
                outbox.add_lines(exporter.path, [span.file_line()])
            else:
                exporter.write_lines([span.file_line()])
            return
        if isinstance(exporter, outbox_sinks.span_exporter_class()):
            outbox.add_span_records([span.record()])
            return
        readable = outbox_sinks.rebuild_span(span.record(), resource=getattr(self.provider, "resource", None))
        otel_adapter.end_span(self.provider, readable)

    def flush(self, timeout_ms: int) -> None:
        if self.airflow_mode or self._provider is None:
            return  # Airflow's task runner flushes its own provider at exit; without a provider, nothing waits
        try:
            if not self.provider.force_flush(timeout_millis=max(timeout_ms, 1)):
                EMIT_FAILURES.record("traces", "flush")
        except Exception:
            EMIT_FAILURES.record("traces", "flush")

    # ----------------------------------------------------------------------------------- scheduler side

    def emit_fixed_span(
        self,
        name: str,
        *,
        trace_id: int,
        span_id: int,
        parent_span_id: int | None,
        sampled: bool,
        start: datetime,
        end: datetime,
        attributes: dict[str, Any],
        error: bool = False,
    ) -> None:
        """Emit a span whose ids are fixed (run and task spans, referenced by the tries' parents and links)."""
        if not sampled:
            return
        span: Any
        if self.airflow_mode:
            # Airflow's provider fixes ids through its own context keys (OverrideableRandomIdGenerator).
            override_ids = airflow_adapter.override_ids()
            if override_ids is None:
                return
            if parent_span_id is not None:
                parent_ctx = SpanContext(
                    trace_id, parent_span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
                )
                parent = trace.set_span_in_context(NonRecordingSpan(parent_ctx))
            else:
                parent = trace.set_span_in_context(trace.INVALID_SPAN)  # a root: the trace id comes from the ids
            with override_ids(trace_id, span_id):
                span = self.tracer.start_span(
                    name, context=parent, attributes=_redact_attributes(attributes), start_time=_nanos(start)
                )
        else:  # a record with the fixed ids, as the SDK would make it (no provider needed: see the class)
            span = TrySpan(
                self, name, trace_id=trace_id, parent_span_id=parent_span_id, sampled=True,
                attributes=_redact_attributes(attributes), span_id=span_id, start_time=_nanos(start),
            )
        if error:
            span.set_status(trace.Status(trace.StatusCode.ERROR))
        span.end(end_time=_nanos(end))


def _nanos(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)


def _redact_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    return redaction.get_redactor().redact_values(attributes)


def span_ids(span: Any) -> tuple[str, str, str] | None:
    """The span's trace id, span id and trace flags in hex (as ``traceparent`` writes them); None for no span
    or an invalid one. A try span of BareCount's own answers from its fields, without building a
    ``SpanContext``."""
    if span is None:
        return None
    if type(span) is TrySpan:
        if not (0 < span.trace_id <= _TRACE_ID_MAX and 0 < span.span_id <= _SPAN_ID_MAX):
            return None
        return f"{span.trace_id:032x}", f"{span.span_id:016x}", "01" if span.sampled else "00"
    ctx = span.get_span_context()
    if ctx is None or not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}", f"{int(ctx.trace_flags):02x}"


_TRACE_ID_MAX = (1 << 128) - 1
_SPAN_ID_MAX = (1 << 64) - 1


def traceparent_of(span: Any) -> str | None:
    ids = span_ids(span)
    return None if ids is None else f"00-{ids[0]}-{ids[1]}-{ids[2]}"


def sampled_for_run(dag_id: str, run_id: str, ratio: float) -> bool:
    """All-or-nothing per run, from the run's identity: every process of the run decides the same."""
    if ratio >= 1.0:
        return True
    if ratio <= 0.0:
        return False
    return context.sampling_fraction(dag_id, run_id) < ratio


def warm_span_path() -> None:
    """Run the SDK's span path once, exporting nothing, in a process that forks task processes: the ABC
    checks of attribute values (``isinstance(value, Sequence)``...) fill their caches here, once, instead of
    in every task process."""
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON), shutdown_on_exit=False)  # no processor
    remote = SpanContext(1, 1, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    values: dict[str, Any] = {"s": "x", "i": 1, "b": True, "f": 1.0, "t": ("x",)}
    span = provider.get_tracer(TRACER_NAME).start_span(
        "warm", context=trace.set_span_in_context(NonRecordingSpan(remote)), kind=SpanKind.INTERNAL,
        attributes=values, links=[Link(SpanContext(1, 2, is_remote=True, trace_flags=TraceFlags(1)), values)],
    )
    span.set_attribute("s2", "x")
    span.add_event("warm", values)
    span.set_status(trace.Status(trace.StatusCode.ERROR, description="warm"))
    span.end()
    span.is_recording()


def build_otlp_span_exporter() -> SpanExporter:
    """An OTLP/HTTP span exporter (OTEL_EXPORTER_OTLP_* settings) bounded by ``emit_timeout_ms``."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from barecount_provider.telemetry.metrics import quiet_otlp_exporter_logs

    quiet_otlp_exporter_logs()
    return OTLPSpanExporter(timeout=max(config.emit_timeout_ms(), 1) / 1000.0)


def _build_exporter() -> tuple[SpanExporter | None, str]:
    kind = config.traces_exporter()
    if kind == "none":
        return None, "none"
    if kind == "file":
        path = os.path.join(config.telemetry_dir(), "spans.jsonl")
        return JsonLinesSpanExporter(path), f"file:{path}"
    from barecount_provider.telemetry.outbox_sinks import span_exporter  # OTLP: through the spool (spool.py)

    return span_exporter(), f"otlp {config.otlp_endpoint('traces')} (spooled)"


def _build_tracing() -> Tracing:
    # A file, or the spool: written synchronously by TrySpan, no thread, no SDK provider (see Tracing).
    exporter, desc = _build_exporter()
    return Tracing(airflow_mode=False, exporter_desc=desc, exporter=exporter)


@functools.cache
def get_tracing() -> Tracing | None:
    """The tracer of task processes: spans go to a file or, for OTLP, to the spool (see
    :mod:`barecount_provider.outbox`). Stateless: built once where the plugin is loaded and shared
    by the forked task processes."""
    if not config.traces_on():
        return None
    if airflow_tracing_on():
        return Tracing(airflow_mode=True)
    return _build_tracing()


# --------------------------------------------------------------------- Airflow's own head-sampling decision


class TenantRatioSampler(Sampler):
    """Airflow's per-run head-sampling decision, with the ratio of the run's tenant.

    Airflow 3.3 asks its tracer provider's sampler once per DAG run (``new_dagrun_trace_carrier``) with the
    attribute ``airflow.dag_id``. Root decisions use the ratio of the DAG's tenant; anything else is left to
    the sampler Airflow configured.
    """

    def __init__(self, fallback: Sampler, tenant_of_dag: Any, ratio_of_tenant: Any):
        self._fallback = fallback
        self._tenant_of_dag = tenant_of_dag
        self._ratio_of_tenant = ratio_of_tenant

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None) -> SamplingResult:
        dag_id = (attributes or {}).get("airflow.dag_id")
        # A root decision is one with no valid parent span, whether passed or current (a span started
        # inside Airflow's worker span has the worker span as its parent and follows its flag).
        is_root = not trace.get_current_span(parent_context).get_span_context().is_valid
        if is_root and dag_id:
            try:
                ratio = float(self._ratio_of_tenant(self._tenant_of_dag(str(dag_id))))
                return TraceIdRatioBased(ratio).should_sample(
                    None, trace_id, name, kind, attributes, links, trace_state
                )
            except Exception:
                EMIT_FAILURES.record("traces", "sampler")
        return self._fallback.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"BareCountTenantRatio{{fallback={self._fallback.get_description()}}}"


def install_tenant_sampler(tenant_of_dag: Any, ratio_of_tenant: Any) -> bool:
    """Put the tenant's ratio into Airflow's sampling decision, keeping Airflow's tracer provider."""
    provider: Any = trace.get_tracer_provider()
    sampler = getattr(provider, "sampler", None)
    if sampler is None or isinstance(sampler, TenantRatioSampler):
        return False
    try:
        # Airflow's per-run decision reads ``provider.sampler`` each time (new_dagrun_trace_carrier); spans
        # under a run follow the run's flag through their ParentBased samplers.
        provider.sampler = TenantRatioSampler(sampler, tenant_of_dag, ratio_of_tenant)
    except Exception:
        return False
    return isinstance(getattr(provider, "sampler", None), TenantRatioSampler)
