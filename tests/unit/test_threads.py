"""Every thread BareCount starts ends at interpreter exit, within a bounded time (telemetry/threads.py)."""

from __future__ import annotations

import socket
import threading

import pytest

from barecount_provider.telemetry import threads


def _refused_endpoint() -> str:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return f"http://127.0.0.1:{port}/v1/metrics"


def test_the_exit_hook_stops_every_thread_barecount_started(monkeypatch: pytest.MonkeyPatch) -> None:
    from barecount_provider.runtime import scheduler_side
    from barecount_provider.telemetry.metrics import OtelMetricSink

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", _refused_endpoint())
    monkeypatch.setenv("AIRFLOW__BARECOUNT__IN_FLIGHT_INTERVAL_SECONDS", "1")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_ON", "False")
    threads.run_exit_hooks()  # hooks of earlier tests' objects: not this test's business
    before = set(threading.enumerate())

    side = scheduler_side.SchedulerSide()
    side._prepared = True  # its imports are not what this test is about
    sampled = threading.Event()
    monkeypatch.setattr(side, "sample_in_flight", lambda: sampled.set())
    ran = threading.Event()
    side.submit(ran.set)  # the worker
    side.start_in_flight_sampler()  # the sampler
    sink = OtelMetricSink(timeout_ms=100)  # the OTLP reader's exporting thread
    sink.send([("barecount.task.finished", "counter", 1.0, {"state": "success"})])
    assert ran.wait(10) and sampled.wait(10)
    started = [thread for thread in threading.enumerate() if thread not in before]
    names = {thread.name for thread in started}
    assert {"barecount-scheduler-side", "barecount-in-flight", "OtelPeriodicExportingMetricReader"} <= names
    assert all(thread.daemon for thread in started)  # never one that holds the interpreter's exit

    threads.run_exit_hooks()  # what atexit runs

    assert [thread.name for thread in started if thread.is_alive()] == []
    assert threads.running() == []
