"""How a domain package (evidence, cost, recovery) counts its own failures and emits its own metrics
without importing :mod:`barecount_provider.telemetry`.

``EMIT_FAILURES`` is the process's count of BareCount's own failures by (sink, stage), reported as
``barecount.emit.failed``; :func:`emit` sends metric points through the emitter the telemetry package
installs when it is loaded (:func:`install`), and drops them (counted) where none is installed.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

COUNTER = "counter"
TIMER = "timer"  # milliseconds; a histogram in OpenTelemetry
GAUGE = "gauge"
HISTOGRAM = "histogram"

Point = tuple[str, str, float, Mapping[str, Any]]
"""One metric point: (name, kind, value, tags), the name and tags as the catalogue lists them."""


class EmitFailures:
    """In-process count of BareCount's own failures, by (sink, stage).

    ``counts`` are reported as ``barecount.emit.failed`` through the sinks that still work (and reset);
    ``unnoted`` are the same failures, kept until they are noted where no metric sink is needed: the
    component's log and the file sink (at most once per ``NOTE_INTERVAL_S``)."""

    NOTE_INTERVAL_S = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[tuple[str, str]] = Counter()
        self.unnoted: Counter[tuple[str, str]] = Counter()
        self.noted_at: float | None = None

    def record(self, sink: str, stage: str) -> None:
        with self._lock:
            self.counts[(sink, stage)] += 1
            self.unnoted[(sink, stage)] += 1

    def total(self) -> int:
        return sum(self.counts.values())

    def take_unnoted(self, now: float) -> dict[tuple[str, str], int]:
        """The failures not noted yet, when a note is due (the first at once, then at most one per
        ``NOTE_INTERVAL_S``); empty otherwise."""
        with self._lock:
            if not self.unnoted:
                return {}
            if self.noted_at is not None and now - self.noted_at < self.NOTE_INTERVAL_S:
                return {}
            taken = dict(self.unnoted)
            self.unnoted.clear()
            self.noted_at = now
        return taken

    def reset(self) -> None:
        """Start afresh (a forked child: a lock held by another thread at fork time would stay held)."""
        self._lock = threading.Lock()
        self.counts.clear()
        self.unnoted.clear()
        self.noted_at = None


EMIT_FAILURES = EmitFailures()

_emit: Callable[[list[Point]], None] | None = None


def install(emit_points: Callable[[list[Point]], None]) -> None:
    """Called by the telemetry package when it is loaded: where :func:`emit` sends points."""
    global _emit
    _emit = emit_points


def emit(points: list[Point], *, sink: str) -> None:
    """Send ``points`` through the installed emitter; never raises: a failure (or no emitter) is counted
    under ``(sink, "metrics")``."""
    try:
        if _emit is None:
            raise RuntimeError("no emitter installed")
        _emit(points)
    except Exception:
        EMIT_FAILURES.record(sink, "metrics")


def failure(sink: str, stage: str) -> None:
    """Count one of BareCount's own failures (never raises)."""
    try:
        EMIT_FAILURES.record(sink, stage)
    except Exception:
        pass


os.register_at_fork(after_in_child=EMIT_FAILURES.reset)
