"""The outbox: what a task process hands to a long-lived forwarder, written to local files with no network.

A task process lives for one try: building OTLP exporters, a ``requests`` session and exporter threads in
it, then waiting for two HTTP requests at its exit, cost more than the try's own telemetry (and a collector
that hangs cost every task ``emit_timeout_ms``). So, as an agent / collector pair does, a task process only
appends what it would have exported to the outbox (one record per try, one JSON line appended with one
``write`` to the journal under ``telemetry_dir/spool``, holding the journal's lock: no directory entry is
created per try); the forwarder (:mod:`barecount_provider.runtime.forwarding`) seals the journal (renames it
to a spool file of its own, under the same lock, so that no write lands in it afterwards) and claims it as
any other spool file. A process that cannot use the journal (its lock file another user's) writes its record
to a file of its own, written once and renamed into place.

A record holds the try's OTLP metric points and spans (:mod:`barecount_provider.telemetry.outbox_sinks`) and, in a
task process that hands its try's outputs to the forwarder (:func:`handoff`), its StatsD points, its JSON
lines (file-sink event, span line) and its evidence entry's facts (:mod:`barecount_provider.runtime.entries`).
The outbox knows none of them: it keeps, writes and reads records.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from barecount_provider import config, selfmetrics
from barecount_provider.jsonlines import encode_line

SPOOL_DIR = "spool"
SUFFIX = ".jsonl"
JOURNAL = "journal.open"
"""The file every process appends its records to, one line each, holding :data:`JOURNAL_LOCK` while it opens
and writes it; a forwarder renames it to a spool file of its own (``<ns>-<pid>-journal.jsonl``) under the
same lock, so no write lands in it after that, and claims it as any other spool file."""
JOURNAL_LOCK = ".journal.lock"

# What this process has to spool, written by write_pending(): metric points and finished spans; in a task
# process that hands its tries' outputs to the forwarder (handoff()), also JSON lines for local files (the
# file-sink event, the span line) and the facts of evidence entries to make, cost and store.
_PENDING_POINTS: list[list[Any]] = []
_PENDING_STATSD: list[list[Any]] = []  # a handed-off try's points for StatsD, sent by the forwarder
_PENDING_SPANS: list[dict[str, Any]] = []
_PENDING_LINES: dict[str, list[Any]] = {}
_PENDING_ENTRIES: list[Any] = []
_lock = threading.Lock()
_sequence = 0

FORWARDER_PID_ENV = "BARECOUNT_FORWARDER_PID"
"""Set by the scheduler for the processes it forks once its forwarder runs: the forwarder's process id."""
FORWARDER_OWNER_ENV = "BARECOUNT_FORWARDER_OWNER"
"""The process id of the scheduler that started that forwarder (it writes its own outputs itself)."""
_handoff: bool | None = None  # this process's answer, reset in a forked child


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


def add_entry(facts: Any) -> None:
    """Keep a try's evidence facts (a msgspec Struct, encoded with the record) for the forwarder to make into
    its entry, cost and store (see :func:`barecount_provider.runtime.entries.deliver_entry`)."""
    with _lock:
        _PENDING_ENTRIES.append(facts)


def add_span_records(records: list[dict[str, Any]]) -> None:
    """Keep finished spans (as :func:`barecount_provider.telemetry.outbox_sinks.span_record` makes them) for the
    forwarder to export over OTLP."""
    with _lock:
        _PENDING_SPANS.extend(records)


def add_points(points: list[tuple[str, str, float, dict[str, str]]]) -> None:
    """Keep metric points (cleaned and redacted) for the forwarder to export over OTLP."""
    with _lock:
        _PENDING_POINTS.extend([name, kind, value, tags] for name, kind, value, tags in points)


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
        selfmetrics.failure("spool", "write")


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


def seal_journal(directory: str, wait_s: float = 0.1) -> None:
    """Rename the journal to a spool file of its own, under the journal's lock, so that no writer is still
    appending to it when it is read (writers open it under the lock). A lock held longer than ``wait_s``
    leaves it for the next round. Never raises."""
    journal = os.path.join(directory, JOURNAL)
    if not os.path.exists(journal):
        return
    try:
        lock = _open_journal_lock(directory)
    except OSError:
        selfmetrics.failure("spool", "seal")
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
        selfmetrics.failure("spool", "seal")
    finally:
        os.close(lock)


def records_of(path: str) -> Iterator[dict[str, Any] | None]:
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
            found.extend(record for record in records_of(os.path.join(directory, name)) if record is not None)
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
