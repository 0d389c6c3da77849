"""The forwarder: a long-lived process that empties the outbox (:mod:`barecount_provider.outbox`) that
task processes write, exporting over OTLP with exporters it built once.

Who forwards:

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
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from barecount_provider import config, outbox
from barecount_provider.telemetry import outbox_sinks
from barecount_provider.telemetry.metrics import EMIT_FAILURES

log = logging.getLogger(__name__)

FORWARD_INTERVAL_SECONDS = 2.0
STALE_CLAIM_SECONDS = 600.0  # a claim whose forwarder may still run (not seen gone) is taken over after this long
MAX_FILES_PER_ROUND = 5000


# ----------------------------------------------------------------------------------------------- forwarder


def _claim(directory: str, limit: int) -> list[str]:
    """Move finished spool files into a directory of this forwarder's own, so that two forwarders never
    export one file twice; returns the claimed paths (oldest first). The journal is sealed into a spool
    file first (:func:`outbox.seal_journal`)."""
    outbox.seal_journal(directory)
    try:
        names = sorted(name for name in os.listdir(directory) if name.endswith(outbox.SUFFIX))
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
    entries: list[Any] = dataclasses.field(default_factory=list)  # the facts of handed-off tries' entries
    statsd: list[list[Any]] = dataclasses.field(default_factory=list)
    records: int = 0  # lines read (one per spooling process's write: a try's, a forwarder's own...)


def _read(paths: list[str]) -> _Round:
    found = _Round()
    for path in paths:
        try:
            for record in outbox.records_of(path):
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
    ``exception.stacktrace`` (telemetry.exceptions.exception_facts), redacted; a failure is counted, the span kept."""
    from barecount_provider import redaction
    from barecount_provider.telemetry import exceptions

    for span in spans:
        if not isinstance(span, dict):
            continue
        for event in span.get("events") or ():
            attributes = event.get("attributes") if isinstance(event, dict) else None
            if not isinstance(attributes, dict):
                continue
            facts = attributes.pop(exceptions.PENDING_STACKTRACE, None)
            if facts is None:
                continue
            try:
                attributes["exception.stacktrace"] = redaction.redact_text(exceptions.render_exception_facts(facts))
            except Exception:
                EMIT_FAILURES.record("traces", "stacktrace")


def _write_lines(lines: dict[str, list[Any]]) -> None:
    """Append the handed-off lines, one write per file; a failure is counted as the task's would be (the
    file sink's ``file/write``, the span file's ``traces/export``)."""
    from barecount_provider.jsonlines import append_lines
    from barecount_provider.telemetry.filesink import EVENTS_FILE

    for path, records in lines.items():
        try:
            append_lines(path, records)
        except Exception:
            sink, stage = ("file", "write") if os.path.basename(path) == EVENTS_FILE else ("traces", "export")
            EMIT_FAILURES.record(sink, stage)


def _deliver_entries(entries: list[Any]) -> None:
    """Make, cost and store the entries of the handed-off tries' evidence facts (spooled where the store
    fails); never raises."""
    if not entries:
        return
    from barecount_provider.runtime.entries import deliver_entry

    store = True
    for facts in entries:
        # After one failure of the store, the round's other entries go straight to the evidence spool: a
        # store that is down costs one timeout per round, not one per entry.
        if deliver_entry(facts, store=store) != "stored":
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
        if outbox_sinks.metrics_spooled():
            metric_sink = next(
                (sink for sink in get_direct_emitter().sinks if isinstance(sink, OtelMetricSink)), None
            )
        if config.statsd_on():
            statsd_sink = next((sink for sink in get_direct_emitter().sinks if isinstance(sink, StatsdSink)), None)
        if outbox_sinks.traces_spooled():
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
                spans.append(outbox_sinks.rebuild_span(record))
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
            paths = _claim(outbox.spool_dir(), MAX_FILES_PER_ROUND)
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
    if not (outbox_sinks.enabled() or outbox.handoff_configured()):
        return {"files": 0, "records": 0, "points": 0, "spans": 0, "lines": 0, "entries": 0}
    global LAST_ROUND_FAILURES
    outbox.write_pending()  # what this process spooled itself
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
            os.environ[outbox.FORWARDER_PID_ENV] = str(self.process.pid)
            os.environ[outbox.FORWARDER_OWNER_ENV] = str(os.getpid())

    def withdraw(self) -> None:
        if os.environ.get(outbox.FORWARDER_OWNER_ENV) == str(os.getpid()):
            os.environ.pop(outbox.FORWARDER_PID_ENV, None)
            os.environ.pop(outbox.FORWARDER_OWNER_ENV, None)

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
