"""What BareCount does inside a task process, for one try: context, span, metrics, logs, resources.

Called by the lifecycle listener. Never touches Airflow's database (the ORM is blocked in task processes)
and never raises: the listener wraps every call and counts failures.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
import traceback
from datetime import UTC, datetime
from typing import Any

from barecount_provider import config, context
from barecount_provider.telemetry import filesink, resources
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


@functools.cache
def tenant_policy(tenant: str) -> Any:
    """The tenant's policy. An invalid policy is reported, and BareCount then fails closed where it governs
    (debug refused in production) and open where it only observes (every run traced)."""
    from barecount_provider.policy import get_policy

    return get_policy().for_tenant(tenant)


def policy_values(tenant: str) -> tuple[float, bool]:
    try:
        policy = tenant_policy(tenant)
        return float(policy.trace_sampling_ratio), bool(policy.debug_logs_in_production)
    except Exception as err:
        EMIT_FAILURES.record("policy", "load")
        log.error("BareCount policy could not be loaded: %s", err)
        return 1.0, False


def is_resume(ti: Any) -> bool:
    server_context = getattr(ti, "_ti_context_from_server", None)
    return bool(getattr(server_context, "next_method", None))


def on_try_running(ti: Any) -> TryState | None:
    """Start observing a task try (again after each deferral / HITL resume)."""
    from barecount_provider.telemetry import tracing
    from barecount_provider.telemetry.logging import bind_run_context, govern_debug

    task = getattr(ti, "task", None)
    dag = getattr(task, "dag", None)
    if context.is_opted_out(dag):
        return None
    ctx = context.resolve_for_ti(ti)
    ratio, debug_allowed = policy_values(ctx.tenant)
    resumed = is_resume(ti)

    span = None
    sampled = False
    tracer = tracing.get_tracing()
    if tracer is not None:
        if tracer.airflow_mode:
            from opentelemetry import trace as otel_trace

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
        ctx = ctx.with_trace(tracing.traceparent_of(span))
    ctx.export_to_environment()

    fields = ctx.log_fields()
    span_ctx = span.get_span_context() if span is not None else None
    if span_ctx is not None and span_ctx.is_valid:
        fields["trace_id"] = f"{span_ctx.trace_id:032x}"
        fields["span_id"] = f"{span_ctx.span_id:016x}"
    bind_run_context(fields)
    govern_debug(None, config.environment(), debug_allowed)

    resources.reset_peak_memory()
    state = TryState(
        ctx=ctx,
        span=span,
        sampled=bool(sampled),
        resources_at_start=resources.sample(),
        started_monotonic=time.monotonic(),
        start_date=getattr(ti, "start_date", None),
    )
    _TRIES[_key(ti)] = state
    get_emitter().emit(
        [("barecount.task.resumed" if resumed else "barecount.task.started", COUNTER, 1, ctx.metric_tags())]
    )
    return state


def error_class_of(error: Any) -> str:
    if isinstance(error, BaseException):
        return type(error).__name__
    return "TaskFailed" if error else "Unknown"


def on_try_finished(ti: Any, state: str, error: Any = None) -> None:
    """End a try: metrics, span, file-sink event. ``state`` is the try's terminal state."""
    from barecount_provider.telemetry.redaction import redact

    tried = _TRIES.pop(_key(ti), None)
    if tried is None:
        return
    ctx = tried.ctx
    usage = resources.usage_since(tried.resources_at_start)
    now = datetime.now(UTC)
    start = tried.start_date or getattr(ti, "start_date", None)
    duration_s = (now - start).total_seconds() if start else time.monotonic() - tried.started_monotonic
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
    error_class = None
    if state in ("failed", "up_for_retry"):
        error_class = error_class_of(error)
        points.append(("barecount.task.failures", COUNTER, 1, ctx.metric_tags(error_class=error_class)))
        if state == "up_for_retry":
            points.append(("barecount.task.retries", COUNTER, 1, ctx.metric_tags(error_class=error_class)))
    emitter = get_emitter()
    emitter.emit(points)

    trace_id = span_id = None
    if tried.span is not None:
        span = tried.span
        span_ctx = span.get_span_context()
        if span_ctx.is_valid:
            trace_id, span_id = f"{span_ctx.trace_id:032x}", f"{span_ctx.span_id:016x}"
        span.set_attribute("barecount.state", state)
        span.set_attribute("barecount.cpu_time_ms", round(usage.cpu_seconds * 1000.0, 3))
        if usage.peak_memory_bytes is not None:
            span.set_attribute("barecount.peak_memory_bytes", usage.peak_memory_bytes)
        if error_class is not None:
            from opentelemetry.trace import Status, StatusCode

            span.set_attribute("error.type", error_class)
            attributes = {"exception.type": error_class}
            if isinstance(error, BaseException):
                attributes["exception.message"] = redact(str(error))
                attributes["exception.stacktrace"] = redact(
                    "".join(traceback.format_exception(type(error), error, error.__traceback__))
                )
            elif error:
                attributes["exception.message"] = redact(str(error))
            span.add_event("exception", attributes)
            if state == "up_for_retry":
                span.add_event("retry_scheduled", {"error.type": error_class, "barecount.retry.attempt": ctx.try_number})
            span.set_status(Status(StatusCode.ERROR, description=error_class))
        span.end()

    if config.file_sink_on():
        from barecount_provider.telemetry import tracing

        tracer = tracing.get_tracing()
        sinks = dict(emitter.describe())
        sinks["traces"] = tracer.exporter_desc if tracer is not None else "off"
        sinks["file"] = filesink.events_path()
        filesink.append_event(
            {
                "kind": "task_try",
                "source": "task",
                "time": now.isoformat(),
                "dag_id": ctx.dag_id,
                "run_id": ctx.run_id,
                "task_id": ctx.task_id,
                "map_index": ctx.map_index,
                "try_number": ctx.try_number,
                "state": state,
                "duration_s": round(duration_s, 3),
                "tenant": ctx.tenant,
                "pipeline": ctx.pipeline,
                "runner_class": ctx.runner_class,
                "size": ctx.size,
                "network_profile": ctx.network_profile,
                "correlation_id": ctx.correlation_id,
                "trace_id": trace_id,
                "span_id": span_id,
                "sampled": tried.sampled,
                "error_class": error_class,
                "resources": usage.as_dict(),
                "sinks": sinks,
            }
        )


def preload() -> None:
    """Import and parse, once, what every task try needs, in a process that later forks task processes.

    Called where the plugin is loaded (the scheduler, before LocalExecutor forks its workers, which fork the
    task processes): the imports, the compiled redaction patterns and the parsed policy are then inherited,
    and a task process pays none of them. Stateful objects (sinks, tracer provider) are not built here:
    each process builds its own (see the at-fork resets in metrics.py and tracing.py).
    """
    import opentelemetry.sdk.trace
    import opentelemetry.sdk.trace.export

    from barecount_provider.telemetry import logging as _logging  # noqa: F401
    from barecount_provider.telemetry import resources as _resources  # noqa: F401
    from barecount_provider.telemetry import tracing as _tracing
    from barecount_provider.telemetry.redaction import get_redactor

    if config.statsd_on():
        import statsd  # noqa: F401
    otlp = config.otlp_metrics_on() or (config.traces_on() and config.traces_exporter() == "otlp")
    if config.otlp_metrics_on():
        import opentelemetry.exporter.otlp.proto.http.metric_exporter
        import opentelemetry.sdk.metrics
        import opentelemetry.sdk.metrics.export
    if config.traces_on() and config.traces_exporter() == "otlp":
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
    if otlp:
        import requests  # the OTLP/HTTP exporters import it when they are built

        requests.Session().close()  # and the lazy imports of a first Session
    # Stateless sinks (StatsD's socket, the JSON-lines span file) are built here once and shared by every
    # forked task process; anything with threads or buffers (OTLP) is built in each process instead.
    if not otlp:
        from barecount_provider.telemetry.metrics import get_emitter

        get_emitter()
        _tracing.get_tracing()
    config.warm()
    get_redactor()
    try:
        tenant_policy(config.default_tenant())
    except Exception:
        EMIT_FAILURES.record("policy", "load")


def end_suspended_tries() -> None:
    """A try that defers or waits for human input leaves its process without a terminal state: end its
    span segment here (the try goes on in a new process, whose running hook opens the next segment)."""
    while _TRIES:
        _, tried = _TRIES.popitem()
        if tried.span is not None:
            tried.span.set_attribute("barecount.state", "suspended")
            tried.span.add_event("suspended", {})
            tried.span.end()


def flush() -> None:
    """At the end of the task process: flush, then report BareCount's own failures (a sink that was down
    during the flush is counted through the sinks that work).

    The whole flush is bounded by one deadline, ``emit_timeout_ms``: exporters that buffer (OTLP) are
    flushed in a daemon thread that the task process waits for at most that long, because an exporter's
    own flush does not always honour its timeout (a collector that accepts and never answers).
    """
    import threading

    from barecount_provider.telemetry import tracing

    end_suspended_tries()
    emitter = get_emitter()
    tracer = tracing.get_tracing()
    budget_ms = config.emit_timeout_ms()
    buffered = any(sink.name == "otlp_metrics" for sink in emitter.sinks) or (
        tracer is not None and not tracer.airflow_mode and tracer.exporter_desc.startswith("otlp")
    )
    if buffered:

        def flush_all() -> None:
            emitter.flush(budget_ms)
            if tracer is not None:
                tracer.flush(budget_ms)

        worker = threading.Thread(target=flush_all, name="barecount-flush", daemon=True)
        worker.start()
        worker.join(budget_ms / 1000.0)
        if worker.is_alive():
            EMIT_FAILURES.record("flush", "timeout")
    emitter.report_failures()
