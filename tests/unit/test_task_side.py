"""A try's orchestration in the task process (runtime/task_side.py): its tracing builds no SDK tracer provider,
its span ids and the file sink's description of the sinks; and the shortcuts the task path takes give what
they replace (dataclasses, isinstance, urllib's quote)."""

from __future__ import annotations

import pytest

from barecount_provider.runtime import task_side
from barecount_provider.telemetry import tracing


def test_resource_usage_as_dict_is_dataclasses_asdict():
    import dataclasses

    from barecount_provider.telemetry.resources import ResourceUsage

    usage = ResourceUsage(cpu_seconds=0.25, read_bytes=10, write_bytes=None, peak_memory_bytes=4096)
    assert usage.as_dict() == dataclasses.asdict(usage)


def test_run_context_with_trace_is_dataclasses_replace():
    import dataclasses
    from types import SimpleNamespace

    from barecount_provider import context

    dag = SimpleNamespace(dag_id="etl", tags=["tenant:acme"], params={}, default_args={})
    ctx = context.resolve(task=None, dag=dag, dag_id="etl", run_id="r1", task_id="t", try_number=2, map_index=3)
    traced = ctx.with_trace("00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    assert traced == dataclasses.replace(ctx, traceparent=traced.traceparent)
    assert ctx.traceparent is None and traced is not ctx
    with pytest.raises(dataclasses.FrozenInstanceError):
        traced.tenant = "other"  # type: ignore[misc]


def test_cost_mapping_check_answers_as_isinstance_mapping():
    from collections.abc import Mapping
    from types import MappingProxyType

    from barecount_provider.schema import is_mapping

    for candidate in ({}, {"a": 1}, None, "x", 1, 1.5, [], (), MappingProxyType({"a": 1}), object()):
        assert is_mapping(candidate) == isinstance(candidate, Mapping), candidate


def test_task_side_tracing_builds_no_sdk_tracer_provider(monkeypatch, tmp_path):
    """No SDK TracerProvider in the processes task processes are forked from (its at-fork handler re-runs
    the resource detectors in every child): try spans and the fixed run / task spans are written without it,
    with the ids the tries refer to."""
    import json
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from barecount_provider import context
    from barecount_provider.telemetry import tracing

    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(tmp_path / "telemetry"))  # not there yet
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TRACES_EXPORTER", "file")
    tracer = tracing._build_tracing()
    monkeypatch.setattr(tracing, "get_tracing", lambda: tracer)
    dag = SimpleNamespace(dag_id="etl", tags=["tenant:acme"], params={}, default_args={})
    task = SimpleNamespace(dag=dag, upstream_task_ids={"extract"}, params={})
    ti = SimpleNamespace(
        dag_id="etl", run_id="r1", task_id="load", map_index=-1, try_number=1, task=task,
        start_date=datetime(2026, 11, 27, tzinfo=UTC), max_tries=1, _ti_context_from_server=None,
    )
    task_side.on_try_running(ti)
    task_side.on_try_finished(ti, "success")
    start, end = datetime(2026, 11, 27, tzinfo=UTC), datetime(2026, 11, 27, 0, 5, tzinfo=UTC)
    run_span = context.run_span_id_for("etl", "r1")
    trace_id = context.trace_id_for("etl", "r1")
    tracer.emit_fixed_span("dag_run etl", trace_id=trace_id, span_id=run_span, parent_span_id=None, sampled=True,
                           start=start, end=end, attributes={"airflow.dag_id": "etl"}, error=True)
    assert tracer._provider is None
    lines = [json.loads(line) for line in (tmp_path / "telemetry" / "spans.jsonl").read_text().splitlines()]
    try_span, run = lines
    assert try_span["name"] == "task_try load" and try_span["trace_id"] == f"{trace_id:032x}"
    assert try_span["parent_span_id"] == f"{context.task_span_id_for('etl', 'r1', 'load', -1):016x}"
    assert try_span["links"][0]["span_id"] == f"{context.task_span_id_for('etl', 'r1', 'extract', -1):016x}"
    assert run["span_id"] == f"{run_span:016x}" and run["parent_span_id"] is None and run["status"] == "ERROR"
    assert run["start_time_unix_nano"] == int(start.timestamp() * 1e9)


def test_store_path_segments_are_urllib_quote():
    import urllib.parse

    from barecount_provider.evidence import store

    for value in (
        "etl", "manual__2026-11-27T12:00:00+00:00", "scheduled__2026-01-01T00:00:00.123456+00:00", "a:b+c:+",
        "a b/c", "", "x~y.z-_", "caf\u00e9", "..", "%41", "a+b c", "a:b/c",
    ):
        assert store._segment(value) == urllib.parse.quote(value, safe=""), value


def test_try_span_ids_without_a_span_context_are_the_span_contexts():
    from types import SimpleNamespace

    from opentelemetry.trace import format_span_id, format_trace_id

    from barecount_provider import context
    from barecount_provider.telemetry import tracing

    dag = SimpleNamespace(dag_id="etl", tags=[], params={}, default_args={})
    ctx = context.resolve(task=None, dag=dag, dag_id="etl", run_id="r1", task_id="t", try_number=1, map_index=-1)
    for sampled in (True, False):
        span = tracing.Tracing(airflow_mode=False).start_try_span(ctx, sampled=sampled)
        span_context = span.get_span_context()
        expected = (
            format_trace_id(span_context.trace_id),
            format_span_id(span_context.span_id),
            f"{int(span_context.trace_flags):02x}",
        )
        assert tracing.span_ids(span) == expected
        assert tracing.traceparent_of(span) == "00-{}-{}-{}".format(*expected)
    invalid = tracing.Tracing(airflow_mode=False).start_try_span(ctx, sampled=True)
    invalid.span_id = 0
    assert not invalid.get_span_context().is_valid and tracing.span_ids(invalid) is None
    assert tracing.span_ids(None) is None and tracing.traceparent_of(None) is None


def test_the_file_sink_events_sinks_are_described_once_per_emitter_and_tracer(monkeypatch, tmp_path):
    """The event's ``sinks`` is described once for a process's emitter and tracer, and again when either is
    rebuilt (another configuration)."""
    from barecount_provider import config
    from barecount_provider.telemetry import metrics

    events = str(tmp_path / "events.jsonl")
    first = task_side.sinks_description(events)
    emitter, tracer = metrics.get_emitter(), tracing.get_tracing()
    assert first == {
        **emitter.describe(), "traces": tracer.exporter_desc if tracer is not None else "off", "file": events,
        "written_by": "task",
    }
    assert task_side.sinks_description(events) is first
    monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_ON", "True")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_PORT", "8126")
    config.cache_clear()
    metrics.get_emitter.cache_clear()
    second = task_side.sinks_description(events)
    assert second is not first and second["statsd"].startswith("udp://") and ":8126" in second["statsd"]
