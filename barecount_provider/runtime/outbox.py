"""The OTLP spool: task processes write their spans and metric points to local files, a long-lived process
exports them over OTLP.

A task process lives for one try: building OTLP exporters, a ``requests`` session and exporter threads in
it, then waiting for two HTTP requests at its exit, cost more than the try's own telemetry (and a collector
that hangs cost every task ``emit_timeout_ms``). So, as an agent / collector pair does, a task process only
appends what it would have exported to the spool (one record per try, one JSON line appended with one
``write`` to the journal under ``telemetry_dir/spool``, holding the journal's lock: no directory entry is
created per try), and a long-lived process forwards the spool over OTLP with exporters it built once. A
forwarder seals the journal (renames it to a spool file of its own, under the same lock, so that no write
lands in it afterwards) and claims it as any other spool file; a process that cannot use the journal (its
lock file another user's) writes its record to a file of its own, written once and renamed into place:

* the scheduler, through a child process it starts with its scheduler job and stops with it
  (:class:`ForwarderProcess`: ``barecount telemetry forward --loop`` every :data:`FORWARD_INTERVAL_SECONDS`,
  once more when it is stopped, and on its own when the scheduler is gone). The OTLP exporters, their
  meter provider and their threads live there, never in the scheduler: the OpenTelemetry SDK registers
  at-fork handlers that restart its threads and re-run its resource detectors in every forked child, and
  the scheduler is the process LocalExecutor's workers, and through them every task process, are forked
  from (about 1 ms per task process were they built in the scheduler). The scheduler side's own points
  and spans (run and task spans, queued time...) go through the spool too;
* anywhere else (workers on machines with no scheduler), whatever calls :func:`flush_spool`: a CLI
  (``barecount telemetry forward --loop``), a cron job, a sidecar.

A task process that hands its try's outputs to the forwarder (:func:`handoff`) puts the StatsD points of the
try's end in the same file (cleaned and redacted), and the forwarder sends them to StatsD, before it writes
the handed-off lines: one datagram fewer in the task's last hook, the same lines a round later.

In its loop, the forwarder exports in batches (``OTEL_METRIC_EXPORT_INTERVAL``, ``OTEL_BSP_SCHEDULE_DELAY``,
``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``, as the SDK's periodic reader and batch span processor): the handed-off
lines, entries and StatsD points leave every round, the OTLP requests once per interval; a one-off flush and
the loop's last round export everything.

What is exported is what the task process would have exported itself: the same spans (names, trace and
span ids, parents, links, attributes, events with their times, status, start and end times) and the same
metric points (names, kinds, values, attributes), recorded into the forwarder's long-lived meter provider,
so counters are summed there instead of restarting at each task process. A failed export is counted in
``barecount.emit.failed`` (sink ``otlp_metrics`` or ``traces``, stage ``export``) by the forwarder and the
spooled data is dropped, as a task process would have dropped it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from barecount_provider import config
from barecount_provider.telemetry.filesink import encode_line
from barecount_provider.telemetry.metrics import EMIT_FAILURES

log = logging.getLogger(__name__)

SPOOL_DIR = "spool"
SUFFIX = ".jsonl"
FORWARD_INTERVAL_SECONDS = 2.0
STALE_CLAIM_SECONDS = 600.0  # a claim whose forwarder may still run (not seen gone) is taken over after this long
MAX_FILES_PER_ROUND = 5000
JOURNAL = "journal.open"
"""The file every process appends its records to, one line each, holding :data:`JOURNAL_LOCK` while it opens
and writes it; a forwarder renames it to a spool file of its own (``<ns>-<pid>-journal.jsonl``) under the
same lock, so no write lands in it after that, and claims it as any other spool file."""
JOURNAL_LOCK = ".journal.lock"

# What this process has to spool, written by write_pending(): metric points and finished spans; in a task
# process that hands its tries' outputs to the forwarder (handoff()), also JSON lines for local files (the
# file-sink event, the span line) and evidence entries to cost and store.
_PENDING_POINTS: list[list[Any]] = []
_PENDING_STATSD: list[list[Any]] = []  # a handed-off try's points for StatsD, sent by the forwarder
_PENDING_SPANS: list[dict[str, Any]] = []
_PENDING_LINES: dict[str, list[Any]] = {}
_PENDING_ENTRIES: list[dict[str, Any]] = []
_lock = threading.Lock()
_sequence = 0

FORWARDER_PID_ENV = "BARECOUNT_FORWARDER_PID"
"""Set by the scheduler for the processes it forks once its forwarder runs: the forwarder's process id."""
FORWARDER_OWNER_ENV = "BARECOUNT_FORWARDER_OWNER"
"""The process id of the scheduler that started that forwarder (it writes its own outputs itself)."""
_handoff: bool | None = None  # this process's answer, reset in a forked child


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


def spool_dir() -> str:
    return os.path.join(config.telemetry_dir(), SPOOL_DIR)


def handoff_configured() -> bool:
    """Whether task processes may hand their tries' outputs to a forwarder (``[barecount] task_outputs``
    other than ``task``): the scheduler then runs its forwarder even without OTLP."""
    try:
        return config.task_outputs() != "task"
    except ValueError:
        return False


def handoff() -> bool:
    """Whether this process hands its tries' outputs (file-sink event, span line, evidence entry) to a
    forwarder, through the spool, instead of writing them itself. ``task_outputs = forwarder``: always;
    ``auto``: when a forwarder started by the scheduler is alive (its process id, inherited in
    ``BARECOUNT_FORWARDER_PID``), and this is not that scheduler. Decided once per process."""
    global _handoff
    if _handoff is None:
        _handoff = _handoff_now()
    return _handoff


def _handoff_now() -> bool:
    try:
        mode = config.task_outputs()
    except ValueError:
        return False  # reported where the option is checked (doctor); the task writes its outputs itself
    if mode != "auto":
        return mode == "forwarder"
    raw = os.environ.get(FORWARDER_PID_ENV)
    if not raw or os.environ.get(FORWARDER_OWNER_ENV) == str(os.getpid()):
        return False
    try:
        os.kill(int(raw), 0)  # alive? (a forwarder that died: the task writes its outputs itself)
    except PermissionError:
        return True
    except (ValueError, OSError):
        return False
    return True


def add_lines(path: str, records: list[Any]) -> None:
    """Keep JSON lines for the forwarder to append to ``path`` (records already redacted)."""
    with _lock:
        _PENDING_LINES.setdefault(path, []).extend(records)


def add_statsd_points(points: list[tuple[str, str, float, dict[str, str]]]) -> None:
    """Keep a handed-off try's metric points (cleaned and redacted) for the forwarder to send to StatsD."""
    with _lock:
        _PENDING_STATSD.extend([name, kind, value, tags] for name, kind, value, tags in points)


def add_entry(entry: dict[str, Any]) -> None:
    """Keep an evidence entry for the forwarder to cost and store (see evidence.task.deliver_entry)."""
    with _lock:
        _PENDING_ENTRIES.append(entry)


# ------------------------------------------------------------------------------------------- task process


class SpoolMetricSink:
    """The task process's OTLP metric sink: keeps the points for the spool (no exporter, no thread)."""

    name = "otlp_metrics"

    def describe(self) -> str:
        return f"otlp {config.otlp_endpoint('metrics')} (spooled)"

    def send(self, points: list[tuple[str, str, float, dict[str, str]]]) -> None:
        with _lock:
            _PENDING_POINTS.extend([name, kind, value, tags] for name, kind, value, tags in points)

    def flush(self, timeout_ms: int) -> None:
        write_pending()


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


def add_span_records(records: list[dict[str, Any]]) -> None:
    with _lock:
        _PENDING_SPANS.extend(records)


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
            with _lock:
                _PENDING_SPANS.extend(records)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            return None

    return SpoolSpanExporter


def span_exporter() -> Any:
    return span_exporter_class()()


def pending() -> bool:
    return bool(_PENDING_POINTS or _PENDING_SPANS or _PENDING_LINES or _PENDING_ENTRIES or _PENDING_STATSD)


def write_pending() -> None:
    """Write what this process has to spool as one record (one line, appended to the journal under its
    lock; a file of its own where the journal cannot be used); never raises."""
    global _sequence
    if not pending():
        return
    with _lock:
        record: dict[str, Any] = {"points": list(_PENDING_POINTS), "spans": list(_PENDING_SPANS)}
        if _PENDING_LINES:
            record["lines"] = dict(_PENDING_LINES)
        if _PENDING_ENTRIES:
            record["entries"] = list(_PENDING_ENTRIES)
        if _PENDING_STATSD:
            record["statsd"] = list(_PENDING_STATSD)
        _PENDING_POINTS.clear()
        _PENDING_STATSD.clear()
        _PENDING_SPANS.clear()
        _PENDING_LINES.clear()
        _PENDING_ENTRIES.clear()
        _sequence += 1
        sequence = _sequence
    try:
        # A newline before the record too: a tail torn by a writer killed mid-write ends there, as a line
        # the reader counts as unreadable, instead of joining the next record.
        data = b"\n" + encode_line(record) + b"\n"
        directory = spool_dir()  # made when missing (below), not checked before every write
        if _append_journal(directory, data):
            return
        name = f"{time.time_ns()}-{os.getpid()}-{sequence}"
        temporary = os.path.join(directory, f".{name}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(temporary, os.path.join(directory, name + SUFFIX))
    except Exception:
        EMIT_FAILURES.record("spool", "write")


def _open_journal_lock(directory: str) -> int:
    return os.open(os.path.join(directory, JOURNAL_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)


def _append_journal(directory: str, data: bytes) -> bool:
    """Append ``data`` to the spool's journal under its lock (see :data:`JOURNAL`). False when nothing was
    written (no journal to use: the caller writes a file of its own); raises when a part was written."""
    try:
        lock = _open_journal_lock(directory)
    except FileNotFoundError:  # no spool directory yet (or removed since)
        try:
            os.makedirs(directory, exist_ok=True)
            lock = _open_journal_lock(directory)
        except OSError:
            return False
    except OSError:  # e.g. a lock file of another user's
        return False
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            fd = os.open(os.path.join(directory, JOURNAL), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError:
            return False
        try:
            view = memoryview(data)
            while view:  # one write, unless the kernel took a part of it
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    finally:
        os.close(lock)  # releases the lock
    return True


def _seal_journal(directory: str, wait_s: float = 0.1) -> None:
    """Rename the journal to a spool file of its own, under the journal's lock, so that no writer is still
    appending to it when it is read (writers open it under the lock). A lock held longer than ``wait_s``
    leaves it for the next round. Never raises."""
    journal = os.path.join(directory, JOURNAL)
    if not os.path.exists(journal):
        return
    try:
        lock = _open_journal_lock(directory)
    except OSError:
        EMIT_FAILURES.record("spool", "seal")
        return
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return  # a writer holds it (stopped?): the next round seals the journal
                time.sleep(0.001)
        os.rename(journal, os.path.join(directory, f"{time.time_ns()}-{os.getpid()}-journal{SUFFIX}"))
    except FileNotFoundError:
        pass  # sealed by another forwarder meanwhile
    except OSError:
        EMIT_FAILURES.record("spool", "seal")
    finally:
        os.close(lock)


def _records_of(path: str) -> Iterator[dict[str, Any] | None]:
    """The records of one spool file, in order; None for a line that is not one (a torn tail). The newline
    written before each record leaves blank lines: skipped. Raises OSError."""
    with open(path, "rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError:  # not JSON, or not UTF-8
                yield None


def records_waiting(directory: str | None = None) -> list[dict[str, Any]]:
    """The records waiting in the spool (the journal's and the files' not claimed by a forwarder), read
    without claiming them (unreadable lines left out): for inspection and tests."""
    directory = spool_dir() if directory is None else directory
    try:
        names = sorted(name for name in os.listdir(directory) if name.endswith(SUFFIX) or name == JOURNAL)
    except FileNotFoundError:
        return []
    found: list[dict[str, Any]] = []
    for name in names:
        try:
            found.extend(record for record in _records_of(os.path.join(directory, name)) if record is not None)
        except FileNotFoundError:
            continue  # claimed meanwhile
    return found


def _reset_after_fork() -> None:
    """A forked child starts with nothing to spool (what the parent kept is the parent's to write)."""
    global _lock, _handoff
    _lock = threading.Lock()
    _handoff = None
    _PENDING_POINTS.clear()
    _PENDING_SPANS.clear()
    _PENDING_LINES.clear()
    _PENDING_ENTRIES.clear()
    _PENDING_STATSD.clear()


os.register_at_fork(after_in_child=_reset_after_fork)


# ----------------------------------------------------------------------------------------------- forwarder


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


def _claim(directory: str, limit: int) -> list[str]:
    """Move finished spool files into a directory of this forwarder's own, so that two forwarders never
    export one file twice; returns the claimed paths (oldest first). The journal is sealed into a spool
    file first (:func:`_seal_journal`)."""
    _seal_journal(directory)
    try:
        names = sorted(name for name in os.listdir(directory) if name.endswith(SUFFIX))
    except FileNotFoundError:
        names = []
    claims = os.path.join(directory, f".forwarding-{os.getpid()}")
    claimed: list[str] = []
    now = time.time()
    # Files claimed by a forwarder that died are taken over: at once when its process is gone (the spool is
    # this machine's own), else once the claim is stale.
    try:
        for entry in os.listdir(directory):
            if entry.startswith(".forwarding-") and entry != os.path.basename(claims):
                other = os.path.join(directory, entry)
                try:
                    if _claimer_gone(entry) or now - os.stat(other).st_mtime > STALE_CLAIM_SECONDS:
                        names.extend(os.path.join(entry, name) for name in sorted(os.listdir(other)))
                except OSError:
                    continue
    except FileNotFoundError:
        return []
    if os.path.isdir(claims):
        claimed.extend(os.path.join(claims, name) for name in sorted(os.listdir(claims)))  # left by a deadline
    for name in names[: max(0, limit - len(claimed))]:
        if not claimed and not os.path.isdir(claims):
            os.makedirs(claims, exist_ok=True)
        target = os.path.join(claims, os.path.basename(name))
        try:
            os.rename(os.path.join(directory, name), target)
        except OSError:
            continue  # another forwarder was quicker
        claimed.append(target)
    return claimed


def _claimer_gone(claim: str) -> bool:
    """Whether the forwarder that named a claim directory ``.forwarding-<pid>`` no longer runs on this
    machine (killed with SIGKILL, say, with files claimed and not yet forwarded)."""
    try:
        pid = int(claim.removeprefix(".forwarding-"))
    except ValueError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, owned by another user
        return False
    return False


@dataclasses.dataclass
class _Round:
    """What the files of one round hold."""

    points: list[list[Any]] = dataclasses.field(default_factory=list)
    spans: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    lines: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    entries: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    statsd: list[list[Any]] = dataclasses.field(default_factory=list)
    records: int = 0  # lines read (one per spooling process's write: a try's, a forwarder's own...)


def _read(paths: list[str]) -> _Round:
    found = _Round()
    for path in paths:
        try:
            for record in _records_of(path):
                found.records += 1
                if record is None:
                    EMIT_FAILURES.record("spool", "read")
                    continue
                found.points.extend(record.get("points") or ())
                found.spans.extend(record.get("spans") or ())
                for target, lines in (record.get("lines") or {}).items():
                    found.lines.setdefault(target, []).extend(lines)
                found.entries.extend(record.get("entries") or ())
                found.statsd.extend(record.get("statsd") or ())
        except OSError:
            EMIT_FAILURES.record("spool", "read")
    return found


def _render_stacktraces(spans: list[Any]) -> None:
    """Replace the failure facts a task process left in its spans' exception events with the text of
    ``exception.stacktrace`` (task_side.exception_facts), redacted; a failure is counted, the span kept."""
    from barecount_provider import redaction
    from barecount_provider.runtime import task_side

    for span in spans:
        if not isinstance(span, dict):
            continue
        for event in span.get("events") or ():
            attributes = event.get("attributes") if isinstance(event, dict) else None
            if not isinstance(attributes, dict):
                continue
            facts = attributes.pop(task_side.PENDING_STACKTRACE, None)
            if facts is None:
                continue
            try:
                attributes["exception.stacktrace"] = redaction.redact_text(task_side.render_exception_facts(facts))
            except Exception:
                EMIT_FAILURES.record("traces", "stacktrace")


def _write_lines(lines: dict[str, list[Any]]) -> None:
    """Append the handed-off lines, one write per file; a failure is counted as the task's would be (the
    file sink's ``file/write``, the span file's ``traces/export``)."""
    from barecount_provider.telemetry.filesink import EVENTS_FILE, append_lines

    for path, records in lines.items():
        try:
            append_lines(path, records)
        except Exception:
            sink, stage = ("file", "write") if os.path.basename(path) == EVENTS_FILE else ("traces", "export")
            EMIT_FAILURES.record(sink, stage)


def _deliver_entries(entries: list[dict[str, Any]]) -> None:
    """Cost and store the handed-off evidence entries (spooled where the store fails); never raises."""
    if not entries:
        return
    from barecount_provider.runtime.entries import deliver_entry

    store = True
    for entry in entries:
        # After one failure of the store, the round's other entries go straight to the evidence spool: a
        # store that is down costs one timeout per round, not one per entry.
        if deliver_entry(entry, store=store) != "stored":
            store = False


class Forwarder:
    """Exports the spool over OTLP with exporters built once (see the module docstring)."""

    def __init__(self, metric_sink: Any = None, span_exporter: Any = None, statsd_sink: Any = None):
        self.metric_sink = metric_sink
        self.span_exporter = span_exporter
        self.statsd_sink = statsd_sink  # sends the StatsD points of handed-off tries
        self._lock = threading.Lock()
        # Batched exports (forward(batch=True)): the spans kept, whether recorded metrics wait, and when each
        # was last exported (0: the first data is exported at once).
        self._spans: list[dict[str, Any]] = []
        self._metrics_waiting = False
        self._metrics_exported = self._spans_exported = 0.0

    @classmethod
    def from_config(cls) -> Forwarder:
        from barecount_provider.telemetry.metrics import OtelMetricSink, StatsdSink, get_direct_emitter

        metric_sink = span_exporter_ = statsd_sink = None
        if metrics_spooled():
            metric_sink = next(
                (sink for sink in get_direct_emitter().sinks if isinstance(sink, OtelMetricSink)), None
            )
        if config.statsd_on():
            statsd_sink = next((sink for sink in get_direct_emitter().sinks if isinstance(sink, StatsdSink)), None)
        if traces_spooled():
            from barecount_provider.telemetry.tracing import build_otlp_span_exporter

            span_exporter_ = build_otlp_span_exporter()
        return cls(metric_sink, span_exporter_, statsd_sink)

    @staticmethod
    def _send_spooled(sink: Any, points: list[list[Any]]) -> None:
        """Give ``sink`` the spooled points (cleaned and redacted by their task process): the StatsD sink
        sends the handed-off tries' points, the OTLP sink records them in the forwarder's meter provider
        (summed there until an export). A failure is counted as ``<sink>/spool``."""
        if sink is None or not points:
            return
        try:
            sink.send([(name, kind, value, tags) for name, kind, value, tags in points])
        except Exception:
            EMIT_FAILURES.record(getattr(sink, "name", "sink"), "spool")

    def warm_up(self) -> None:
        """Use the span exporter once (an empty export) on the calling thread: its HTTP stack imports
        modules on first use, which must not happen in a background thread of a process that forks."""
        if self.span_exporter is not None:
            try:
                self.span_exporter.export([])
            except Exception:
                pass

    def _export_points(self, budget_ms: int) -> None:
        """Export what the meter provider holds (the spooled points and this process's own)."""
        if self.metric_sink is not None:
            self.metric_sink.flush(budget_ms)

    def _export_spans(self, records: list[dict[str, Any]]) -> None:
        if self.span_exporter is None or not records:
            return
        spans = []
        for record in records:
            try:
                spans.append(rebuild_span(record))
            except Exception:
                EMIT_FAILURES.record("traces", "spool")
        if spans:
            try:
                result = self.span_exporter.export(spans)
            except Exception:
                result = None
            from opentelemetry.sdk.trace.export import SpanExportResult

            if result != SpanExportResult.SUCCESS:
                EMIT_FAILURES.record("traces", "export")

    def _exports_due(self, batch: bool) -> tuple[bool, list[dict[str, Any]]]:
        """Whether this round exports the metrics, and the spans it exports (taken from the kept ones).

        Not ``batch``: everything now. ``batch`` (the forwarder's loop): the metrics when the last export is
        ``OTEL_METRIC_EXPORT_INTERVAL`` old, the spans when the last export is ``OTEL_BSP_SCHEDULE_DELAY`` old
        or ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` of them wait, as the SDK's periodic reader and batch span
        processor would; the first data after a quiet interval is exported at once."""
        now = time.monotonic()
        metrics_due, spans_due = self._due(batch, now)
        if metrics_due:
            self._metrics_waiting, self._metrics_exported = False, now
        spans: list[dict[str, Any]] = []
        if spans_due:
            spans, self._spans, self._spans_exported = self._spans, [], now
        return metrics_due, spans

    def _due(self, batch: bool, now: float) -> tuple[bool, bool]:
        """Whether the waiting metrics, and the kept spans, are due for export (see :meth:`_exports_due`)."""
        metrics_due = self._metrics_waiting and (
            not batch or now - self._metrics_exported >= config.otlp_metric_export_interval_ms() / 1000.0
        )
        spans_due = bool(self._spans) and (
            not batch
            or now - self._spans_exported >= config.otlp_span_export_interval_ms() / 1000.0
            or len(self._spans) >= config.otlp_span_export_batch_size()
        )
        return metrics_due, spans_due

    def waiting(self) -> bool:
        """Whether metrics or spans wait in this forwarder for a batched export."""
        return self._metrics_waiting or bool(self._spans)

    def metrics_recorded(self) -> None:
        """Points were recorded in the meter provider (spooled ones, or this process's own: the entries' cost
        points, its failure counts): export them with the next metric export."""
        if self.metric_sink is not None:
            self._metrics_waiting = True

    def forward(self, timeout_ms: int | None = None, batch: bool = False) -> dict[str, int]:
        """Seal the journal and forward every spool file once, bounded by one deadline (``emit_timeout_ms`` by default):
        the handed-off lines, evidence entries and StatsD points at once; the metric points and spans
        exported now, or with ``batch`` (the forwarder's loop) kept in this process and exported in batches
        (:meth:`_exports_due`), metrics and spans concurrently. Returns what was read (``busy``: skipped,
        the previous round is still waiting for a collector; its files wait for the next round). Never
        raises."""
        budget_ms = config.emit_timeout_ms() if timeout_ms is None else timeout_ms
        deadline = time.monotonic() + max(budget_ms, 1) / 1000.0  # the whole round: claim, read, export
        result = {"files": 0, "records": 0, "points": 0, "spans": 0, "lines": 0, "entries": 0}
        if not self._lock.acquire(blocking=False):
            return {**result, "busy": 1}  # a round is still running (a hung collector): do not pile up
        handed_off = False
        try:
            paths = _claim(spool_dir(), MAX_FILES_PER_ROUND)
            if not paths and not any(self._due(batch, time.monotonic())):
                return result  # nothing new, and nothing kept is due for export yet
            found = _read(paths)
            result = {
                "files": len(paths),
                "records": found.records,
                "points": len(found.points),
                "spans": len(found.spans),
                "lines": sum(len(lines) for lines in found.lines.values()),
                "entries": len(found.entries),
            }

            def run() -> None:
                try:
                    # Handed-off outputs first: local files, and the entries' cost points join this round's.
                    for records in (found.spans, *found.lines.values()):
                        _render_stacktraces(records)
                    # The StatsD points before the events: a reader of the events finds them sent.
                    self._send_spooled(self.statsd_sink, found.statsd)
                    _write_lines(found.lines)
                    _deliver_entries(found.entries)  # their cost points are recorded in the meter provider
                    self._send_spooled(self.metric_sink, found.points)
                    if found.points or found.entries:
                        self.metrics_recorded()
                    if self.span_exporter is not None:
                        self._spans.extend(found.spans)
                    metrics_due, spans = self._exports_due(batch)
                    export_ms = max(1, int((deadline - time.monotonic()) * 1000))
                    workers = [
                        threading.Thread(target=target, args=args, daemon=True)
                        for due, target, args in (
                            (metrics_due, self._export_points, (export_ms,)),
                            (bool(spans), self._export_spans, (spans,)),
                        )
                        if due
                    ]
                    for worker in workers:
                        worker.start()
                    for worker in workers:
                        worker.join()
                finally:
                    for path in paths:
                        try:
                            os.unlink(path)
                        except OSError:
                            pass
                    self._lock.release()

            round_thread = threading.Thread(target=run, name="barecount-forward", daemon=True)
            round_thread.start()
            handed_off = True
            round_thread.join(max(0.0, deadline - time.monotonic()))
            if round_thread.is_alive():
                EMIT_FAILURES.record("forward", "timeout")
        except Exception:
            EMIT_FAILURES.record("spool", "forward")
            log.debug("BareCount could not forward its spool", exc_info=True)
        finally:
            if not handed_off:
                self._lock.release()
        return result


def get_forwarder() -> Forwarder:
    """This process's forwarder, built once with its direct emitter (and dropped with it at a fork)."""
    from barecount_provider.telemetry.metrics import get_direct_emitter

    direct = get_direct_emitter()
    forwarder = getattr(direct, "forwarder", None)
    if forwarder is None:
        forwarder = direct.forwarder = Forwarder.from_config()
    return forwarder


def flush_spool(timeout_ms: int | None = None, batch: bool = False) -> dict[str, int]:
    """Forward the spool now, bounded by ``timeout_ms`` (default ``emit_timeout_ms``), and report the
    forwarder's own failures; never raises. ``batch`` (a forwarder's loop, between its first and its last
    round): the OTLP exports are batched (:meth:`Forwarder.forward`); otherwise everything is exported now.
    For deployments where no scheduler runs on the machine of the task processes: call it from a CLI, a cron
    job or a sidecar loop."""
    if not (enabled() or handoff_configured()):
        return {"files": 0, "records": 0, "points": 0, "spans": 0, "lines": 0, "entries": 0}
    global LAST_ROUND_FAILURES
    write_pending()  # what this process spooled itself
    result = get_forwarder().forward(timeout_ms, batch=batch)
    try:
        LAST_ROUND_FAILURES = {f"{sink}/{stage}": n for (sink, stage), n in sorted(EMIT_FAILURES.counts.items())}
    except Exception:
        LAST_ROUND_FAILURES = {}
    try:
        from barecount_provider.telemetry.metrics import get_direct_emitter

        if get_direct_emitter().report_failures():
            get_forwarder().metrics_recorded()
    except Exception:
        pass
    return result


LAST_ROUND_FAILURES: dict[str, int] = {}
"""This process's own failures (``sink/stage``: count) counted until the end of its last :func:`flush_spool`."""

HEARTBEAT_FILE = "forwarder.heartbeat"


def heartbeat_path() -> str:
    """The forwarder's heartbeat: ``telemetry_dir/forwarder.heartbeat``."""
    return os.path.join(config.telemetry_dir(), HEARTBEAT_FILE)


def write_heartbeat(result: dict[str, int], interval_s: float | None, failures: dict[str, int] | None = None) -> bool:
    """Replace the heartbeat with this round's: its time, this process's pid and host, the loop's interval,
    the round's counts and its failures (``last_error``: the round's failures, None when it had none). Written
    to a temporary file and renamed, so a reader never sees half of it. Returns whether it was written; never
    raises (a failure is counted, ``spool/heartbeat``)."""
    failures = LAST_ROUND_FAILURES if failures is None else failures
    beat = {
        "time": time.time(),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "interval_s": interval_s,
        "counts": result,
        "failures": failures,
        "last_error": ", ".join(f"{key} {n}" for key, n in failures.items()) or None,
    }
    path = heartbeat_path()
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(beat, file)
        os.replace(temporary, path)
        return True
    except Exception:
        EMIT_FAILURES.record("spool", "heartbeat")
        log.debug("BareCount could not write the forwarder's heartbeat %s", path, exc_info=True)
        try:
            os.unlink(temporary)
        except OSError:
            pass
        return False


def check_heartbeat(max_age_s: float | None = None, now: float | None = None) -> tuple[bool, str]:
    """Whether the forwarder's last round is recent: younger than ``max_age_s`` (default: three times the
    interval its heartbeat records, or 60 s when it records none), and one line saying why."""
    path = heartbeat_path()
    try:
        with open(path, encoding="utf-8") as file:
            beat = json.load(file)
        when = float(beat["time"])
    except FileNotFoundError:
        return False, f"no forwarder heartbeat at {path}: no `barecount telemetry forward --loop` has run a round"
    except (OSError, ValueError, TypeError, KeyError) as err:
        return False, f"unreadable forwarder heartbeat {path}: {err}"
    interval = beat.get("interval_s")
    if max_age_s is None:
        max_age_s = 3 * float(interval) if isinstance(interval, (int, float)) and interval > 0 else 60.0
    age = (time.time() if now is None else now) - when
    where = f"pid {beat.get('pid')} on {beat.get('host')}"
    error = f"; last round's failures: {beat['last_error']}" if beat.get("last_error") else ""
    if age > max_age_s:
        return False, f"forwarder STALE: last round {age:.0f} s ago (more than {max_age_s:g} s), {where}{error}"
    return True, f"forwarder ok: last round {max(age, 0.0):.0f} s ago (at most {max_age_s:g} s), {where}{error}"


class ForwarderProcess:
    """The scheduler's forwarder: ``barecount telemetry forward --loop`` in a child process (see the module
    docstring). Started and stopped from the scheduler's main thread or BareCount's threads; never raises."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> bool:
        if self.process is not None and self.process.poll() is None:
            return False
        command = [
            sys.executable, "-m", "barecount_provider.cli", "telemetry", "forward", "--quiet",
            "--loop", str(FORWARD_INTERVAL_SECONDS), "--parent-pid", str(os.getpid()),
        ]
        try:
            # Same environment and AIRFLOW_HOME as the scheduler, hence the same [barecount] settings; its
            # warnings go to the scheduler's standard error.
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, close_fds=True)
        except Exception:
            EMIT_FAILURES.record("spool", "forwarder_start")
            log.warning("BareCount could not start its OTLP spool forwarder", exc_info=True)
            return False
        return True

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def advertise(self) -> None:
        """Name this forwarder to the processes the caller forks from now on (``task_outputs = auto``)."""
        if self.process is not None:
            os.environ[FORWARDER_PID_ENV] = str(self.process.pid)
            os.environ[FORWARDER_OWNER_ENV] = str(os.getpid())

    def withdraw(self) -> None:
        if os.environ.get(FORWARDER_OWNER_ENV) == str(os.getpid()):
            os.environ.pop(FORWARDER_PID_ENV, None)
            os.environ.pop(FORWARDER_OWNER_ENV, None)

    def stop(self, timeout_s: float | None = None) -> int | None:
        """Ask for a last round (SIGTERM) and wait for it, bounded (``emit_timeout_ms`` + 10 s: the process
        may still be starting); killed past that. Returns the exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        wait_s = config.emit_timeout_ms() / 1000.0 + 10.0 if timeout_s is None else timeout_s
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            return process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            EMIT_FAILURES.record("spool", "forwarder_stop")
            process.kill()
            return process.wait()
        except Exception:
            EMIT_FAILURES.record("spool", "forwarder_stop")
            return None
