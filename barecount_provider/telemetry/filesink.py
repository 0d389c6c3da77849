"""The file sink: one JSON line per finished task try (and per DAG run), the embedded default.

Each line is appended with a single ``write`` on a file opened with ``O_APPEND``, so lines from concurrent
task processes on one machine never interleave. `barecount runs` and the demo read it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import msgspec

from barecount_provider import config
from barecount_provider.telemetry import redaction
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


# msgspec (the task SDK's own serializer) writes JSON straight into one buffer: about three times faster than
# the json module's C encoder, which makes a string of every key and value first (0.05 against 0.16 ms, and
# half the page faults, for the three lines a try writes). Types JSON lacks go through ``str``.
_encode = msgspec.json.Encoder(enc_hook=str).encode


def encode_line(record: Any) -> bytes:
    """One JSON line (UTF-8, without its newline) as :func:`append_lines` writes it."""
    return _encode(record)


def append_lines(path: str, records: list[Any]) -> None:
    """Append ``records`` as JSON lines with one ``write`` on a file opened with ``O_APPEND`` (lines of
    concurrent processes never interleave); the directory is made only when it is missing. Raises OSError."""
    data = b"".join([encode_line(record) + b"\n" for record in records])
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def append_event(event: dict[str, Any], path: str | None = None) -> None:
    """Append one event (to ``path``, default :func:`events_path`); a failure is counted, never raised."""
    try:
        append_lines(path or events_path(), [redaction.redact(event)])
    except Exception:
        EMIT_FAILURES.record("file", "write")


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
