"""The OTLP spool: a task process appends one record per try to the spool's journal and builds no exporter; the forwarder exports the
very spans and metric points the task process would have exported, bounded, counted, exactly once."""

from __future__ import annotations

import os
import socket
import threading
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from barecount_provider import outbox
from barecount_provider.runtime import forwarding, task_side
from barecount_provider.telemetry import exceptions, metrics, outbox_sinks, tracing
from barecount_provider.telemetry.metrics import OtelMetricSink

START = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.fixture
def otlp_config(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__OTLP_METRICS_ON", "True")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__FILE_SINK_ON", "False")
    outbox._PENDING_POINTS.clear()
    outbox._PENDING_SPANS.clear()
    metrics.EMIT_FAILURES.counts.clear()
    yield tmp_path / "spool"
    outbox._PENDING_POINTS.clear()
    outbox._PENDING_SPANS.clear()


def _ti(task_id, run_id="run1", try_number=1, upstream=()):
    dag = SimpleNamespace(dag_id="etl", tags=["tenant:acme"], params={}, default_args={})
    task = SimpleNamespace(dag=dag, upstream_task_ids=set(upstream), params={})
    return SimpleNamespace(
        dag_id="etl", run_id=run_id, task_id=task_id, map_index=-1, try_number=try_number, task=task,
        start_date=START, max_tries=2, _ti_context_from_server=None,
    )


def _records(directory):
    """The records waiting in the spool (journal and files), one per try that spooled."""
    return outbox.records_waiting(str(directory))


def test_a_task_process_builds_no_exporter_and_writes_one_record_per_try(otlp_config):
    threads_before = threading.active_count()
    assert [sink.name for sink in metrics.get_emitter().sinks] == ["otlp_metrics"]
    assert isinstance(metrics.get_emitter().sinks[0], outbox_sinks.SpoolMetricSink)
    tracer = tracing.get_tracing()
    assert tracer is not None and tracer.exporter_desc.endswith("(spooled)")
    ti = _ti("load", upstream=("extract",))
    task_side.on_try_running(ti)
    assert _records(otlp_config) == []  # nothing written before the try ends
    task_side.on_try_finished(ti, "up_for_retry", ValueError("boom"))
    assert len(_records(otlp_config)) == 1
    assert os.listdir(otlp_config) and not [n for n in os.listdir(otlp_config) if n.endswith(".jsonl")]  # journal only
    task_side.flush()  # nothing left: no second record
    assert len(_records(otlp_config)) == 1
    assert threading.active_count() == threads_before
    assert not any(name.startswith("opentelemetry.exporter.otlp") for name in _exporters_built())


def _exporters_built():
    # The task path never built an OTLP exporter: the spool sink and the spool span exporter only.
    tracer = tracing.get_tracing()
    processors = tracer.provider._active_span_processor._span_processors if tracer else ()
    return [type(p.span_exporter).__module__ for p in processors]


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


def test_spooling_is_off_without_otlp(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(tmp_path))
    assert not outbox_sinks.enabled()
    assert forwarding.flush_spool() == {"files": 0, "records": 0, "points": 0, "spans": 0, "lines": 0, "entries": 0}
    assert metrics.get_direct_emitter() is metrics.get_emitter()


@pytest.mark.parametrize("exporter", ["otlp", "file"])
def test_a_try_span_is_the_span_the_sdk_would_make(exporter, monkeypatch, tmp_path):
    """The try span is recorded without the SDK's span machinery: it must be the span the SDK would make
    from the same inputs (ids, parent, links, kind, flags, attributes, events, status, times)."""
    from opentelemetry.trace import SpanKind

    from barecount_provider import context

    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TRACES_EXPORTER", exporter)
    monkeypatch.setenv("AIRFLOW__BARECOUNT__FILE_SINK_ON", "False")
    outbox._PENDING_SPANS.clear()
    tracing.get_tracing()
    ti = _ti("load", try_number=2, upstream=("stage", "extract"))
    state = task_side.on_try_running(ti)
    light = state.span
    task_side.on_try_finished(ti, "up_for_retry", ValueError("boom"))
    assert light.end_time is not None

    # The SDK's span from the same inputs, as start_try_span made it before.
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class SameSpanId(RandomIdGenerator):
        def generate_span_id(self) -> int:
            return light.span_id

    sdk_tracer = tracing.Tracing(provider=TracerProvider(id_generator=SameSpanId()), airflow_mode=False)
    ctx = state.ctx
    sdk = sdk_tracer.tracer.start_span(
        light.name, context=sdk_tracer.run_parent(ctx, True), kind=SpanKind.INTERNAL,
        attributes={k: v for k, v in light.attributes.items() if k not in ("barecount.state", "barecount.cpu_time_ms", "barecount.peak_memory_bytes", "error.type")},
        links=sdk_tracer.upstream_links(ctx, light.trace_id, ("stage", "extract")), start_time=light.start_time,
    )
    for key in ("barecount.state", "barecount.cpu_time_ms", "barecount.peak_memory_bytes", "error.type"):
        if key in light.attributes:
            sdk.set_attribute(key, light.attributes[key])
    # An OTLP try span reaches the forwarder with the failure's facts, which it renders as the stack trace
    # before it exports the span (forwarding._render_stacktraces); the span file's line is written in the task.
    record, line = light.record(), light.file_line()
    pending = [e for e in record["events"] if exceptions.PENDING_STACKTRACE in e["attributes"]]
    assert len(pending) == (1 if exporter == "otlp" else 0)
    forwarding._render_stacktraces([record, line])
    for event in record["events"]:
        sdk.add_event(event["name"], event["attributes"], timestamp=event["time"])
    sdk.set_status(light.status)
    sdk.end(end_time=light.end_time)

    assert light.trace_id == context.trace_id_for("etl", "run1")
    assert light.parent_span_id == context.task_span_id_for("etl", "run1", "load", -1)
    assert [name for name, _, _ in light.events] == ["retry", "exception", "retry_scheduled"]
    (exception,) = [e for e in record["events"] if e["name"] == "exception"]
    assert exception["attributes"]["exception.stacktrace"].splitlines()[-1] == "ValueError: boom"
    assert record == outbox_sinks.span_record(sdk)
    assert line == tracing._span_as_dict(sdk)
    if exporter == "otlp":
        assert outbox._PENDING_SPANS == [] or outbox._PENDING_SPANS[-1] == light.record()
        (record,) = _records(tmp_path / "spool")
        assert record["spans"] and all(span["span_id"] for span in record["spans"])
    else:
        import json

        (line,) = (tmp_path / "spans.jsonl").read_text().splitlines()
        assert json.loads(line) == json.loads(json.dumps(tracing._span_as_dict(sdk), default=str))


def test_an_unsampled_try_span_records_nothing_and_carries_the_unsampled_flag(otlp_config):
    from barecount_provider.policy import get_policy  # noqa: F401

    monkeypatch_ratio = pytest.MonkeyPatch()
    monkeypatch_ratio.setattr(task_side, "policy_values", lambda tenant: (0.0, False))
    try:
        ti = _ti("load")
        state = task_side.on_try_running(ti)
        span = state.span
        assert not span.is_recording()
        assert span.get_span_context().is_valid and not span.get_span_context().trace_flags.sampled
        task_side.on_try_finished(ti, "failed", ValueError("boom"))
        assert span.attributes == {} and span.events == []
    finally:
        monkeypatch_ratio.undo()
    spans = [s for record in _records(otlp_config) for s in record["spans"]]
    assert spans == []


@pytest.fixture
def collector():
    """A real OTLP/HTTP collector on 127.0.0.1: answers 200 and keeps the paths it was sent."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[str] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(endpoint=f"http://127.0.0.1:{server.server_address[1]}", received=received)
    server.shutdown()
    server.server_close()


def _wait_for(condition, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_the_scheduler_forwards_the_spool_from_a_child_process(otlp_config, collector, monkeypatch):
    """The scheduler side starts `barecount telemetry forward --loop` as a child process: it exports the
    spool to a real collector; stopping it makes a last round and the process exits 0."""
    from barecount_provider.runtime import scheduler_side

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
    # One round at start, then none before the stop: the second try can only leave through the last round
    # (with the usual 2 s, a periodic round could take it first, and the count below would race it).
    monkeypatch.setattr(forwarding, "FORWARD_INTERVAL_SECONDS", 600.0)
    side = scheduler_side.SchedulerSide()
    monkeypatch.setattr(side, "prepare", lambda: None)
    ti = _ti("load")
    task_side.on_try_running(ti)
    task_side.on_try_finished(ti, "success")
    assert _records(otlp_config)
    assert side.start_forwarder()
    process = side._forwarder.process
    try:
        # Both exports of the round (they run concurrently: the spans' may arrive first), and the spool empty.
        assert _wait_for(
            lambda: {"/v1/traces", "/v1/metrics"} <= set(collector.received) and not _records(otlp_config)
        )
        ti = _ti("publish")  # spooled while the forwarder waits: its stop makes a last round
        task_side.on_try_running(ti)
        task_side.on_try_finished(ti, "success")
        sent = collector.received.count("/v1/traces")
    finally:
        side.stop()
    assert process.poll() == 0
    assert collector.received.count("/v1/traces") == sent + 1 and _records(otlp_config) == []
    assert not side.start_forwarder()  # once per scheduler side


def test_the_forwarder_process_ends_when_its_scheduler_is_gone(otlp_config, collector, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
    scheduler = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    forwarder = subprocess.Popen(
        [sys.executable, "-m", "barecount_provider.cli", "telemetry", "forward", "--quiet", "--loop", "0.2",
         "--parent-pid", str(scheduler.pid)],
        stdout=subprocess.DEVNULL,
    )
    try:
        ti = _ti("load")
        task_side.on_try_running(ti)
        task_side.on_try_finished(ti, "success")
        assert _wait_for(lambda: "/v1/traces" in collector.received)
        assert forwarder.poll() is None
        scheduler.kill()
        scheduler.wait()
        assert forwarder.wait(timeout=30) == 0
    finally:
        for process in (scheduler, forwarder):
            if process.poll() is None:
                process.kill()
                process.wait()


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


def test_scheduler_side_spans_and_points_go_to_the_spool_without_an_sdk_provider(otlp_config):
    """The scheduler is the process every task process is forked from: its run and task spans and its points
    are spooled like the task processes', and nothing in it builds an SDK tracer provider."""
    from barecount_provider import context
    from barecount_provider.runtime import scheduler_side

    side = scheduler_side.SchedulerSide()
    end = START.replace(minute=5)
    rows = [{"start_date": START, "end_date": end, "latest": True, "state": "success"}]
    side._emit_spans("etl", "run1", "acme", "success", START, end, {("load", -1): rows})
    metrics.get_emitter().emit([("barecount.dag_run.finished", metrics.COUNTER, 1, {"tenant": "acme"})])
    metrics.get_emitter().flush()
    tracer = tracing.get_tracing()
    assert tracer is not None and tracer._provider is None
    records = _records(otlp_config)
    spans = {s["name"]: s for r in records for s in r["spans"]}
    run_span_id = f"{context.run_span_id_for('etl', 'run1'):016x}"
    assert spans["dag_run etl"]["span_id"] == run_span_id and spans["dag_run etl"]["parent_span_id"] is None
    assert spans["task load"]["parent_span_id"] == run_span_id
    assert spans["task load"]["span_id"] == f"{context.task_span_id_for('etl', 'run1', 'load', -1):016x}"
    assert any(p[0] == "barecount.dag_run.finished" for r in records for p in r["points"])


def test_no_forwarder_without_otlp_when_task_processes_write_their_outputs(monkeypatch, tmp_path):
    from barecount_provider.runtime import scheduler_side

    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TASK_OUTPUTS", "task")
    assert not scheduler_side.SchedulerSide().start_forwarder()
    assert outbox.FORWARDER_PID_ENV not in os.environ


def test_barecount_telemetry_forward_exports_the_spool_to_a_real_collector(otlp_config, collector, monkeypatch, capsys):
    """Where no scheduler runs, `barecount telemetry forward` exports the spool: a real HTTP collector on
    127.0.0.1 receives the spans and the points, and the spool is empty afterwards."""
    import json

    from barecount_provider import cli

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
    for index in range(2):
        ti = _ti(f"t{index}")
        task_side.on_try_running(ti)
        task_side.on_try_finished(ti, "success")
    assert len(_records(otlp_config)) == 2
    assert cli.main(["telemetry", "forward", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["records"] == 2 and result["spans"] == 2 and result["points"] > 0
    assert sorted(set(collector.received)) == ["/v1/metrics", "/v1/traces"]
    assert _records(otlp_config) == []
