"""What BareCount does inside a task process, for one try: context, span, metrics, logs, resources.

Called by the lifecycle listener. Never touches Airflow's database (the ORM is blocked in task processes)
and never raises: the listener wraps every call and counts failures.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import time
import traceback
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace as otel_trace
from opentelemetry.trace import Status, StatusCode

from barecount_provider import config, context, outbox, redaction
from barecount_provider import policy as _policy
from barecount_provider.jsonlines import encode_line
from barecount_provider.runtime import forwarding
from barecount_provider.telemetry import filesink, outbox_sinks, resources, tracing
from barecount_provider.telemetry import logging as _logging
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
    server_context = getattr(ti, "_ti_context_from_server", None)
    return bool(getattr(server_context, "next_method", None))


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


def _frame_lines(error: BaseException) -> dict[str, set[int]]:
    """The source lines a traceback of ``error`` shows: file -> line numbers (chained exceptions included)."""
    needed: dict[str, set[int]] = {}
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            needed.setdefault(tb.tb_frame.f_code.co_filename, set()).add(tb.tb_lineno)
            tb = tb.tb_next
        todo.extend((current.__cause__, current.__context__))
        todo.extend(getattr(current, "exceptions", None) or ())  # exception groups
    return needed


def _source_lines(path: str, linenos: set[int]) -> dict[int, str] | None:
    """The lines ``linenos`` of the file at ``path`` as linecache gives them (the file's declared encoding,
    universal newlines; out of range: empty), reading the file only as far as the last of them; None where
    linecache must do it itself (a relative path)."""
    import tokenize

    if not os.path.isabs(path) or not linenos:
        return None
    last = max(linenos)
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks: list[bytes] = []
        newlines = 0
        while chunk := os.read(fd, 32768):  # without a buffered file object
            chunks.append(chunk)
            if b"\r" in chunk:  # \r\n or \r line ends: the whole file, split as universal newlines do
                while chunk := os.read(fd, 65536):
                    chunks.append(chunk)
                break
            newlines += chunk.count(b"\n")
            if newlines >= last:
                break
    finally:
        os.close(fd)
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    head = data[: data.find(b"\n", data.find(b"\n") + 1) + 1 or None]  # the first two lines
    if data.startswith(b"\xef\xbb\xbf") or b"coding" in head:  # a BOM or a coding cookie: as tokenize reads it
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    else:
        encoding = "utf-8"  # what tokenize.detect_encoding answers for a file with neither
    if b"\r" in data:
        raw = data.splitlines()
        return {lineno: raw[lineno - 1].decode(encoding) if 1 <= lineno <= len(raw) else "" for lineno in linenos}
    lines: dict[int, str] = {}  # \n only: find the wanted lines without making an object of every line
    position, number = 0, 1
    for wanted in sorted(linenos):
        while number < wanted and position >= 0:
            # Skip a run of whole lines at once: count the newlines in a stretch shorter than the lines left
            # at 24 bytes a line; one line at a time where the stretch holds too many or none.
            end = position + (wanted - number) * 24
            count = data.count(b"\n", position, end)
            if 0 < count <= wanted - number:
                position = data.rfind(b"\n", position, end) + 1
                number += count
            else:
                position = data.find(b"\n", position) + 1 or -1
                number += 1
        if wanted < 1 or position < 0 or position >= len(data):
            lines[wanted] = ""
            continue
        end = data.find(b"\n", position)
        lines[wanted] = (data[position:] if end < 0 else data[position:end]).decode(encoding)
    return lines


_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"
_RECURSIVE_CUTOFF = 3  # traceback._RECURSIVE_CUTOFF: a line repeated more often is summarised


def _chain(error: BaseException) -> list[tuple[str | None, BaseException]] | None:
    """The exceptions Python prints for ``error``, oldest first, each with the message that leads to the
    next; None where ``traceback`` must do it (exception groups, syntax errors)."""
    chain: list[tuple[str | None, BaseException]] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, (BaseExceptionGroup, SyntaxError)):
            return None
        seen.add(id(current))
        cause, context = current.__cause__, current.__context__
        if cause is not None and id(cause) not in seen:
            chain.append((_CAUSE, current))
            current = cause
        elif context is not None and not current.__suppress_context__ and id(context) not in seen:
            chain.append((_CONTEXT, current))
            current = context
        else:
            chain.append((None, current))
            current = None
    chain.reverse()
    return chain


def _exception_only(error: BaseException) -> list[str]:
    """``traceback.format_exception_only`` of an exception that is neither a group nor a syntax error."""
    kind = type(error)
    name, module = kind.__qualname__, kind.__module__
    if module not in ("__main__", "builtins"):
        name = f"{module if isinstance(module, str) else '<unknown>'}.{name}"
    try:
        message = str(error)
    except Exception:
        message = "<exception str() failed>"
    lines = [f"{name}: {message}\n" if message else f"{name}\n"]
    notes = getattr(error, "__notes__", None)
    if isinstance(notes, (list, tuple)):
        for note in notes:
            if not isinstance(note, str):
                try:
                    note = str(note)
                except Exception:
                    note = "<note str() failed>"
            lines.extend(part + "\n" for part in note.split("\n"))
    elif notes is not None:
        return []  # a __notes__ of another kind: traceback's own wording
    return lines


def _repeated(count: int) -> list[str]:
    """traceback's summary of a frame line shown ``count`` times in a row (none up to the cutoff)."""
    if count <= _RECURSIVE_CUTOFF:
        return []
    repeated = count - _RECURSIVE_CUTOFF
    return [f"  [Previous line repeated {repeated} more time{'s' if repeated > 1 else ''}]\n"]


def _lean_format(error: BaseException, source: Any) -> str | None:
    """The text of ``traceback.format_exception(error)`` without column markers, built from the traceback's
    frames and ``source(path, lineno)``; None where only ``traceback`` gives the right text."""
    import sys

    if getattr(sys, "tracebacklimit", None) is not None:
        return None
    chain = _chain(error)
    if chain is None:
        return None
    out: list[str] = []
    for message, current in chain:
        if message is not None:
            out.append(message)
        tb = current.__traceback__
        if tb is not None:
            out.append("Traceback (most recent call last):\n")
            last: tuple[str, int | None, str] | None = None
            count = 0
            while tb is not None:
                code = tb.tb_frame.f_code
                key = (code.co_filename, tb.tb_lineno, code.co_name)
                if key != last:
                    out.extend(_repeated(count))
                    last, count = key, 0
                count += 1
                if count <= _RECURSIVE_CUTOFF:
                    out.append(f'  File "{key[0]}", line {key[1]}, in {key[2]}\n')
                    line = source(key[0], key[1], tb.tb_frame.f_globals).strip() if key[1] is not None else ""
                    if line:
                        out.append(f"    {line}\n")
                tb = tb.tb_next
            out.extend(_repeated(count))
        only = _exception_only(current)
        if not only:
            return None
        out.extend(only)
    return "".join(out)


def format_exception_text(error: BaseException) -> str:
    """The traceback of ``error`` as Python prints it under ``-X no_debug_ranges``: the text of
    ``traceback.format_exception(error)`` without the ``^^^^`` column markers, reading only the source lines
    it shows.

    The markers are found by parsing and compiling every source line of the stack (``ast.parse``), the
    costliest part of formatting a traceback in a task process (about 0.3 ms and 50 page faults for a short
    one); the task's log, written by Airflow, keeps them. linecache reads and keeps every line of every file
    of a traceback (the task runner's, the operator's, the DAG file): about 1 ms and a few hundred page
    faults in a task process whose cache is cold, for the few lines the traceback shows. Those lines are
    read here, each file only as far as the last line shown, and not kept (files already in linecache, such
    as the Airflow modules preload() reads, are taken from it). The common case (a chain of ordinary
    exceptions) is formatted here from the frames, as ``traceback`` formats it, without its per-frame
    objects (0.6 ms and 120 page faults for a short traceback in a forked task process); exception groups,
    syntax errors and a set ``sys.tracebacklimit`` go through ``traceback`` itself.
    """
    import linecache

    read: dict[str, dict[int, str] | None] = {}
    needed: dict[str, set[int]] = {}

    def source(path: str, lineno: int, module_globals: Any) -> str:
        if path not in read:
            lines = None
            if path not in linecache.cache:
                if not needed:
                    needed.update(_frame_lines(error))
                try:
                    lines = _source_lines(path, needed.get(path, {lineno}))
                except (OSError, SyntaxError, UnicodeDecodeError, LookupError):
                    lines = None
            else:
                linecache.checkcache(path)  # as traceback does: a file changed on disk is read again
            read[path] = lines
        lines = read[path]
        if lines is None or lineno not in lines:  # linecache, as traceback uses it (a loader may have the source)
            linecache.lazycache(path, module_globals)
            return linecache.getline(path, lineno)
        return lines[lineno]

    text = _lean_format(error, source)
    if text is not None:
        return text
    exception = traceback.TracebackException(type(error), error, error.__traceback__, compact=True)
    for current in _all_exceptions(exception):
        for frame in current.stack:
            frame.colno = frame.end_colno = None
    return "".join(exception.format())


PENDING_STACKTRACE = "barecount.pending.stacktrace"
"""Span event attribute of a failure whose ``exception.stacktrace`` the spool's forwarder renders (see
:func:`exception_facts`); the forwarder replaces it with the text before it writes or exports the span."""


def exception_facts(error: BaseException) -> list[list[Any]] | None:
    """What :func:`format_exception_text` would print for ``error``, without reading a source line: for each
    exception of the chain, oldest first, the line that leads to it, its frames (``[path, line, function,
    times in a row]``) or None, and its last lines (type, message, notes), redacted here, where the task's
    registered secrets are known. The forwarder renders the text from them (:func:`render_exception_facts`),
    reading the source lines itself: code, which Airflow shows in its UI, not the try's data; it redacts them
    with the value patterns. None where only ``traceback`` gives the right text (exception groups, syntax
    errors, a set ``sys.tracebacklimit``)."""
    import sys

    if getattr(sys, "tracebacklimit", None) is not None:
        return None
    chain = _chain(error)
    if chain is None:
        return None
    redact_text = redaction.redact_text
    facts: list[list[Any]] = []
    for message, current in chain:
        tb = current.__traceback__
        frames: list[list[Any]] | None = None
        if tb is not None:
            frames = []
            last: tuple[str, int | None, str] | None = None
            while tb is not None:
                code = tb.tb_frame.f_code
                key = (code.co_filename, tb.tb_lineno, code.co_name)
                if key == last:
                    frames[-1][3] += 1  # a recursion: counted, as traceback summarises it
                else:
                    frames.append([key[0], key[1], key[2], 1])
                    last = key
                tb = tb.tb_next
        only = _exception_only(current)
        if not only:
            return None
        facts.append([message, frames, [redact_text(line) for line in only]])
    return facts


def render_exception_facts(facts: list[list[Any]]) -> str:
    """The text of :func:`format_exception_text` from :func:`exception_facts`, source lines read here (in
    the forwarder: its linecache stays warm from one try to the next). Not redacted: the caller redacts it."""
    import linecache

    out: list[str] = []
    checked: set[str] = set()
    for message, frames, only in facts:
        if message is not None:
            out.append(message)
        if frames is not None:
            out.append("Traceback (most recent call last):\n")
            for path, lineno, name, count in frames:
                if path not in checked:
                    linecache.checkcache(path)  # a file changed on disk is read again
                    checked.add(path)
                line = linecache.getline(path, lineno).strip() if lineno is not None else ""
                for _ in range(min(count, _RECURSIVE_CUTOFF)):
                    out.append(f'  File "{path}", line {lineno}, in {name}\n')
                    if line:
                        out.append(f"    {line}\n")
                out.extend(_repeated(count))
        out.extend(only)
    return "".join(out)


def _all_exceptions(exception: traceback.TracebackException) -> list[traceback.TracebackException]:
    """The exception and every one chained to it or grouped in it."""
    found: list[traceback.TracebackException] = []
    todo = [exception]
    seen: set[int] = set()
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        todo.extend((current.__cause__, current.__context__))  # type: ignore[arg-type]
        todo.extend(getattr(current, "exceptions", None) or ())
    return found


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


_SINKS_DESCRIPTIONS: dict[tuple[int, int, str], tuple[Any, Any, dict[str, str]]] = {}


def sinks_description(events_path: str) -> dict[str, str]:
    """Where this process's telemetry goes (the file-sink event's ``sinks``): the metric sinks, the traces'
    exporter and the events file. Fixed for a process's emitter and tracer, so described once for them
    (before the fork, by the warm-up); callers must not change the dict."""
    emitter, tracer = get_emitter(), tracing.get_tracing()
    key = (id(emitter), id(tracer), events_path)
    cached = _SINKS_DESCRIPTIONS.get(key)
    if cached is None or cached[0] is not emitter or cached[1] is not tracer:
        sinks = emitter.describe()
        sinks["traces"] = tracer.exporter_desc if tracer is not None else "off"
        sinks["file"] = events_path
        sinks["written_by"] = "task"  # "forwarder" in the events of a task process that hands off
        if len(_SINKS_DESCRIPTIONS) >= 8:
            _SINKS_DESCRIPTIONS.clear()
        cached = _SINKS_DESCRIPTIONS[key] = (emitter, tracer, sinks)
    return cached[2]


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


def preload() -> None:
    """Import, build and warm, once, what every task try needs, in a process that later forks task processes.

    Called where the plugin is loaded (the scheduler, before LocalExecutor forks its workers, which fork the
    task processes): the imports, the options, the compiled redaction patterns and the redactor's caches of
    the keys BareCount writes, the parsed policy of every declared tenant, the emitter and the tracer
    provider are then inherited, and a task process pays none of them. The emitter and the tracer provider
    of task processes hold no thread and no buffer of the SDK (StatsD's socket, a JSON-lines file, the OTLP
    spool, see spool.py), so one built here is shared by every forked task process; the exporters that do
    (OTLP) live in the long-lived process that forwards the spool (scheduler_side.py).
    """
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
    policy_values(config.default_tenant())  # the policy, parsed once here (a failure is reported there)
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
        for _ in range(WARM_ROUNDS):
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


WARM_ROUNDS = 10
"""Times :func:`preload` runs the try's path. CPython 3.11 quickens a function's code after its 8th call
(before that, every call writes the code object's warm-up counter, a copy-on-write page fault in a forked
task process for each function it calls the first time); run ten times in the process that forks the task
processes, the path's code is quickened and specialised there, once. Side by side, in both orders
(``bench_overhead.py --baseline``): about 0.03–0.07 ms less in the ``running`` hook."""


def _warm_try_path() -> None:
    """Run the part of a try's path that has no output once, on a stand-in task, in the process that forks
    the task processes: what a task process's first try would otherwise do first (specialising the code it
    runs, filling the ABC, regex and redaction caches, building lazily made objects) is done once, here,
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
    ratio, _ = policy_values(ctx.tenant)
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
    error_class = error_class_of(error)
    cleaned = [(name, kind, value, clean_tags(tags)) for name, kind, value, tags in _try_points(ctx, "up_for_retry", 0.5, usage, error_class)]
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
    event = _try_event(
        ctx, now=now, state="up_for_retry", duration_s=0.5, trace_id="0" * 32, span_id="0" * 16, sampled=True,
        error_class=error_class, usage=usage, sinks=sinks_description(filesink.events_path()),
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

