"""Spans: parent/child, links to upstream tasks, retry events, all-or-nothing sampling per run.

Driven through the task-side and scheduler-side code with an OpenTelemetry in-memory exporter; the task
instances are minimal stand-ins for RuntimeTaskInstance (the real one is exercised by the system test).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from barecount_provider import context
from barecount_provider.runtime import task_side
from barecount_provider.telemetry import tracing
from barecount_provider.telemetry.tracing import Tracing

START = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.fixture
def spans(monkeypatch):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = Tracing(provider=provider, airflow_mode=False, exporter_desc="memory")
    monkeypatch.setattr(tracing, "get_tracing", lambda: tracer)
    monkeypatch.setenv("AIRFLOW__BARECOUNT__FILE_SINK_ON", "False")
    yield exporter, tracer


def _ti(task_id, run_id="run1", try_number=1, upstream=(), tags=("tenant:acme",)):
    dag = SimpleNamespace(dag_id="etl", tags=list(tags), params={}, default_args={})
    task = SimpleNamespace(dag=dag, upstream_task_ids=set(upstream), params={})
    return SimpleNamespace(
        dag_id="etl", run_id=run_id, task_id=task_id, map_index=-1, try_number=try_number, task=task,
        start_date=START, max_tries=1, _ti_context_from_server=None,
    )


def _run_once(run_id):
    first = _ti("extract", run_id)
    task_side.on_try_running(first)
    task_side.on_try_finished(first, "success")
    ti = _ti("load", run_id, upstream=("extract",))
    task_side.on_try_running(ti)
    task_side.on_try_finished(ti, "success")


def test_try_spans_share_the_run_trace_and_parent_on_the_task_span(spans):
    exporter, _ = spans
    _run_once("run1")
    extract, load = exporter.get_finished_spans()
    trace_id = context.trace_id_for("etl", "run1")
    assert extract.context.trace_id == load.context.trace_id == trace_id
    assert load.parent.span_id == context.task_span_id_for("etl", "run1", "load", -1)
    (link,) = load.links
    assert link.context.span_id == context.task_span_id_for("etl", "run1", "extract", -1)
    assert link.attributes["airflow.task_id"] == "extract"
    assert load.attributes["barecount.tenant"] == "acme"
    assert load.attributes["airflow.task_instance.try_number"] == 1


def test_retry_is_an_event_and_an_attribute(spans):
    exporter, _ = spans
    first = _ti("transform", try_number=1)
    task_side.on_try_running(first)
    task_side.on_try_finished(first, "up_for_retry", ConnectionResetError("reset by peer"))
    second = _ti("transform", try_number=2)
    task_side.on_try_running(second)
    task_side.on_try_finished(second, "success")
    failed, succeeded = exporter.get_finished_spans()
    assert [e.name for e in failed.events] == ["exception", "retry_scheduled"]
    assert failed.attributes["error.type"] == "ConnectionResetError"
    assert failed.status.status_code.name == "ERROR"
    assert [e.name for e in succeeded.events] == ["retry"]
    assert succeeded.attributes["barecount.retry.attempt"] == 1


def test_exception_text_in_spans_is_redacted(spans):
    exporter, _ = spans
    secret = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    ti = _ti("boom")
    task_side.on_try_running(ti)
    task_side.on_try_finished(ti, "failed", RuntimeError(f"token {secret} rejected"))
    (span,) = exporter.get_finished_spans()
    text = repr([dict(e.attributes) for e in span.events])
    assert secret not in text and "***" in text


def test_traceparent_and_ids_are_exported_to_the_environment(spans, monkeypatch):
    env = dict(os.environ)  # a copy: an empty environment would lose AIRFLOW_HOME (writes under ~/airflow)
    monkeypatch.setattr(context.os, "environ", env)
    ti = _ti("extract")
    state = task_side.on_try_running(ti)
    assert env["TRACEPARENT"] == tracing.traceparent_of(state.span)
    assert env["BARECOUNT_CORRELATION_ID"] == context.correlation_id_for("etl", "run1")
    task_side.on_try_finished(ti, "success")


def test_sampling_is_all_or_nothing_per_run(spans, monkeypatch):
    exporter, _ = spans
    monkeypatch.setattr(task_side, "policy_values", lambda tenant: (0.3, False))
    runs = [f"run{i}" for i in range(200)]
    for run_id in runs:
        _run_once(run_id)
    by_run: dict[str, int] = {}
    for span in exporter.get_finished_spans():
        by_run[span.attributes["airflow.dag_run.run_id"]] = by_run.get(span.attributes["airflow.dag_run.run_id"], 0) + 1
    assert set(by_run.values()) == {2}  # a sampled run has every span
    expected = {r for r in runs if tracing.sampled_for_run("etl", r, 0.3)}
    assert set(by_run) == expected
    assert 0.2 < len(expected) / len(runs) < 0.4  # the fixed key gives a fixed, plausible fraction


def test_scheduler_side_spans_have_the_ids_the_tries_refer_to(spans):
    exporter, tracer = spans
    run_span = context.run_span_id_for("etl", "run1")
    tracer.emit_fixed_span("dag_run etl", trace_id=context.trace_id_for("etl", "run1"), span_id=run_span,
                           parent_span_id=None, sampled=True, start=START, end=START + timedelta(seconds=5), attributes={})
    tracer.emit_fixed_span("task extract", trace_id=context.trace_id_for("etl", "run1"),
                           span_id=context.task_span_id_for("etl", "run1", "extract", -1), parent_span_id=run_span,
                           sampled=True, start=START, end=START + timedelta(seconds=2), attributes={})
    root, task = exporter.get_finished_spans()
    assert root.parent is None
    assert root.context.trace_id == context.trace_id_for("etl", "run1")
    assert root.context.span_id == run_span
    assert task.parent.span_id == run_span
    assert task.context.span_id == context.task_span_id_for("etl", "run1", "extract", -1)


def test_tenant_ratio_sampler_uses_the_tenant_of_the_dag():
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Decision

    sampler = tracing.TenantRatioSampler(ALWAYS_OFF, lambda dag_id: "acme" if dag_id == "etl" else "other",
                                         lambda tenant: 1.0 if tenant == "acme" else 0.0)
    yes = sampler.should_sample(None, 12345, "dag_run", attributes={"airflow.dag_id": "etl"})
    no = sampler.should_sample(None, 12345, "dag_run", attributes={"airflow.dag_id": "x"})
    child = sampler.should_sample(None, 12345, "other")  # no dag id: Airflow's own sampler decides
    assert yes.decision == Decision.RECORD_AND_SAMPLE
    assert no.decision == Decision.DROP
    assert child.decision == Decision.DROP


def test_install_tenant_sampler_keeps_airflows_provider_and_wraps_its_sampler(monkeypatch):
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(1.0)))
    monkeypatch.setattr(tracing.trace, "get_tracer_provider", lambda: provider)
    assert tracing.install_tenant_sampler(lambda dag_id: "acme", lambda tenant: 0.0)
    assert isinstance(provider.sampler, tracing.TenantRatioSampler)
    assert not tracing.install_tenant_sampler(lambda dag_id: "acme", lambda tenant: 0.0)  # idempotent
    # Airflow's own per-run decision (new_dagrun_trace_carrier) now follows the tenant's ratio 0.0.
    from airflow._shared.observability.traces import new_dagrun_trace_carrier

    carrier = new_dagrun_trace_carrier(attributes={"airflow.dag_id": "etl"})
    assert carrier["traceparent"].endswith("-00")


def test_tenant_ratio_sampler_leaves_spans_with_a_parent_to_the_parent():
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Decision, ParentBased
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

    sampler = tracing.TenantRatioSampler(ParentBased(ALWAYS_OFF), lambda dag_id: "acme", lambda tenant: 1.0)
    unsampled_parent = set_span_in_context(NonRecordingSpan(SpanContext(1, 2, False, TraceFlags(0))))
    result = sampler.should_sample(unsampled_parent, 1, "task_try t", attributes={"airflow.dag_id": "etl"})
    assert result.decision == Decision.DROP  # the run was not sampled: its spans are not either
