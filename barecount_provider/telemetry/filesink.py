"""The file sink: one JSON line per finished task try (and per DAG run), the embedded default.

Each line is appended with a single ``write`` on a file opened with ``O_APPEND``, so lines from concurrent
task processes on one machine never interleave. `barecount runs` and the demo read it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from barecount_provider import config
from barecount_provider.telemetry.metrics import EMIT_FAILURES

EVENTS_FILE = "events.jsonl"


def events_path() -> str:
    return os.path.join(config.telemetry_dir(), EVENTS_FILE)


def append_event(event: dict[str, Any]) -> None:
    """Append one event; a failure is counted, never raised."""
    from barecount_provider.telemetry.redaction import redact

    try:
        line = (json.dumps(redact(event), default=str, separators=(",", ":")) + "\n").encode()
        path = events_path()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
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
