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
import json
import logging
import os
import threading
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

from barecount_provider import config, context
from barecount_provider.telemetry.metrics import EMIT_FAILURES

log = logging.getLogger(__name__)

TRACER_NAME = "barecount_provider"


def airflow_tracing_on() -> bool:
    try:
        from airflow.configuration import conf

        return conf.getboolean("traces", "otel_on", fallback=False)
    except Exception:
        return False


class _OverridableIds(RandomIdGenerator):
    """Random ids, except where the caller fixed the next span id (deterministic task and run spans)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def set_next_span_id(self, span_id: int) -> None:
        self._local.next_span_id = span_id

    def set_next_trace_id(self, trace_id: int) -> None:
        self._local.next_trace_id = trace_id

    def generate_trace_id(self) -> int:
        fixed = getattr(self._local, "next_trace_id", None)
        if fixed is not None:
            self._local.next_trace_id = None
            return int(fixed)
        return super().generate_trace_id()

    def generate_span_id(self) -> int:
        fixed = getattr(self._local, "next_span_id", None)
        if fixed is not None:
            self._local.next_span_id = None
            return int(fixed)
        return super().generate_span_id()


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span as one JSON line (the embedded default; read by `barecount runs`)."""

    def __init__(self, path: str):
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            lines = "".join(json.dumps(_span_as_dict(span), default=str) + "\n" for span in spans)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(lines)
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


class _CountingSpanExporter(SpanExporter):
    def __init__(self, inner: SpanExporter):
        self._inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:
            result = SpanExportResult.FAILURE
        if result != SpanExportResult.SUCCESS:
            EMIT_FAILURES.record("traces", "export")
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class Tracing:
    """BareCount's tracer, in whichever of the two modes applies."""

    def __init__(self, provider: Any = None, airflow_mode: bool | None = None, exporter_desc: str = "none"):
        self.airflow_mode = airflow_tracing_on() if airflow_mode is None else airflow_mode
        self.ids = _OverridableIds()
        self.exporter_desc = exporter_desc
        self.provider: Any
        if self.airflow_mode:
            self.provider = trace.get_tracer_provider()
            self.exporter_desc = "airflow's tracer provider"
        else:
            self.provider = provider or TracerProvider(
                sampler=ParentBased(ALWAYS_ON), id_generator=self.ids, shutdown_on_exit=False
            )
            current_ids = getattr(self.provider, "id_generator", None)
            if isinstance(current_ids, _OverridableIds):
                self.ids = current_ids
            else:
                self.provider.id_generator = self.ids
        self.tracer = self.provider.get_tracer(TRACER_NAME)

    # ---------------------------------------------------------------------------------------- task side

    def run_parent(self, ctx: context.RunContext, sampled: bool) -> Any:
        """The OTel context a try span starts in."""
        if self.airflow_mode:
            return None  # the current context: Airflow's worker.<task> span
        parent = SpanContext(
            trace_id=context.trace_id_for(ctx.dag_id, ctx.run_id),
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
        parent = self.run_parent(ctx, sampled)
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
        span = self.tracer.start_span(
            f"task_try {ctx.task_id}",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes=_redact_attributes(attributes),
            links=self.upstream_links(ctx, trace_id, upstream_task_ids) if trace_id else (),
        )
        if ctx.try_number > 1:
            span.add_event("retry", {"barecount.retry.attempt": ctx.try_number - 1})
        if resumed:
            span.add_event("resumed", {})
        return span

    def flush(self, timeout_ms: int) -> None:
        if self.airflow_mode:
            return  # Airflow's task runner flushes its own provider at exit
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
        if parent_span_id is not None:
            parent_ctx = SpanContext(trace_id, parent_span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
            parent = trace.set_span_in_context(NonRecordingSpan(parent_ctx))
        else:
            parent = trace.set_span_in_context(trace.INVALID_SPAN)  # a root: the trace id comes from the ids
        if self.airflow_mode:
            # Airflow's provider fixes ids through its own context keys (OverrideableRandomIdGenerator).
            try:
                from airflow._shared.observability.traces import override_ids
            except ImportError:
                return
            with override_ids(trace_id, span_id):
                span = self.tracer.start_span(
                    name, context=parent, attributes=_redact_attributes(attributes), start_time=_nanos(start)
                )
        else:
            if parent_span_id is None:
                self.ids.set_next_trace_id(trace_id)
            self.ids.set_next_span_id(span_id)
            span = self.tracer.start_span(
                name, context=parent, attributes=_redact_attributes(attributes), start_time=_nanos(start)
            )
        if error:
            span.set_status(trace.Status(trace.StatusCode.ERROR))
        span.end(end_time=_nanos(end))


def _nanos(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)


def _redact_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    from barecount_provider.telemetry.metrics import redact_tag_value

    return {k: redact_tag_value(v) if isinstance(v, str) else v for k, v in attributes.items()}


def traceparent_of(span: Any) -> str | None:
    ctx = span.get_span_context() if span is not None else None
    if ctx is None or not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def sampled_for_run(dag_id: str, run_id: str, ratio: float) -> bool:
    """All-or-nothing per run, from the run's identity: every process of the run decides the same."""
    if ratio >= 1.0:
        return True
    if ratio <= 0.0:
        return False
    return context.sampling_fraction(dag_id, run_id) < ratio


def _build_exporter() -> tuple[SpanExporter | None, str]:
    kind = config.traces_exporter()
    if kind == "none":
        return None, "none"
    if kind == "file":
        path = os.path.join(config.telemetry_dir(), "spans.jsonl")
        return JsonLinesSpanExporter(path), f"file:{path}"
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from barecount_provider.telemetry.metrics import quiet_otlp_exporter_logs

    quiet_otlp_exporter_logs()
    exporter = OTLPSpanExporter(timeout=max(config.emit_timeout_ms(), 1) / 1000.0)
    return exporter, f"otlp {config.otlp_endpoint('traces')}"


@functools.cache
def get_tracing() -> Tracing | None:
    if not config.traces_on():
        return None
    if airflow_tracing_on():
        return Tracing(airflow_mode=True)
    exporter, desc = _build_exporter()
    from opentelemetry.sdk.resources import Resource

    provider = TracerProvider(
        sampler=ParentBased(ALWAYS_ON),
        id_generator=_OverridableIds(),
        resource=Resource({"service.name": "barecount"}),  # no resource detectors: ~3 ms per process
        shutdown_on_exit=False,
    )
    if exporter is not None:
        if isinstance(exporter, JsonLinesSpanExporter):
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider.add_span_processor(
                BatchSpanProcessor(_CountingSpanExporter(exporter), export_timeout_millis=max(config.emit_timeout_ms(), 1))
            )
    return Tracing(provider=provider, airflow_mode=False, exporter_desc=desc)


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



def _reset_after_fork() -> None:
    # A provider with a batch exporter (threads, queued spans) stays the parent's: the child builds its own.
    # One that writes JSON lines synchronously (or exports nothing) is stateless and shared.
    if get_tracing.cache_info().currsize:
        tracer = get_tracing()
        if tracer is not None and tracer.exporter_desc.startswith("otlp"):
            get_tracing.cache_clear()


os.register_at_fork(after_in_child=_reset_after_fork)
