"""Handing a try's outputs to the forwarder (``[barecount] task_outputs``): the task process writes the
try's file-sink event, span line and evidence entry into one spool file, already redacted; the forwarder
writes exactly what the task process would have written (the entry costed as the task would have costed it),
and a store that is down costs it one timeout per round.

Named after the hand-off, not one module: it tests the task side, the outbox and the forwarder together on
purpose. Its tests with a live forwarder process, a fork or a StatsD listener are in
tests/integration/test_handoff.py."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from barecount_provider import outbox
from barecount_provider.evidence import spool as evidence_spool
from barecount_provider.evidence.store import open_store
from barecount_provider.jsonlines import encode_line
from barecount_provider.runtime import entries as evidence_task
from barecount_provider.runtime import forwarding, task_side
from barecount_provider.telemetry import metrics

START = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SECRET = "hunter2-Zq8Lx93mPw"


def _ti(task_id: str, run_id: str = "manual__2026-11-27T12:00:00+00:00") -> SimpleNamespace:
    dag = SimpleNamespace(dag_id="etl", tags=["tenant:acme", "pipeline:orders"], params={}, default_args={})
    task = SimpleNamespace(dag=dag, upstream_task_ids={"extract"}, params={})
    return SimpleNamespace(
        dag_id="etl", run_id=run_id, task_id=task_id, map_index=-1, try_number=1, task=task, start_date=START,
        max_tries=1, _ti_context_from_server=None, queued_dttm=None,
    )


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _entries(home):
    return sorted((home / "evidence").rglob("entries/**/*.json")) if (home / "evidence").exists() else []


def _spooled(home):
    """The raw text of what waits in the spool (its journal and files), and the records in it."""
    directory = home / "telemetry" / "spool"
    names = sorted(n for n in os.listdir(directory) if n.endswith(".jsonl") or n == outbox.JOURNAL) if directory.exists() else []
    return "".join((directory / name).read_text() for name in names), outbox.records_waiting(str(directory))


def _run_try(task_id: str, error: BaseException | None = None) -> None:
    ti = _ti(task_id)
    task_side.on_try_running(ti)
    task_side.on_try_finished(ti, "failed" if error else "success", error)


# ------------------------------------------------------------------------------------------- the outputs


def test_a_handed_off_try_writes_one_spool_record_and_the_forwarder_writes_its_outputs(home, monkeypatch):
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TASK_OUTPUTS", "forwarder")
    events, spans = home / "telemetry" / "events.jsonl", home / "telemetry" / "spans.jsonl"
    _run_try("load", ValueError(f"login failed: password={SECRET}"))
    spooled, records = _spooled(home)
    assert len(records) == 1
    assert not events.exists() and not spans.exists() and _entries(home) == []
    assert SECRET not in spooled  # redacted in the task process, before anything is written

    result = forwarding.flush_spool()
    assert result["records"] == 1 and result["lines"] == 2 and result["entries"] == 1
    assert _spooled(home) == ("", [])
    [event] = _lines(events)
    assert event["kind"] == "task_try" and event["state"] == "failed" and event["error_class"] == "ValueError"
    assert event["sinks"]["written_by"] == "forwarder" and event["tenant"] == "acme"
    [span] = _lines(spans)
    assert span["trace_id"] == event["trace_id"] and span["span_id"] == event["span_id"]
    assert span["attributes"]["error.type"] == "ValueError"
    [path] = _entries(home)
    entry = json.loads(path.read_text())
    assert entry["state"] == "failed" and entry["trace"]["span_id"] == event["span_id"]
    assert entry["cost"] is not None and entry["cost"]["runner_class"] == "local"
    assert "_pending_cost" not in entry and "metric_tags" not in entry
    everything = events.read_text() + spans.read_text() + path.read_text()
    assert SECRET not in everything and "***" in everything


def test_the_task_writes_its_outputs_itself_when_it_does_not_hand_off(home, monkeypatch):
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TASK_OUTPUTS", "task")
    _run_try("load")
    assert _spooled(home) == ("", [])
    assert len(_lines(home / "telemetry" / "events.jsonl")) == 1 and len(_lines(home / "telemetry" / "spans.jsonl")) == 1
    assert len(_entries(home)) == 1
    assert _lines(home / "telemetry" / "events.jsonl")[0]["sinks"]["written_by"] == "task"


def _entry_fields(**overrides):
    fields = dict(
        state="success", started_at=START, ended_at=START.replace(minute=5), duration_s=300.0,
        metrics={"cpu_seconds": 1.5}, trace=None, error=None,
    )
    fields.update(overrides)
    return fields


@pytest.mark.parametrize("rates", [{}, {"AIRFLOW__BARECOUNT__COST_LOCAL_WORKER_SLOT_HOUR_USD": "0.12"}])
def test_the_forwarder_costs_a_handed_off_entry_as_the_task_would_have(home, monkeypatch, rates):
    from barecount_provider import context

    for name, value in rates.items():
        monkeypatch.setenv(name, value)
    ti = _ti("load")
    ctx = context.resolve_for_ti(ti)
    sent: list = []
    emitter = SimpleNamespace(sinks=[object()], emit=sent.extend)
    costed = evidence_task.build_try_entry(ctx, ti, emitter=emitter, **_entry_fields())
    facts = evidence_task.try_facts(ctx, ti, emitter=emitter, **_entry_fields())
    assert facts.metric_tags == ctx.metric_tags()
    forwarded: list = []
    monkeypatch.setattr(metrics, "get_direct_emitter", lambda: SimpleNamespace(sinks=[object()], emit=forwarded.extend))
    assert evidence_task.deliver_entry(json.loads(encode_line(facts))) == "stored"  # as it comes back from the spool file
    stored = open_store().entries_for_run("etl", ti.run_id)
    assert len(stored) == 1
    expected = json.loads(json.dumps(costed, default=str))
    for entry in (stored[0], expected):
        entry.pop("written_at")
    assert stored[0] == expected
    assert forwarded == sent and sent  # the same cost points, with the task's tags


@pytest.mark.parametrize("runner", ["local", "serverless"])
def test_the_forwarder_builds_from_a_try_s_facts_the_entry_the_task_would_have_built(home, monkeypatch, runner):
    """A handed-off try leaves its facts only (no formatting, log location or cost in the task process); the
    forwarder's entry, from those facts as the spool's encoder wrote them, is the task's, field for field
    (``written_at`` aside: when the entry was built). With what BareCount's operators leave on the task, a
    mapped try, a queued time, times with microseconds and an error."""
    from barecount_provider import context

    ti = _ti("load")
    ti.map_index, ti.try_number, ti.queued_dttm = 3, 2, START.replace(second=7, microsecond=250)
    ti.task.barecount_runner_class = runner
    if runner == "serverless":
        ti.task.barecount_runner_result = {"billed_duration_ms": 1200, "memory_mb": 512, "digests": {"code_sha256": "ab" * 32}}
        ti.task.barecount_policy_validations = [{"rule": "size", "ok": True}]
        ti.task.barecount_approvals = [{"by": "ops", "at": "2026-11-27T12:00:00+00:00"}]
        ti.task.barecount_replay_outcome = {"replayed": 3}
        ti.task.barecount_dead_letters = ["k1"]
    ctx = context.resolve_for_ti(ti)
    fields = _entry_fields(
        state="up_for_retry",
        ended_at=START.replace(minute=5, second=1, microsecond=123456),
        trace={"trace_id": "a" * 32, "span_id": "b" * 16, "sampled": True},
        error={"error_class": "ValueError", "message": "boom"},
    )
    sent: list = []
    emitter = SimpleNamespace(sinks=[object()], emit=sent.extend)
    expected = json.loads(json.dumps(evidence_task.build_try_entry(ctx, ti, emitter=emitter, **fields), default=str))

    facts = evidence_task.try_facts(ctx, ti, emitter=emitter, **fields)
    spooled = json.loads(encode_line(facts))
    assert "log_location" not in spooled and "cost" not in spooled and "written_at" not in spooled
    forwarded: list = []
    monkeypatch.setattr(metrics, "get_direct_emitter", lambda: SimpleNamespace(sinks=[object()], emit=forwarded.extend))
    assert evidence_task.deliver_entry(spooled) == "stored"  # as the spool holds it
    [stored] = open_store().entries_for_run("etl", ti.run_id)
    for entry in (stored, expected):
        entry.pop("written_at")
    assert stored == expected
    assert stored["key"] == "load[3]#2" and stored["log"]["location"].endswith("map_index=3/attempt=2.log")
    assert forwarded == sent and sent  # the same cost points, with the task's tags


def test_facts_the_forwarder_cannot_build_an_entry_from_are_counted_never_raised(home):
    assert evidence_task.deliver_entry({"context": {}}) == "lost"
    assert metrics.EMIT_FAILURES.counts[("evidence", "entry")] == 1


def test_a_store_that_is_down_costs_the_forwarder_one_attempt_per_round(home, monkeypatch):
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TASK_OUTPUTS", "forwarder")
    attempts: list[str] = []

    class DownStore:
        def put_entry(self, entry):
            attempts.append(entry["entry_id"])
            raise TimeoutError("store unreachable")

    monkeypatch.setattr(evidence_spool, "_task_store", lambda kind, timeout_ms: DownStore())
    failures: list[tuple[str, str]] = []
    record = metrics.EMIT_FAILURES.record
    monkeypatch.setattr(
        metrics.EMIT_FAILURES, "record", lambda sink, stage: (failures.append((sink, stage)), record(sink, stage))
    )
    for task_id in ("a", "b", "c"):
        _run_try(task_id)
    result = forwarding.flush_spool()
    assert result["entries"] == 3
    assert len(attempts) == 1  # the first fails; the round's others go straight to the evidence spool
    assert len(evidence_spool.spooled()) == 3  # nothing lost: delivered by a later flush
    assert failures.count(("evidence", "store")) == 1  # counted (and reported by the forwarder)


# ------------------------------------------------------------------------------- the failure's stack trace


def _raised(make):
    try:
        make()
    except BaseException as err:  # any exception the test raises
        return err
    raise AssertionError("nothing raised")


def _recurse(depth: int) -> None:
    if depth == 0:
        raise RecursionError("too deep")
    _recurse(depth - 1)


def _chained() -> None:
    try:
        {}["missing"]
    except KeyError as err:
        raise RuntimeError("lookup failed\nsecond line of the message") from err


def _in_handler() -> None:
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        raise ValueError("while handling")  # noqa: B904 - the implicit context is what is tested


def _with_notes() -> None:
    err = TypeError("typed")
    err.add_note("a note\nover two lines")
    raise err


@pytest.mark.parametrize(
    "make",
    [
        lambda: _recurse(12),  # a run of repeated frames: summarised as traceback does
        _chained,
        _in_handler,
        _with_notes,
        lambda: int("x"),
    ],
    ids=["recursion", "cause", "context", "notes", "builtin"],
)
def test_the_stack_trace_rendered_from_the_failures_facts_is_pythons(make):
    from barecount_provider.telemetry import exceptions

    error = _raised(make)
    facts = exceptions.exception_facts(error)
    assert facts is not None
    facts = json.loads(json.dumps(facts))  # as it comes back from the spool file
    assert exceptions.render_exception_facts(facts) == exceptions.format_exception_text(error)


def test_an_exception_without_a_traceback_and_the_cases_left_to_traceback():
    from barecount_provider.telemetry import exceptions

    bare = ValueError("never raised")
    assert exceptions.render_exception_facts(exceptions.exception_facts(bare)) == "ValueError: never raised\n"
    group = _raised(lambda: (_ for _ in ()).throw(ExceptionGroup("many", [ValueError("a")])))
    assert exceptions.exception_facts(group) is None  # a group: traceback's own text, in the task
    syntax = _raised(lambda: compile("def (", "<dag>", "exec"))
    assert exceptions.exception_facts(syntax) is None


def test_the_task_redacts_the_messages_and_the_forwarder_the_source_lines(home, monkeypatch, tmp_path):
    """The message carries the try's data (redacted in the task, where the registered secrets are known);
    a source line is code, redacted by the forwarder with the value patterns."""
    from barecount_provider.telemetry import exceptions

    monkeypatch.setenv("AIRFLOW__BARECOUNT__TASK_OUTPUTS", "forwarder")
    module = tmp_path / "leaky_dag.py"
    module.write_text('def load():\n    raise ValueError(f"login refused for {TOKEN}") from None  # ghp_' + "A" * 36 + "\n")
    from airflow.sdk.log import mask_secret

    secret = f"corp-{os.getpid()}-{id(module):x}"
    mask_secret(secret)  # e.g. a connection the task fetched: known as a secret only in the task process
    namespace: dict = {"TOKEN": secret}
    exec(compile(module.read_text(), str(module), "exec"), namespace)  # a DAG file's code
    error = _raised(namespace["load"])
    ti = _ti("load")
    task_side.on_try_running(ti)
    task_side.on_try_finished(ti, "failed", error)
    spooled, _ = _spooled(home)
    assert secret not in spooled and exceptions.PENDING_STACKTRACE in spooled and "exception.stacktrace" not in spooled
    forwarding.flush_spool()
    [span] = _lines(home / "telemetry" / "spans.jsonl")
    [exception] = [e for e in span["events"] if e["name"] == "exception"]
    text = exception["attributes"]["exception.stacktrace"]
    assert exceptions.PENDING_STACKTRACE not in exception["attributes"]
    assert f'File "{module}", line 2, in load' in text and "raise ValueError" in text  # the source line
    assert secret not in text and "ghp_" + "A" * 36 not in text and text.endswith("ValueError: login refused for ***\n")


def test_a_line_the_forwarder_cannot_write_is_counted_as_the_tasks_would_be(home, monkeypatch):
    from barecount_provider import jsonlines

    monkeypatch.setenv("AIRFLOW__BARECOUNT__TASK_OUTPUTS", "forwarder")
    _run_try("load")

    def refuse(path, records):
        raise OSError("disk full")

    monkeypatch.setattr(jsonlines, "append_lines", refuse)
    failures: list[tuple[str, str]] = []
    record = metrics.EMIT_FAILURES.record
    monkeypatch.setattr(
        metrics.EMIT_FAILURES, "record", lambda sink, stage: (failures.append((sink, stage)), record(sink, stage))
    )
    assert forwarding.flush_spool()["lines"] == 2
    assert sorted(failures) == [("file", "write"), ("traces", "export")]  # the event's, the span line's


