"""The file sink: one JSON line per finished task try (and per DAG run), the embedded default.

Each line is appended with a single ``write`` on a file opened with ``O_APPEND``, so lines from concurrent
task processes on one machine never interleave. `barecount runs` and the demo read it.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from barecount_provider import config, redaction
from barecount_provider.jsonlines import append_lines
from barecount_provider.telemetry.metrics import EMIT_FAILURES

EVENTS_FILE = "events.jsonl"

def events_path() -> str:
    return os.path.join(config.telemetry_dir(), EVENTS_FILE)


def state_name(value: Any) -> str:
    """An Airflow state (enum or string) as its plain string; ``"none"`` for no state."""
    return str(getattr(value, "value", value)) if value is not None else "none"


def task_try_event(
    *,
    source: str,
    time: str,
    dag_id: str,
    run_id: str,
    task_id: str,
    map_index: int | None,
    try_number: int,
    state: str,
    tenant: str,
    pipeline: str,
    sinks: dict[str, str],
    duration_s: float | None = None,
    runner_class: str | None = "local",
    size: str | None = None,
    network_profile: str | None = None,
    correlation_id: str | None = None,
    trace_id: str | None = None,
    span_id: str | None = None,
    sampled: bool | None = None,
    error_class: str | None = None,
    resources: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``task_try`` event, whoever saw the try end: its task process (``source="task"``) or the scheduler
    side, for tries that had no task process or that the scheduler failed (``source="scheduler"``)."""
    return {
        "kind": "task_try",
        "source": source,
        "time": time,
        "dag_id": dag_id,
        "run_id": run_id,
        "task_id": task_id,
        "map_index": map_index,
        "try_number": try_number,
        "state": state,
        "duration_s": duration_s,
        "tenant": tenant,
        "pipeline": pipeline,
        "runner_class": runner_class,
        "size": size,
        "network_profile": network_profile,
        "correlation_id": correlation_id,
        "trace_id": trace_id,
        "span_id": span_id,
        "sampled": sampled,
        "error_class": error_class,
        "resources": resources,
        "sinks": sinks,
    }


def append_event(event: dict[str, Any], path: str | None = None) -> None:
    """Append one event (to ``path``, default :func:`events_path`); a failure is counted, never raised."""
    try:
        append_lines(path or events_path(), [redaction.redact(event)])
    except Exception:
        EMIT_FAILURES.record("file", "write")


EMIT_FAILURES_FILE = "emit_failures.jsonl"


def emit_failures_path() -> str:
    return os.path.join(config.telemetry_dir(), EMIT_FAILURES_FILE)


def append_emit_failures(counts: dict[tuple[str, str], int], path: str | None = None) -> None:
    """Append one line of BareCount's own failures (``barecount.emit.failed``) by sink and stage, counted
    since the process's previous line (:func:`barecount_provider.telemetry.metrics.note_failures`). Raises
    OSError: the caller has no sink left to count it in."""
    line = {
        "kind": "emit_failed",
        "time": datetime.now(UTC).isoformat(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "total": sum(counts.values()),
        "counts": {f"{sink}/{stage}": n for (sink, stage), n in sorted(counts.items())},
    }
    append_lines(path or emit_failures_path(), [redaction.redact(line)])


def read_emit_failures(path: str | None = None) -> dict[str, Any]:
    """The failures noted in ``emit_failures.jsonl``: ``total``, ``by`` (``sink/stage`` -> count), ``first``
    and ``last`` (times of the first and last line), ``lines``; a torn line is skipped."""
    summary: dict[str, Any] = {"total": 0, "by": {}, "first": None, "last": None, "lines": 0}
    for line in read_events(path or emit_failures_path()):
        counts = line.get("counts")
        if line.get("kind") != "emit_failed" or not isinstance(counts, dict):
            continue
        summary["lines"] += 1
        for key, n in counts.items():
            if isinstance(n, int) and not isinstance(n, bool):
                summary["by"][key] = summary["by"].get(key, 0) + n
                summary["total"] += n
        summary["first"] = summary["first"] or line.get("time")
        summary["last"] = line.get("time") or summary["last"]
    return summary


def read_events(path: str | None = None) -> Iterator[dict[str, Any]]:
    """Stream the events back; a torn last line (a crash mid-write) is skipped."""
    target = path or events_path()
    if not os.path.exists(target):
        return
    with open(target, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
