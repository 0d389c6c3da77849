"""preload() (runtime/preload.py) warms a stand-in try's path in the scheduler: with a real StatsD listener
(UDP), nothing is written, sent, spooled or left bound."""

from __future__ import annotations

import pytest

from barecount_provider.runtime import preload, task_side

pytestmark = pytest.mark.integration


def test_warming_the_try_path_before_the_fork_leaves_no_trace(monkeypatch, tmp_path):
    """preload() runs a stand-in try's path in the scheduler: nothing written, sent, spooled or left bound."""
    import os

    import structlog

    from barecount_provider import outbox
    from barecount_provider.telemetry import metrics

    telemetry, evidence = tmp_path / "telemetry", tmp_path / "evidence"
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(telemetry))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(evidence))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__OTLP_METRICS_ON", "True")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TRACES_EXPORTER", "otlp")
    import socket

    statsd_server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a real StatsD socket: must hear nothing
    statsd_server.bind(("127.0.0.1", 0))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_ON", "True")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_PORT", str(statsd_server.getsockname()[1]))
    for name in ("BARECOUNT_CORRELATION_ID", "BARECOUNT_RUN_TOKEN", "TRACEPARENT"):
        monkeypatch.delenv(name, raising=False)
    metrics.EMIT_FAILURES.counts.clear()
    before = dict(structlog.contextvars.get_contextvars())
    preload._warm_try_path()
    try:
        with pytest.raises(BlockingIOError):
            statsd_server.recv(65535, socket.MSG_DONTWAIT)
    finally:
        statsd_server.close()
    assert not metrics.EMIT_FAILURES.counts
    assert not telemetry.exists() and not evidence.exists()
    assert not outbox._PENDING_POINTS and not outbox._PENDING_SPANS and not task_side._TRIES
    assert not [name for name in ("BARECOUNT_CORRELATION_ID", "BARECOUNT_RUN_TOKEN", "TRACEPARENT") if name in os.environ]
    assert structlog.contextvars.get_contextvars() == before
    from barecount_provider import context

    assert "barecount_warm" not in context._DECLARED  # the cluster policies ran on the stand-in, left nothing
