"""The pre-fork preload: what every task try needs, imported, built and warmed once in the process that forks
the task processes, which inherit it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from opentelemetry.trace import Status, StatusCode

from barecount_provider import config, context, redaction
from barecount_provider.jsonlines import encode_line
from barecount_provider.runtime import task_side
from barecount_provider.telemetry import filesink, resources, tracing
from barecount_provider.telemetry import logging as _logging
from barecount_provider.telemetry.exceptions import exception_facts, format_exception_text
from barecount_provider.telemetry.metrics import COUNTER, EMIT_FAILURES, get_emitter

log = logging.getLogger(__name__)


def preload() -> None:
    """Import, build and warm, once, what every task try needs, in a process that later forks task processes.

    Called where the plugin is loaded (the scheduler, before LocalExecutor forks its workers, which fork the
    task processes): the imports, the options, the compiled redaction patterns and the redactor's caches of
    the keys BareCount writes, the parsed policy of every declared tenant, the emitter and the tracer
    provider are then inherited, and a task process pays none of them. The emitter and the tracer provider
    of task processes hold no thread and no buffer of the SDK (StatsD's socket, a JSON-lines file, the OTLP
    spool, see spool.py), so one built here is shared by every forked task process; the exporters that do
    (OTLP) live in the long-lived process that forwards the spool (scheduler_side.py).

    Nothing is preloaded with ``[barecount] fast_paths = False``: each task process then imports and builds
    what it needs itself (docs/benchmarks.md has what that costs).
    """
    if not config.fast_paths():
        return
    import opentelemetry.sdk.trace
    import opentelemetry.sdk.trace.export  # noqa: F401

    if config.statsd_on():
        import statsd  # noqa: F401
    config.warm()
    for sink in get_emitter().sinks:
        warm = getattr(sink, "warm", None)
        if warm is not None:
            warm()
    if config.traces_on():
        if tracing.airflow_tracing_on():
            # Airflow's tracer provider is set up by each task process: nothing of it is built here, only the
            # SDK's span path is warmed (the try span is an SDK span of Airflow's provider then).
            tracing.warm_span_path()
        else:
            tracing.get_tracing()  # a file or the spool: no thread, no buffer; shared by the task processes
        warm_task_frame_sources()  # the source a failing try's exception.stacktrace shows
    _logging.warm_context_vars()
    context.correlation_id_for("", "")  # the keyed hash's first use (key, digest) is paid here, once
    redactor = redaction.get_redactor()
    task_side.policy_values(config.default_tenant())  # the policy, parsed once here (a failure is reported there)
    try:
        # The cluster policy's task_policy runs in every task process (Airflow parses the DAG file there) and
        # attaches BareCount's retry policy: its modules (and SQLAlchemy, which the task SDK does not import)
        # cost a task process about 10 ms to import; imported here once, they are inherited.
        from barecount_provider.recovery import retry as _retry  # noqa: F401
    except Exception:
        EMIT_FAILURES.record("preload", "retry")
        log.debug("BareCount could not import its retry policy before the fork", exc_info=True)
    # The redactor caches its decision per key; warm it with the keys of the log fields (those of the
    # file-sink event and the span get theirs from the stand-in try below).
    redactor.redact_mapping({key: "" for key in (*_logging.CONTEXT_FIELDS, "correlation_id", "run_token")})
    if config.evidence_on():  # the evidence entry's modules and the price table, read once here
        try:
            from barecount_provider.cost import configured_price_table
            from barecount_provider.evidence import spool as _evidence_spool
            from barecount_provider.runtime import entries as _evidence_task

            configured_price_table()
            _evidence_task.log_settings()
            if config.evidence_store() == "local":  # a path and an index URL (opened on first use): fork-safe
                _evidence_spool._task_store("local", config.evidence_store_timeout_ms())
        except Exception:
            EMIT_FAILURES.record("evidence", "preload")
    try:
        _warm_try_path()
    except Exception:
        EMIT_FAILURES.record("preload", "warm")
        log.debug("BareCount could not warm the task path", exc_info=True)


# The modules whose frames every failed try's traceback shows: the task runner's, the operator base's
# (its execute wrapper), the callback runner's, and the standard PythonOperator's (the most common operator).
TASK_FRAME_MODULES = (
    "airflow.sdk.execution_time.task_runner",
    "airflow.sdk.bases.operator",
    "airflow.sdk.execution_time.callback_runner",
    "airflow.providers.standard.operators.python",
)


def warm_task_frame_sources() -> list[str]:
    """Read the source of :data:`TASK_FRAME_MODULES` into ``linecache`` before the fork (about 0.6 MB in the
    process that forks the task processes, shared by them): a failing try's ``exception.stacktrace`` then
    takes those frames' lines from the inherited cache (a stat per file, as ``traceback`` does) instead of
    reading some 2,000 lines of the task runner's source in each failing task process (about 0.25 ms).
    Returns the files read; never raises."""
    import importlib.util
    import linecache

    read = []
    for name in TASK_FRAME_MODULES:
        try:
            spec = importlib.util.find_spec(name)
            origin = getattr(spec, "origin", None)
            if origin and origin.endswith(".py") and linecache.getlines(origin):
                read.append(origin)
        except Exception:  # a module this Airflow does not have, or an unreadable file: formatted as before
            continue
    return read


def _warm_try_path() -> None:
    """Run the part of a try's path that has no output once, on a stand-in task, in the process that forks
    the task processes: what a task process's first try would otherwise do first (importing what the path
    imports lazily, filling the ABC, regex and redaction caches, building lazily made objects) is done once, here,
    and inherited. Nothing is written, sent, exported or left bound: the span goes to no exporter, the
    metric points (and their StatsD lines and datagrams), the span line, the file-sink event and the
    evidence entry are built and encoded, not written or sent; the log context is bound and unbound at
    once."""
    from types import SimpleNamespace

    import structlog

    from barecount_provider.telemetry.metrics import clean_tags

    redact = redaction.redact

    started = datetime.now(UTC)
    dag = SimpleNamespace(dag_id="barecount_warm", tags=["pipeline:warm"], params={}, default_args={}, tasks=[])
    task = SimpleNamespace(
        task_id="warm", dag=dag, upstream_task_ids={"upstream"}, params={}, pool="default_pool", retries=0,
        retry_policy=None, partial_kwargs={},
    )
    dag.tasks.append(task)
    ti = SimpleNamespace(
        dag_id=dag.dag_id, run_id="warm", task_id=task.task_id, map_index=-1, try_number=2, max_tries=2,
        task=task, start_date=started, _ti_context_from_server=None,
    )
    tags = context.tags_of(dag)
    context.is_opted_out(dag, tags=tags)
    ctx = context.resolve_for_ti(ti, tags=tags)
    ratio, _ = task_side.policy_values(ctx.tenant)
    tracing.sampled_for_run(ctx.dag_id, ctx.run_id, ratio)
    span = tracing.Tracing(airflow_mode=False).start_try_span(  # no exporter: the span goes nowhere
        ctx, sampled=True, upstream_task_ids=task.upstream_task_ids, max_tries=2, resumed=True
    )
    ctx = ctx.with_trace(tracing.traceparent_of(span))
    ctx.environment()
    # What bind_run_context does, reset at once (its own record of what it bound stays untouched).
    fields = {key: value for key, value in ctx.log_fields().items() if value is not None and value != ""}
    structlog.contextvars.reset_contextvars(**structlog.contextvars.bind_contextvars(**redact(fields)))
    usage = resources.usage_since(resources.start_of_try(reset_peak=False))  # the forking process's peak kept
    try:
        raise ValueError("warm")
    except ValueError as err:
        error: BaseException = err
    error_class = task_side.error_class_of(error)
    cleaned = [(name, kind, value, clean_tags(tags)) for name, kind, value, tags in task_side._try_points(ctx, "up_for_retry", 0.5, usage, error_class)]
    start_point = [("barecount.task.started", COUNTER, 1, clean_tags(ctx.metric_tags()))]
    for sink in get_emitter().sinks:  # the StatsD datagrams, built and not sent
        if hasattr(sink, "packets"):
            sink.packets(start_point)
            sink.packets(cleaned)
    span.set_attribute("barecount.state", "up_for_retry")
    span.set_attribute("barecount.cpu_time_ms", round(usage.cpu_seconds * 1000.0, 3))
    span.add_event("exception", {"exception.message": redact(str(error)), "exception.stacktrace": redact(format_exception_text(error))})
    encode_line(exception_facts(error))  # what a task process that hands off records instead
    span.set_status(Status(StatusCode.ERROR, description=error_class))
    span.end()
    encode_line(span.file_line())
    encode_line(span.record())  # the spool's record
    now = datetime.now(UTC)
    event = task_side._try_event(
        ctx, now=now, state="up_for_retry", duration_s=0.5, trace_id="0" * 32, span_id="0" * 16, sampled=True,
        error_class=error_class, usage=usage, sinks=task_side.sinks_description(filesink.events_path()),
    )
    encode_line(redact(event))
    if config.evidence_on():
        from barecount_provider.evidence.store import encode_document
        from barecount_provider.runtime.entries import build_try_entry, try_facts

        entry = build_try_entry(
            ctx, ti, state="up_for_retry", started_at=started, ended_at=now, duration_s=0.5,
            metrics=usage.as_dict(), trace={"trace_id": "0" * 32, "span_id": "0" * 16, "sampled": True},
            error={"error_class": error_class, "message": redact(str(error))}, emitter=None,
        )
        encode_document(entry)
        encode_line(try_facts(  # handed off: the facts only, as the spool's record holds them
            ctx, ti, state="success", started_at=started, ended_at=now, duration_s=0.5,
            metrics=usage.as_dict(), trace=None, error=None, emitter=None,
        ))

