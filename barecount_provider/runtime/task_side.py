"""What BareCount does inside a task process, for one try: context, span, metrics, logs, resources.

Called by the lifecycle listener. Never touches Airflow's database (the ORM is blocked in task processes)
and never raises: the listener wraps every call and counts failures.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace as otel_trace
from opentelemetry.trace import Status, StatusCode

from barecount_provider import config, context, outbox, redaction
from barecount_provider import policy as _policy
from barecount_provider.adapters import airflow as airflow_adapter
from barecount_provider.runtime import forwarding
from barecount_provider.telemetry import filesink, outbox_sinks, resources, tracing
from barecount_provider.telemetry import logging as _logging
from barecount_provider.telemetry.exceptions import PENDING_STACKTRACE, exception_facts, format_exception_text
from barecount_provider.telemetry.metrics import (
    COUNTER,
    EMIT_FAILURES,
    GAUGE,
    HISTOGRAM,
    TIMER,
    get_emitter,
)

log = logging.getLogger(__name__)

TryKey = tuple[str, str, str, int, int]


@dataclasses.dataclass
class TryState:
    ctx: context.RunContext
    span: Any
    sampled: bool
    resources_at_start: resources.ResourceSample
    started_monotonic: float
    start_date: datetime | None


_TRIES: dict[TryKey, TryState] = {}


def _key(ti: Any) -> TryKey:
    map_index = getattr(ti, "map_index", -1)
    return (ti.dag_id, ti.run_id, ti.task_id, -1 if map_index is None else map_index, ti.try_number)


def policy_values(tenant: str) -> tuple[float, bool]:
    """The tenant's trace sampling ratio and whether it may log at debug in production. An invalid policy is
    reported, and BareCount then fails closed where it governs (debug refused in production) and open where
    it only observes (every run traced)."""
    try:
        policy = _policy.get_policy()
        # A tenant the policy does not declare has the defaults' values (no per-tenant copy to build).
        settings = policy.tenants.get(tenant) or policy.defaults
        return float(settings.trace_sampling_ratio), bool(settings.debug_logs_in_production)
    except Exception as err:
        EMIT_FAILURES.record("policy", "load")
        log.error("BareCount policy could not be loaded: %s", err)
        return 1.0, False


def is_resume(ti: Any) -> bool:
    return bool(getattr(airflow_adapter.ti_context_from_server(ti), "next_method", None))


def on_try_running(ti: Any) -> TryState | None:
    """Start observing a task try (again after each deferral / HITL resume)."""
    redaction.register_env_secrets_for_try()  # sensitive environment variables' values, here and in the supervisor
    task = getattr(ti, "task", None)
    dag = getattr(task, "dag", None)
    tags = context.tags_of(dag)  # read once for the opt-out check and the context
    if context.is_opted_out(dag, tags=tags):
        return None
    ctx = context.resolve_for_ti(ti, tags=tags)
    ratio, debug_allowed = policy_values(ctx.tenant)
    resumed = is_resume(ti)

    span = None
    sampled = False
    tracer = tracing.get_tracing()
    if tracer is not None:
        if tracer.airflow_mode:
            sampled = otel_trace.get_current_span().get_span_context().trace_flags.sampled
        else:
            sampled = tracing.sampled_for_run(ctx.dag_id, ctx.run_id, ratio)
        span = tracer.start_try_span(
            ctx,
            sampled=sampled,
            upstream_task_ids=getattr(task, "upstream_task_ids", ()) or (),
            max_tries=getattr(ti, "max_tries", None),
            resumed=resumed,
        )
    ids = tracing.span_ids(span)
    if ids is not None:
        ctx = ctx.with_trace(f"00-{ids[0]}-{ids[1]}-{ids[2]}")
    ctx.export_to_environment()

    fields = ctx.log_fields()
    if ids is not None:
        fields["trace_id"], fields["span_id"] = ids[0], ids[1]
    _logging.bind_run_context(fields)
    _logging.govern_debug(None, config.environment(), debug_allowed)

    state = TryState(
        ctx=ctx,
        span=span,
        sampled=bool(sampled),
        resources_at_start=resources.start_of_try(),  # the memory high-water mark reset, then the counters
        started_monotonic=time.monotonic(),
        start_date=getattr(ti, "start_date", None),
    )
    replaced = _TRIES.get(_key(ti))
    if replaced is not None:  # the running hook fired again in this process: its start sample is done with
        resources.release(replaced.resources_at_start)
    _TRIES[_key(ti)] = state
    emitter = get_emitter()
    if emitter.sinks:  # no metric sink (the embedded default): no points to build
        emitter.emit(
            [("barecount.task.resumed" if resumed else "barecount.task.started", COUNTER, 1, ctx.metric_tags())]
        )
    return state


def error_class_of(error: Any) -> str:
    if isinstance(error, BaseException):
        return type(error).__name__
    return "TaskFailed" if error else "Unknown"


def on_try_finished(ti: Any, state: str, error: Any = None) -> None:
    """End a try: metrics, span, file-sink event. ``state`` is the try's terminal state."""
    redact = redaction.redact
    tried = _TRIES.pop(_key(ti), None)
    if tried is None:
        return
    ctx = tried.ctx
    usage = resources.usage_since(tried.resources_at_start)
    now = datetime.now(UTC)
    start = tried.start_date or getattr(ti, "start_date", None)
    duration_s = (now - start).total_seconds() if start else time.monotonic() - tried.started_monotonic
    error_class = error_class_of(error) if state in ("failed", "up_for_retry") else None
    handoff = outbox.handoff()  # the event, span line and evidence entry: one spool record, written below
    emitter = get_emitter()
    if emitter.sinks:  # no metric sink (the embedded default): no points to build
        # Handed off: StatsD's points go with the try's spool record, sent by the forwarder (Emitter.emit).
        emitter.emit(_try_points(ctx, state, duration_s, usage, error_class), handoff=handoff)

    trace_id = span_id = None
    if tried.span is not None:
        span = tried.span
        ids = tracing.span_ids(span)
        if ids is not None:
            trace_id, span_id = ids[0], ids[1]
        span.set_attribute("barecount.state", state)
        span.set_attribute("barecount.cpu_time_ms", round(usage.cpu_seconds * 1000.0, 3))
        if usage.peak_memory_bytes is not None:
            span.set_attribute("barecount.peak_memory_bytes", usage.peak_memory_bytes)
        if error_class is not None and span.is_recording():  # no traceback for a span nobody records
            span.set_attribute("error.type", error_class)
            attributes: dict[str, Any] = {"exception.type": error_class}
            if isinstance(error, BaseException):
                attributes["exception.message"] = redact(str(error))
                # A span the forwarder writes or exports: the failure's facts, rendered there as text.
                tracer = tracing.get_tracing()
                forwarded = tracer is not None and tracer.try_spans_reach_the_forwarder()
                facts = exception_facts(error) if forwarded else None
                if facts is not None:
                    attributes[PENDING_STACKTRACE] = facts
                else:
                    attributes["exception.stacktrace"] = redact(format_exception_text(error))
            elif error:
                attributes["exception.message"] = redact(str(error))
            span.add_event("exception", attributes)
            if state == "up_for_retry":
                span.add_event("retry_scheduled", {"error.type": error_class, "barecount.retry.attempt": ctx.try_number})
            span.set_status(Status(StatusCode.ERROR, description=error_class))
        span.end()

    if config.file_sink_on():
        events = filesink.events_path()
        sinks = sinks_description(events)
        event = _try_event(
            ctx, now=now, state=state, duration_s=duration_s, trace_id=trace_id, span_id=span_id,
            sampled=tried.sampled, error_class=error_class, usage=usage,
            sinks={**sinks, "written_by": "forwarder"} if handoff else sinks,
        )
        if handoff:
            outbox.add_lines(events, [redact(event)])
        else:
            filesink.append_event(event, events)
    if config.evidence_on():  # the try's evidence entry: written to the store, or spooled; never raises
        from barecount_provider.runtime.entries import record_try

        record_try(
            ctx,
            ti,
            state=state,
            started_at=start,
            ended_at=now,
            duration_s=duration_s,
            metrics=usage.as_dict(),
            trace={"trace_id": trace_id, "span_id": span_id, "sampled": bool(tried.sampled)} if trace_id else None,
            error={"error_class": error_class, "message": redact(str(error))[:2000]} if error_class else None,
            emitter=emitter,
            handoff=handoff,
        )
    outbox.write_pending()  # what the try spooled (OTLP spans and points; handed-off outputs): one record


def sinks_description(events_path: str) -> dict[str, str]:
    """Where this process's telemetry goes (the file-sink event's ``sinks``): the metric sinks, the traces'
    exporter and the events file. Fixed for a process's emitter and tracer, so described once for them
    (before the fork, by the warm-up); callers must not change the dict."""
    return _described(get_emitter(), tracing.get_tracing(), events_path)


@functools.lru_cache(maxsize=8)
def _described(emitter: Any, tracer: Any, events_path: str) -> dict[str, str]:
    sinks = emitter.describe()
    sinks["traces"] = tracer.exporter_desc if tracer is not None else "off"
    sinks["file"] = events_path
    sinks["written_by"] = "task"  # "forwarder" in the events of a task process that hands off
    return sinks


def _try_points(
    ctx: context.RunContext, state: str, duration_s: float, usage: resources.ResourceUsage, error_class: str | None
) -> list[tuple[str, str, float, Any]]:
    """The metric points of a try that ended in this task process."""
    tags = ctx.metric_tags(state=state)
    points: list[tuple[str, str, float, Any]] = [
        ("barecount.task.finished", COUNTER, 1, tags),
        ("barecount.task.duration", TIMER, duration_s * 1000.0, tags),
        ("barecount.task.cpu_time", TIMER, usage.cpu_seconds * 1000.0, tags),
    ]
    if usage.peak_memory_bytes is not None:
        points.append(("barecount.task.peak_memory", GAUGE, usage.peak_memory_bytes, tags))
    if usage.read_bytes is not None:
        points.append(("barecount.task.io_read", HISTOGRAM, usage.read_bytes, tags))
    if usage.write_bytes is not None:
        points.append(("barecount.task.io_write", HISTOGRAM, usage.write_bytes, tags))
    if error_class is not None:
        points.append(("barecount.task.failures", COUNTER, 1, ctx.metric_tags(error_class=error_class)))
        if state == "up_for_retry":
            points.append(("barecount.task.retries", COUNTER, 1, ctx.metric_tags(error_class=error_class)))
    return points


def _try_event(
    ctx: context.RunContext,
    *,
    now: datetime,
    state: str,
    duration_s: float,
    trace_id: str | None,
    span_id: str | None,
    sampled: bool,
    error_class: str | None,
    usage: resources.ResourceUsage,
    sinks: dict[str, str],
) -> dict[str, Any]:
    """The file sink's ``task_try`` event of a try that ended in this task process."""
    return filesink.task_try_event(
        source="task",
        time=now.isoformat(),
        dag_id=ctx.dag_id,
        run_id=ctx.run_id,
        task_id=ctx.task_id,
        map_index=ctx.map_index,
        try_number=ctx.try_number,
        state=state,
        duration_s=round(duration_s, 3),
        tenant=ctx.tenant,
        pipeline=ctx.pipeline,
        runner_class=ctx.runner_class,
        size=ctx.size,
        network_profile=ctx.network_profile,
        correlation_id=ctx.correlation_id,
        trace_id=trace_id,
        span_id=span_id,
        sampled=sampled,
        error_class=error_class,
        resources=usage.as_dict(),
        sinks=sinks,
    )


def end_suspended_tries() -> None:
    """A try that defers or waits for human input leaves its process without a terminal state: end its
    span segment here (the try goes on in a new process, whose running hook opens the next segment)."""
    while _TRIES:
        _, tried = _TRIES.popitem()
        resources.release(tried.resources_at_start)
        if tried.span is not None:
            tried.span.set_attribute("barecount.state", "suspended")
            tried.span.add_event("suspended", {})
            tried.span.end()


def flush() -> None:
    """At the end of the task process: end suspended tries, report BareCount's own failures (through the
    sinks that work) and write what is left for the OTLP spool.

    Nothing here waits for the network: StatsD is fire-and-forget UDP, spans and points for OTLP go to the
    spool (one record, appended to its journal), which a long-lived process forwards (spool.py).
    ``emit_timeout_ms`` bounds that forwarder's exports, never a task. Except with ``forward_spool_at_exit``
    (a KubernetesExecutor pod, where no forwarder runs): this process forwards the spool itself, one round
    bounded by ``emit_timeout_ms``, its failures counted.
    """
    end_suspended_tries()
    get_emitter().report_failures()
    outbox.write_pending()
    if config.forward_spool_at_exit() and outbox_sinks.enabled():
        forwarding.flush_spool()

