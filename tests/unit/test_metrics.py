"""Metric sinks: the StatsD lines and datagrams and their failures; an OTel in-memory reader the OTLP points. The
packets a real UDP socket receives are in tests/integration/test_metrics.py."""

from __future__ import annotations

import socket

import pytest

from barecount_provider.telemetry import metrics
from barecount_provider.telemetry.metrics import COUNTER, TIMER, Emitter, OtelMetricSink, StatsdSink

TAGS = {
    "tenant": "acme",
    "pipeline": "orders",
    "runner_class": "local",
    "size": "m",
    "dag_id": "d1",
    "task_id": "t1",
    "state": "success",
    "run_id": "manual__2026-11-27T13:00:00+00:00",
    "try_number": 2,
    "correlation_id": "abc123",
}


def test_unresolvable_statsd_host_is_counted_not_raised():
    metrics.EMIT_FAILURES.counts.clear()
    sink = StatsdSink("barecount-no-such-host.invalid", 8125, timeout_ms=200)
    Emitter([sink]).count("barecount.task.started", {"tenant": "acme"})
    Emitter([sink]).count("barecount.task.started", {"tenant": "acme"})  # second call: sink stays disabled
    assert metrics.EMIT_FAILURES.counts[("statsd", "resolve")] == 1


def test_statsd_port_with_no_listener_never_raises():
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    metrics.EMIT_FAILURES.counts.clear()
    emitter = Emitter([StatsdSink("127.0.0.1", port)])
    for _ in range(3):
        emitter.count("barecount.task.started", {"tenant": "acme"})
    # The sink's socket is connected: the kernel's "port unreachable" answer to one datagram refuses the
    # next, and the sink counts it (the statsd package's client would have dropped it silently).
    assert metrics.EMIT_FAILURES.counts[("statsd", "send")] >= 1


def test_a_line_longer_than_a_datagram_is_sent_alone():
    lines = ["a" * 600, "b:1|c", "c:1|c"]
    assert StatsdSink.datagrams(lines) == [b"a" * 600, b"b:1|c\nc:1|c"]


def test_a_datagram_the_kernel_refuses_is_counted_not_raised():
    """The statsd package's client drops socket errors silently; BareCount's sink counts them. A datagram
    to the broadcast address from a socket without SO_BROADCAST is refused by the kernel (EACCES)."""
    metrics.EMIT_FAILURES.counts.clear()
    emitter = Emitter([StatsdSink("255.255.255.255", 8125)])
    emitter.emit([("barecount.task.started", COUNTER, 1, {"tenant": "acme"})] * 2)
    emitter.count("barecount.task.started", {"tenant": "acme"})
    assert metrics.EMIT_FAILURES.counts[("statsd", "send")] == 2  # one datagram per call


def test_otel_sink_records_points_with_attributes():
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    emitter = Emitter([OtelMetricSink(reader=reader)])
    emitter.emit(
        [
            ("barecount.task.finished", COUNTER, 1, TAGS),
            ("barecount.task.finished", COUNTER, 1, TAGS),
            ("barecount.task.duration", TIMER, 250.0, TAGS),
        ]
    )
    data = reader.get_metrics_data()
    found = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    finished = found["barecount.task.finished"]
    (point,) = finished.data.data_points
    assert point.value == 2
    assert dict(point.attributes) == {k: v for k, v in TAGS.items() if k not in metrics.UNBOUNDED_TAGS}
    assert found["barecount.task.duration"].unit == "ms"
    assert found["barecount.task.duration"].data.data_points[0].sum == 250.0


def test_otlp_endpoint_refusing_connections_is_counted(monkeypatch):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", f"http://127.0.0.1:{port}/v1/metrics")
    metrics.EMIT_FAILURES.counts.clear()
    sink = OtelMetricSink(timeout_ms=200)
    emitter = Emitter([sink])
    emitter.count("barecount.task.started", {"tenant": "acme"})
    emitter.flush(200)
    assert metrics.EMIT_FAILURES.counts[("otlp_metrics", "export")] >= 1


def test_every_catalogued_metric_is_documented():
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    for spec in metrics.CATALOG.values():
        assert f"`{spec.name}`" in doc, spec.name
        assert f"`{spec.prometheus_statsd}`" in doc, spec.name
        assert f"`{spec.prometheus_otlp}`" in doc, spec.name


@pytest.mark.parametrize("tag_style", ["dogstatsd", "influxdb"])
def test_one_point_is_the_same_datagram_as_the_packing_gives(tag_style):
    """A try's start sends one point, built without the packing: the same bytes as lines() + datagrams()."""
    sink = StatsdSink("127.0.0.1", 8125, prefix="airflow", tag_style=tag_style)
    tags = {"tenant": "ac,me", "pipeline": "o|rd:ers", "dag_id": "d=1", "task_id": "t#1 x"}
    for value in (1, 2.5, 1234.000001):
        point = [("barecount.task.started", COUNTER, value, tags)]
        assert sink.packets(point) == StatsdSink.datagrams(sink.lines(point))
    long_tags = {"task_id": "t" * 600}  # longer than a datagram: alone, as the packing sends it
    assert sink.packets([("m", COUNTER, 1, long_tags)]) == StatsdSink.datagrams(sink.lines([("m", COUNTER, 1, long_tags)]))
    assert sink.packets([("m", COUNTER, 1, {})]) == [b"airflow.m:1|c"]
