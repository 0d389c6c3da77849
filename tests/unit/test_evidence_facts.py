"""A try's facts (:class:`TryFacts`): one typed shape from the task process to the entry. They cross the
outbox unchanged, and the entry made of them is the one BareCount made before they had a type, key for key
and value for value: its canonical JSON, and so the hash of every record holding it, stays the same.

The reference entries below were written by the code before ``TryFacts`` (a dict of facts, read back as a
mapping and passed to ``build_entry`` as keyword arguments), from the inputs below: those of
test_handoff's forwarded serverless try (a mapped retry, a queued time, times with microseconds, an error,
and everything BareCount's operators leave on the task), and an absent try the sealing builds from
Airflow's records (test_evidence_no_loss's run)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from barecount_provider import context, outbox
from barecount_provider.cost import estimate
from barecount_provider.evidence import assemble
from barecount_provider.evidence import record as rec
from barecount_provider.evidence.facts import CONTEXT_FIELDS, TryFacts, facts_from_json
from barecount_provider.runtime import entries

START = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
RUN_ID = "manual__2026-11-27T12:00:00+00:00"
LOG_FOLDER = "/var/log/airflow"

TASK_ENTRY: dict[str, Any] = {
    "entry_version": 1,
    "entry_id": "t" * 40,
    "key": "load[3]#2",
    "source": "task",
    "host": "worker-7",
    "context": {
        "tenant": "acme", "pipeline": "orders", "runner_class": "serverless", "size": "l", "network_profile": "vpn",
        "image_or_driver_digest": "sha256:" + "cd" * 32, "dag_id": "etl", "run_id": RUN_ID, "task_id": "load",
        "try_number": 2, "map_index": 3, "correlation_id": "c" * 32, "run_token": "t" * 40,
    },
    "state": "up_for_retry",
    "timings": {
        "queued_at": "2026-11-27T12:00:07.000250+00:00", "started_at": "2026-11-27T12:00:00+00:00",
        "ended_at": "2026-11-27T12:05:01.123456+00:00", "duration_s": 301.123456,
    },
    "metrics": {"cpu_seconds": 1.5, "peak_memory_bytes": 1024},
    "runner_result": {"billed_duration_ms": 1200, "memory_mb": 512, "digests": {"code_sha256": "ab" * 32}},
    # "cost": the cost domain's estimate (checked against it below, not copied here)
    "log": {
        "correlation_id": "c" * 32, "run_token": "t" * 40,
        "location": f"{LOG_FOLDER}/dag_id=etl/run_id={RUN_ID}/task_id=load/map_index=3/attempt=2.log",
    },
    "trace": {"trace_id": "a" * 32, "span_id": "b" * 16, "sampled": True},
    "policy": {"validations": [{"rule": "size", "ok": True}], "exceptions": [{"rule": "max_size", "granted_by": "ops"}]},
    "approvals": [{"by": "ops", "at": "2026-11-27T12:00:00+00:00"}],
    "digests": [
        {"kind": "context", "value": "sha256:" + "cd" * 32, "first_seen": "2026-11-27T12:00:00+00:00"},
        {"kind": "code_sha256", "value": "ab" * 32, "first_seen": "2026-11-27T12:00:00+00:00"},
    ],
    "error": {"error_class": "ValueError", "message": "boom"},
    "replay": {"replayed": 3},
    "dead_letters": ["k1"],
}  # fmt: skip

AIRFLOW_ENTRY: dict[str, Any] = {
    "entry_version": 1,
    "entry_id": "orders/r1/u#1",
    "key": "u#1",
    "source": "airflow",
    "host": "worker-1",
    "context": {
        "tenant": "acme", "pipeline": "orders", "runner_class": "local", "size": "m", "network_profile": None,
        "image_or_driver_digest": None, "dag_id": "orders", "run_id": "r1", "task_id": "u", "try_number": 1,
        "map_index": -1, "correlation_id": "e4438dd1cb52308ba8be485187fc6aa9", "run_token": None,
    },
    "state": "failed",
    "timings": {
        "queued_at": "2026-11-27T12:00:01+00:00", "started_at": "2026-11-27T12:00:02+00:00",
        "ended_at": "2026-11-27T12:00:05+00:00", "duration_s": 3.0,
    },
    "metrics": {},
    "runner_result": None,
    "cost": None,
    "log": {"correlation_id": "e4438dd1cb52308ba8be485187fc6aa9", "run_token": None, "location": None},
    "trace": None,
    "policy": {"validations": [], "exceptions": []},
    "approvals": [],
    "digests": [],
    "error": None,
    "absent": True,
}  # fmt: skip


@pytest.fixture(autouse=True)
def log_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entries, "log_settings", lambda: (LOG_FOLDER, entries.DEFAULT_LOG_TEMPLATE))


def _ctx() -> context.RunContext:
    return context.RunContext(
        tenant="acme", pipeline="orders", runner_class="serverless", size="l", network_profile="vpn", dag_id="etl",
        run_id=RUN_ID, task_id="load", try_number=2, map_index=3, correlation_id="c" * 32, run_token="t" * 40,
        image_or_driver_digest="sha256:" + "cd" * 32,
    )  # fmt: skip


def _ti() -> SimpleNamespace:
    task = SimpleNamespace(
        barecount_runner_result={"billed_duration_ms": 1200, "memory_mb": 512, "digests": {"code_sha256": "ab" * 32}},
        barecount_policy_validations=[{"rule": "size", "ok": True}],
        barecount_policy_exceptions=[{"rule": "max_size", "granted_by": "ops"}],
        barecount_approvals=[{"by": "ops", "at": "2026-11-27T12:00:00+00:00"}],
        barecount_replay_outcome={"replayed": 3},
        barecount_dead_letters=["k1"],
    )
    return SimpleNamespace(task=task, queued_dttm=START.replace(second=7, microsecond=250), hostname="worker-7")


FIELDS: dict[str, Any] = dict(
    state="up_for_retry", started_at=START, ended_at=START.replace(minute=5, second=1, microsecond=123456),
    duration_s=301.123456, metrics={"cpu_seconds": 1.5, "peak_memory_bytes": 1024},
    trace={"trace_id": "a" * 32, "span_id": "b" * 16, "sampled": True},
    error={"error_class": "ValueError", "message": "boom"},
)  # fmt: skip


def _emitter(sent: list[Any]) -> SimpleNamespace:
    return SimpleNamespace(sinks=[object()], emit=sent.extend)


def _facts(emitter: Any = None) -> TryFacts:
    return entries.try_facts(_ctx(), _ti(), emitter=emitter, **FIELDS)


def _without_written_at(entry: dict[str, Any]) -> dict[str, Any]:
    assert datetime.fromisoformat(entry["written_at"]).tzinfo is not None
    return {name: value for name, value in entry.items() if name != "written_at"}


def _expected_cost() -> dict[str, Any]:
    runner_result = TASK_ENTRY["runner_result"]
    return estimate("serverless", runner_result, runtime_s=FIELDS["duration_s"]).as_dict()


def test_the_facts_carry_the_run_context_and_what_the_operators_left() -> None:
    facts = _facts(_emitter([]))
    assert facts.context() == TASK_ENTRY["context"] and tuple(facts.context()) == CONTEXT_FIELDS
    assert facts.metric_tags == _ctx().metric_tags()
    assert facts.runner_result == TASK_ENTRY["runner_result"] and facts.replay == {"replayed": 3}
    assert facts.queued_at == START.replace(second=7, microsecond=250) and facts.host == "worker-7"
    assert _facts().metric_tags is None  # no emitter with a sink: no cost metrics, no tags


def test_the_facts_cross_the_outbox_unchanged(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Encoded once with the task process's outbox record, read back by the forwarder: the same value, its
    times to the microsecond and in their own offsets."""
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(tmp_path))
    assert outbox.spool_dir().startswith(str(tmp_path))
    facts = msgspec.structs.replace(_facts(_emitter([])), started_at=START.astimezone(timezone(timedelta(hours=1))))
    outbox.add_entry(facts)
    outbox.write_pending()
    [record] = outbox.records_waiting(outbox.spool_dir())
    [spooled] = record["entries"]
    assert "cost" not in spooled and "log" not in spooled and "written_at" not in spooled  # facts only
    decoded = facts_from_json(spooled)
    assert decoded == facts
    assert decoded.started_at is not None and decoded.started_at.utcoffset() == timedelta(hours=1)
    assert msgspec.json.encode(decoded) == msgspec.json.encode(facts)


def test_the_task_s_entry_of_its_facts_is_the_entry_it_made_before() -> None:
    sent: list[Any] = []
    entry = entries.entry_of(_facts(_emitter(sent)), emitter=_emitter(sent))
    assert entry.pop("cost") == _expected_cost()
    assert _without_written_at(entry) == TASK_ENTRY
    assert rec.canonical(_without_written_at(entry)) == rec.canonical(TASK_ENTRY)
    assert sent  # the cost metrics, with the try's tags


def test_the_forwarder_s_entry_of_the_handed_off_facts_is_the_task_s(monkeypatch: pytest.MonkeyPatch) -> None:
    from barecount_provider.telemetry import metrics

    sent: list[Any] = []
    task_entry = entries.build_try_entry(_ctx(), _ti(), emitter=_emitter(sent), **FIELDS)
    written: list[dict[str, Any]] = []
    monkeypatch.setattr(entries.evidence_spool, "write_entry", lambda entry: (written.append(entry), "stored")[1])
    forwarded: list[Any] = []
    monkeypatch.setattr(metrics, "get_direct_emitter", lambda: _emitter(forwarded))
    spooled = json.loads(msgspec.json.encode(_facts(_emitter([]))))  # as the outbox record holds them
    assert entries.deliver_entry(spooled) == "stored"
    [entry] = written
    assert list(entry) == list(task_entry)  # the same keys, in the same order
    assert _without_written_at(entry) == _without_written_at(task_entry)
    assert entry.pop("cost") == _expected_cost()
    assert _without_written_at(entry) == TASK_ENTRY
    assert forwarded == sent and sent  # the same cost points


def test_an_entry_built_from_airflow_s_records_is_the_one_made_before() -> None:
    run = assemble.PendingRun(
        dag_id="orders", run_id="r1", tenant="acme", pipeline="orders", state="failed", started_at=START,
        ended_at=START + timedelta(seconds=6), run_type=None,
    )
    expected = rec.ExpectedTry(
        task_id="u", map_index=-1, try_number=1, state="failed", had_process=True,
        started_at=START + timedelta(seconds=2), ended_at=START + timedelta(seconds=5),
        queued_at=START + timedelta(seconds=1), hostname="worker-1",
    )  # fmt: skip
    entry = assemble.airflow_entry(run, expected, absent=True)
    assert _without_written_at(entry) == AIRFLOW_ENTRY
    assert rec.canonical(_without_written_at(entry)) == rec.canonical(AIRFLOW_ENTRY)


def test_facts_that_are_not_a_try_s_are_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        facts_from_json({"context": {}})
    spooled = json.loads(msgspec.json.encode(_facts()))
    spooled["try_number"] = "two"
    with pytest.raises(msgspec.ValidationError, match="try_number"):
        facts_from_json(spooled)
