"""The forwarder (runtime/forwarding.py): it exports the very spans and metric points the task processes spooled,
bounded, counted, exactly once; a heartbeat each round, ``--check`` for alerts (issue 21). Its ``--loop``, its
process started by the scheduler and a real collector: tests/integration/test_forwarding.py."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from barecount_provider import cli, outbox
from barecount_provider.runtime import forwarding, task_side
from barecount_provider.telemetry import metrics, tracing
from barecount_provider.telemetry.metrics import OtelMetricSink

from .test_outbox_sinks import _records, _ti


def test_check_without_heartbeat_fails_with_one_line(telemetry_dir, capsys):
    assert cli.main(["telemetry", "forward", "--check"]) == 1
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1
    assert "no forwarder heartbeat" in out and str(telemetry_dir) in out


def test_check_fails_on_a_stale_heartbeat(telemetry_dir, capsys):
    forwarding.write_heartbeat({"files": 0}, 2.0, failures={})
    beat_file = telemetry_dir / "forwarder.heartbeat"
    beat = json.loads(beat_file.read_text())
    beat["time"] = time.time() - 7  # older than 3 x 2 s
    beat_file.write_text(json.dumps(beat))
    assert cli.main(["telemetry", "forward", "--check"]) == 1
    assert "STALE" in capsys.readouterr().out
    assert cli.main(["telemetry", "forward", "--check", "--max-age", "3600"]) == 0


def test_check_names_the_last_round_failures(telemetry_dir, capsys):
    forwarding.write_heartbeat({"files": 1}, 2.0, failures={"otlp_metrics/export": 2})
    assert cli.main(["telemetry", "forward", "--check"]) == 0
    assert "otlp_metrics/export 2" in capsys.readouterr().out


def test_check_on_an_unreadable_heartbeat_fails(telemetry_dir, capsys):
    (telemetry_dir / "forwarder.heartbeat").write_text("{not json")
    assert cli.main(["telemetry", "forward", "--check"]) == 1
    assert "unreadable forwarder heartbeat" in capsys.readouterr().out


def test_heartbeat_write_failure_is_counted_never_raised(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(blocker / "sub"))  # a file where a dir must be
    from barecount_provider.telemetry.metrics import EMIT_FAILURES

    before = EMIT_FAILURES.counts[("spool", "heartbeat")]
    assert forwarding.write_heartbeat({"files": 0}, 2.0, failures={}) is False
    assert EMIT_FAILURES.counts[("spool", "heartbeat")] == before + 1


def test_forwarded_spans_are_the_spans_the_task_process_made(otlp_config):
    """The same SDK spans, exported directly (in memory) and through spool → file → forwarder."""
    direct = InMemorySpanExporter()
    tracer = tracing.get_tracing()
    tracer.provider.add_span_processor(SimpleSpanProcessor(direct))
    first = _ti("load", upstream=("extract", "stage"))
    task_side.on_try_running(first)
    task_side.on_try_finished(first, "up_for_retry", ConnectionResetError("reset by peer"))
    second = _ti("load", try_number=2, upstream=("extract", "stage"))
    task_side.on_try_running(second)
    task_side.on_try_finished(second, "success")

    forwarded = InMemorySpanExporter()
    result = forwarding.Forwarder(span_exporter=forwarded).forward(2000)
    assert result["spans"] == 2 and result["records"] == 2 and result["files"] == 1  # the sealed journal
    expected = sorted(direct.get_finished_spans(), key=lambda s: s.context.span_id)
    got = sorted(forwarded.get_finished_spans(), key=lambda s: s.context.span_id)
    assert len(expected) == len(got) == 2
    for want, have in zip(expected, got, strict=True):
        assert have.name == want.name
        assert have.context.trace_id == want.context.trace_id
        assert have.context.span_id == want.context.span_id
        assert have.context.trace_flags == want.context.trace_flags
        assert have.parent.span_id == want.parent.span_id and have.parent.is_remote == want.parent.is_remote
        assert have.kind == want.kind
        assert (have.start_time, have.end_time) == (want.start_time, want.end_time)
        assert dict(have.attributes) == dict(want.attributes)
        assert [(e.name, dict(e.attributes), e.timestamp) for e in have.events] == [
            (e.name, dict(e.attributes), e.timestamp) for e in want.events
        ]
        assert [(link.context.trace_id, link.context.span_id, dict(link.attributes)) for link in have.links] == [
            (link.context.trace_id, link.context.span_id, dict(link.attributes)) for link in want.links
        ]
        assert (have.status.status_code, have.status.description) == (want.status.status_code, want.status.description)
        assert have.resource.attributes["service.name"] == "barecount"
        assert have.instrumentation_scope.name == tracing.TRACER_NAME
    assert _records(otlp_config) == []  # forwarded: gone
    assert not [name for _, _, names in os.walk(otlp_config) for name in names if name != outbox.JOURNAL_LOCK]


def _metric_points(reader):
    found = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    if value is None:
                        value = (point.count, point.sum)
                    found[(metric.name, metric.unit, tuple(sorted(point.attributes.items())))] = value
    return found


def test_forwarded_metric_points_are_the_points_the_task_process_sent(otlp_config):
    direct_reader = InMemoryMetricReader()
    direct_sink = OtelMetricSink(reader=direct_reader)
    metrics.get_emitter().sinks.append(direct_sink)  # what a task process used to send over OTLP itself
    try:
        ti = _ti("load")
        task_side.on_try_running(ti)
        task_side.on_try_finished(ti, "up_for_retry", ValueError("boom"))
    finally:
        metrics.get_emitter().sinks.remove(direct_sink)
    forward_reader = InMemoryMetricReader()
    forwarding.Forwarder(metric_sink=OtelMetricSink(reader=forward_reader)).forward(2000)
    direct_points, forwarded_points = _metric_points(direct_reader), _metric_points(forward_reader)
    assert {"barecount.task.started", "barecount.task.finished", "barecount.task.retries"} <= {
        name for name, _, _ in forwarded_points
    }
    cpu = [key for key in direct_points if key[0] == "barecount.task.cpu_time"]
    assert forwarded_points.keys() == direct_points.keys()
    for key, value in direct_points.items():
        if key[0] not in ("barecount.task.cpu_time", "barecount.task.duration"):
            assert forwarded_points[key] == value, key
    assert cpu  # timers arrive as histograms with the same attributes


def test_each_spool_file_is_forwarded_once(otlp_config):
    for index in range(3):
        ti = _ti(f"t{index}")
        task_side.on_try_running(ti)
        task_side.on_try_finished(ti, "success")
    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    forwarding.Forwarder(span_exporter=first).forward(2000)
    forwarding.Forwarder(span_exporter=second).forward(2000)
    assert len(first.get_finished_spans()) == 3
    assert second.get_finished_spans() == ()


class _CountingSpanExporter(InMemorySpanExporter):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def export(self, spans):
        self.calls += 1
        return super().export(spans)


def test_the_forwarder_s_loop_batches_its_otlp_exports_and_its_last_round_exports_the_rest(otlp_config, monkeypatch):
    """In its loop (``batch``) the forwarder exports spans when ``OTEL_BSP_SCHEDULE_DELAY`` has passed since
    the last export or ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` of them wait, and metrics when
    ``OTEL_METRIC_EXPORT_INTERVAL`` has passed, the first data at once (as the SDK's batch span processor and
    periodic reader would); a round that is not batched (a one-off flush, the loop's last round) exports all
    that waits. Nothing is lost, nothing is exported twice."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "600000")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "3")
    spans, reader = _CountingSpanExporter(), InMemoryMetricReader()
    sink = OtelMetricSink(reader=reader)
    flushes: list[int] = []
    flush = sink.flush
    sink.flush = lambda timeout_ms: (flushes.append(timeout_ms), flush(timeout_ms))  # type: ignore[method-assign]
    forwarder = forwarding.Forwarder(metric_sink=sink, span_exporter=spans)

    def tries(*task_ids):
        for task_id in task_ids:
            ti = _ti(task_id)
            task_side.on_try_running(ti)
            task_side.on_try_finished(ti, "success")

    tries("t0")
    assert forwarder.forward(2000, batch=True)["spans"] == 1
    assert (spans.calls, len(spans.get_finished_spans()), len(flushes)) == (1, 1, 1)  # the first data: at once
    tries("t1", "t2")
    assert forwarder.forward(2000, batch=True)["spans"] == 2
    assert (spans.calls, len(spans.get_finished_spans()), len(flushes)) == (1, 1, 1)  # kept: not due yet
    assert forwarder.waiting() and _records(otlp_config) == []  # read, kept in the forwarder
    tries("t3")
    forwarder.forward(2000, batch=True)
    assert (spans.calls, len(spans.get_finished_spans()), len(flushes)) == (2, 4, 1)  # a full batch of three
    tries("t4")
    forwarder.forward(2000, batch=True)
    assert forwarder.forward(2000, batch=True)["files"] == 0  # nothing new and nothing due: no export
    assert (spans.calls, len(flushes)) == (2, 1)
    forwarder.forward(2000)  # the last round: everything that waits
    assert (spans.calls, len(spans.get_finished_spans()), len(flushes)) == (3, 5, 2)
    assert not forwarder.waiting()
    assert sorted(span.attributes["airflow.task_id"] for span in spans.get_finished_spans()) == [f"t{i}" for i in range(5)]
    started = [v for (name, _, _), v in _metric_points(reader).items() if name == "barecount.task.started"]
    assert sum(started) == 5  # every try's points, summed in the forwarder's meter provider


def test_the_forwarder_s_own_failure_counts_wait_for_the_next_metric_export(otlp_config, monkeypatch):
    """A batched round reports the forwarder's own failures into its meter provider: they are marked as
    waiting, so the next metric export carries them even when no spooled point comes."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # never reached: nothing is due
    forwarder = forwarding.get_forwarder()
    assert not forwarder.waiting()
    metrics.EMIT_FAILURES.record("statsd", "send")
    forwarding.flush_spool(batch=True)
    assert forwarder.waiting() and forwarder._metrics_waiting
    assert not metrics.EMIT_FAILURES.counts  # reported, into the forwarder's meter provider


def test_a_bad_otel_interval_falls_back_to_the_sdk_default(monkeypatch):
    from barecount_provider import config

    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "soon")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "15000")
    assert config.otlp_span_export_interval_ms() == 5000
    assert config.otlp_metric_export_interval_ms() == 15000
    monkeypatch.delenv("OTEL_METRIC_EXPORT_INTERVAL")
    assert config.otlp_metric_export_interval_ms() == 60000


class _Hung:
    def __init__(self) -> None:
        self.release = threading.Event()

    def export(self, spans):
        self.release.wait(5)
        return SpanExportResult.SUCCESS


def test_a_hung_collector_costs_the_forwarder_one_deadline_and_is_counted(otlp_config):
    ti = _ti("load")
    task_side.on_try_running(ti)
    task_side.on_try_finished(ti, "success")
    hung = _Hung()
    forwarder = forwarding.Forwarder(span_exporter=hung)
    started = time.monotonic()
    forwarder.forward(100)
    assert time.monotonic() - started < 1.0
    assert metrics.EMIT_FAILURES.counts[("forward", "timeout")] == 1
    assert forwarder.forward(100) == {"files": 0, "records": 0, "points": 0, "spans": 0, "lines": 0, "entries": 0, "busy": 1}  # no pile-up
    hung.release.set()


def test_a_refusing_collector_is_counted_by_the_forwarder_never_in_the_task(otlp_config, monkeypatch):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    ti = _ti("load")
    task_side.on_try_running(ti)
    task_side.on_try_finished(ti, "success")
    task_side.flush()
    assert metrics.EMIT_FAILURES.total() == 0  # the task process saw no network at all
    forwarding.flush_spool(2000)
    # the forwarder's failures were reported (and reset) through its direct emitter
    assert metrics.EMIT_FAILURES.total() == 0
    failures = []
    monkeypatch.setattr(metrics.EMIT_FAILURES, "record", lambda sink, stage: failures.append((sink, stage)))
    task_side.on_try_running(_ti("again"))
    task_side.on_try_finished(_ti("again"), "success")
    forwarding.flush_spool(2000)
    assert ("otlp_metrics", "export") in failures and ("traces", "export") in failures


def test_a_stop_during_a_round_is_followed_by_one_more_round(monkeypatch):
    """SIGTERM while a round runs: that round claimed its files before the stop, so files written just
    before the stop can only leave through one more round (a race a real forwarder process showed)."""
    import signal

    from barecount_provider import cli

    rounds: list[bool] = []

    def one_round(timeout_ms=None, batch=False):
        rounds.append(batch)
        if len(rounds) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # the scheduler stops it while this round runs
        return {"files": 0, "records": 0, "points": 0, "spans": 0, "lines": 0, "entries": 0}

    monkeypatch.setattr(forwarding, "flush_spool", one_round)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert cli.main(["telemetry", "forward", "--quiet", "--loop", "600"]) == 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(rounds) == 2  # the round that was running, then the last one, at once (not after 600 s)
    assert rounds == [True, False]  # the loop's rounds batch their OTLP exports; the last one exports everything


def test_no_forwarder_without_otlp_when_task_processes_write_their_outputs(monkeypatch, tmp_path):
    from barecount_provider.runtime import scheduler_side

    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TASK_OUTPUTS", "task")
    assert not scheduler_side.SchedulerSide().start_forwarder()
    assert outbox.FORWARDER_PID_ENV not in os.environ
