"""The OTLP spool's sinks (telemetry/outbox_sinks.py): a task process appends one record per try to the spool's
journal and builds no exporter; its try span and the scheduler side's spans and points are spooled as the SDK
would have made them. What the forwarder exports from the spool: test_forwarding.py (and, with a real collector
and forwarder processes, tests/integration/test_forwarding.py)."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from opentelemetry.sdk.trace import TracerProvider

from barecount_provider import outbox
from barecount_provider.runtime import forwarding, task_side
from barecount_provider.telemetry import exceptions, metrics, outbox_sinks, tracing

START = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


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


