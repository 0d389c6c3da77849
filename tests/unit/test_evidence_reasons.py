"""A lost worker: a try Airflow ended itself (its heartbeat stopped, its executor reported it gone) or whose
task process died without writing its entry gets a ``reason`` in its entry, from Airflow's audit log, and
its cost stays unknown."""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from barecount_provider.evidence import assemble as assemble_module
from barecount_provider.evidence import record as rec
from barecount_provider.evidence import store as store_module
from barecount_provider.evidence.assemble import AirflowEvent
from barecount_provider.evidence.facts import TryFacts
from barecount_provider.evidence.store import EvidenceStore, LocalBodies

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "evidence.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
T0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
# Airflow 3.3's own texts (scheduler_job_runner.py), as its audit log holds them
HEARTBEAT_EXTRA = (
    "Task did not emit heartbeat within time limit (300 seconds) and will be terminated. See "
    "https://airflow.apache.org/docs/apache-airflow/stable/core-concepts/tasks.html#task-instance-heartbeat-timeout"
)
MISMATCH_EXTRA = (
    "Executor LocalExecutor(parallelism=8) reported that the task instance <TaskInstance: orders.sleep r1 [running]> "
    "finished with state failed, but the task instance's state attribute is running. Learn more: "
    "https://airflow.apache.org/docs/apache-airflow/stable/troubleshooting.html#task-state-changed-externally"
)


@pytest.fixture
def store(tmp_path: Path) -> EvidenceStore:
    store_module.clear_caches()
    return EvidenceStore(
        LocalBodies(str(tmp_path / "evidence")), f"sqlite:///{tmp_path / 'evidence' / 'index.db'}", "local"
    )


def _ctx(task_id: str, try_number: int = 1) -> dict[str, Any]:
    return {
        "tenant": "acme", "pipeline": "orders", "runner_class": "local", "size": "m", "network_profile": None,
        "image_or_driver_digest": None, "dag_id": "orders", "run_id": "r1", "task_id": task_id,
        "try_number": try_number, "map_index": -1, "correlation_id": "c" * 32, "run_token": f"tok-{task_id}-{try_number}",
    }  # fmt: skip


def _task_entry(task_id: str, state: str = "success") -> dict[str, Any]:
    cost = {"runtime_hours": 0.001, "compute_usd": 0.5, "storage_usd": 0.0, "transfer_usd": 0.0, "total_usd": 0.5,
            "currency": "USD", "basis": "list-price estimate", "price_table": {"name": "t", "version": "1"}}  # fmt: skip
    return rec.build_entry(TryFacts(**_ctx(task_id), state=state, started_at=T0, ended_at=T0 + timedelta(seconds=3)), cost=cost)


def _row(task_id: str, state: str, try_number: int = 1) -> dict[str, Any]:
    return {
        "task_id": task_id, "map_index": -1, "try_number": try_number, "state": state, "queued_dttm": T0,
        "start_date": T0, "end_date": T0 + timedelta(seconds=320), "pid": 4242, "hostname": "worker-1",
    }  # fmt: skip


def _run() -> assemble_module.PendingRun:
    return assemble_module.PendingRun(
        dag_id="orders", run_id="r1", tenant="acme", pipeline="orders", state="failed",
        started_at=T0, ended_at=T0 + timedelta(seconds=321),
    )  # fmt: skip


def _seal(
    store: EvidenceStore,
    rows: list[dict[str, Any]],
    events: dict[tuple[str, int, int], Sequence[AirflowEvent]],
) -> dict[str, Any]:
    calls: list[int] = []

    def load_events() -> dict[tuple[str, int, int], Sequence[AirflowEvent]]:
        calls.append(1)
        return events

    run = _run()
    record = assemble_module.assemble(
        store, run, assemble_module.expected_tries(rows), now=run.ended_at + timedelta(seconds=61),
        grace=timedelta(seconds=60), load_events=load_events,
    )  # fmt: skip
    assert record is not None and len(calls) == 1
    VALIDATOR.validate(record)
    return record


def _by_key(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["key"]: entry for entry in record["entries"]}


def test_a_try_failed_by_a_heartbeat_timeout_is_absent_with_its_reason_and_an_unknown_cost(
    store: EvidenceStore,
) -> None:
    store.put_entry(_task_entry("ok"))
    heartbeat = AirflowEvent("heartbeat timeout", T0 + timedelta(seconds=318), HEARTBEAT_EXTRA)
    mismatch = AirflowEvent("state mismatch", T0 + timedelta(seconds=319), MISMATCH_EXTRA)
    record = _seal(
        store, [_row("ok", "success"), _row("sleep", "failed")], {("sleep", -1, 1): [mismatch, heartbeat]}
    )
    lost = _by_key(record)["sleep#1"]
    assert (lost["source"], lost["state"], lost["absent"], lost["host"]) == (
        "airflow",
        "failed",
        True,
        "worker-1",
    )
    # the heartbeat timeout made the executor report the try failed: that is its cause, not the mismatch
    assert lost["reason"] == {
        "code": "heartbeat_timeout", "detail": HEARTBEAT_EXTRA, "airflow_event": "heartbeat timeout",
        "at": (T0 + timedelta(seconds=318)).isoformat(),
    }  # fmt: skip
    assert "reason" not in _by_key(record)["ok#1"]
    assert record["complete"] is False and record["absent"] == ["sleep#1"]
    assert record["cost"]["complete"] is False and record["cost"]["absent"] == ["sleep#1"]
    assert record["cost"]["total_usd"] == 0.5  # the known part only
    assert record["state"] == "failed" and record["metrics"]["by_state"] == {"failed": 1, "success": 1}


def test_an_executor_report_of_a_try_still_running_is_killed_externally(store: EvidenceStore) -> None:
    mismatch = AirflowEvent("state mismatch", T0 + timedelta(seconds=5), MISMATCH_EXTRA)
    record = _seal(store, [_row("sleep", "failed")], {("sleep", -1, 1): [mismatch]})
    reason = _by_key(record)["sleep#1"]["reason"]
    assert (reason["code"], reason["airflow_event"], reason["detail"]) == (
        "killed_externally",
        "state mismatch",
        MISMATCH_EXTRA,
    )


def test_an_absent_try_airflow_gives_no_reason_for_ended_without_its_entry(store: EvidenceStore) -> None:
    """The task process killed by a signal while the process supervising it lived on: the supervisor reports
    the try failed and Airflow records no reason (the signal is in the try's log only)."""
    other_try = AirflowEvent("heartbeat timeout", T0, HEARTBEAT_EXTRA)
    record = _seal(store, [_row("vanish", "failed", try_number=2)], {("vanish", -1, 1): [other_try]})
    lost = _by_key(record)["vanish#2"]
    assert lost["absent"] is True and lost["reason"]["code"] == "ended_without_entry"
    assert (
        lost["reason"]["airflow_event"] is None
        and lost["reason"]["at"] == (T0 + timedelta(seconds=320)).isoformat()
    )
    assert "killed by a signal" in lost["reason"]["detail"]


def test_an_orphaned_task_process_that_wrote_its_entry_keeps_it_with_airflows_reason(
    store: EvidenceStore,
) -> None:
    """Its worker killed, the task process ran on as an orphan and wrote its entry before the run was sealed:
    the entry is kept (its cost is what it measured) and says Airflow failed the try."""
    store.put_entry(_task_entry("sleep", state="failed"))
    heartbeat = AirflowEvent("heartbeat timeout", T0 + timedelta(seconds=318), HEARTBEAT_EXTRA)
    record = _seal(store, [_row("sleep", "failed")], {("sleep", -1, 1): [heartbeat]})
    entry = _by_key(record)["sleep#1"]
    assert (
        entry["source"] == "task" and "absent" not in entry and entry["reason"]["code"] == "heartbeat_timeout"
    )
    assert record["complete"] is True and record["cost"]["complete"] is True


def test_airflows_audit_log_is_not_read_for_a_run_whose_tries_all_wrote_their_entries(
    store: EvidenceStore,
) -> None:
    store.put_entry(_task_entry("ok"))
    store.put_entry(_task_entry("failing", state="failed"))

    def load_events() -> dict[tuple[str, int, int], Sequence[AirflowEvent]]:
        raise AssertionError("read for a run that needs no reason")

    run = _run()
    rows = [_row("ok", "success"), {**_row("skip", "skipped"), "start_date": None, "pid": None}]
    record = assemble_module.assemble(
        store,
        run,
        assemble_module.expected_tries(rows),
        now=run.ended_at,
        grace=timedelta(0),
        load_events=load_events,
    )
    assert record is not None and all("reason" not in entry for entry in record["entries"])
    # a failed try with its own entry: read (a heartbeat timeout may have failed it), no event, no reason
    record = _seal(store, [_row("failing", "failed")], {})
    assert "reason" not in _by_key(record)["failing#1"]


def test_the_reason_detail_is_redacted_and_bounded(
    store: EvidenceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cr3t-Pa55word-value"
    long_extra = f"{MISMATCH_EXTRA} Extra info: boto3 call failed password={secret} " + "x" * 2000
    mismatch = AirflowEvent("state mismatch", T0, long_extra)
    record = _seal(store, [_row("sleep", "failed")], {("sleep", -1, 1): [mismatch]})
    detail = _by_key(record)["sleep#1"]["reason"]["detail"]
    assert secret not in json.dumps(record) and "password=" in detail
    assert len(detail) == assemble_module.REASON_DETAIL_MAX and detail.endswith("…")


def test_a_reason_detail_can_be_redacted_after_sealing_like_any_field(store: EvidenceStore) -> None:
    """`barecount evidence redact` reaches the reason like every other field of an entry."""
    leaked = "host-name-that-must-go"
    heartbeat = AirflowEvent("heartbeat timeout", T0, f"Task did not emit heartbeat ({leaked})")
    record = _seal(store, [_row("sleep", "failed")], {("sleep", -1, 1): [heartbeat]})
    redaction = store.redact(
        record["record_id"], values=[leaked], reason="a name that must not stay", by="alice"
    )
    body = store.get(record["record_id"])
    assert body is not None and leaked not in json.dumps(body)
    assert body["redacted"]["paths"] == ["entries[0].reason.detail"] == redaction["redaction"]["paths"]
    assert store.integrity(body)["status"] == "redacted"
    assert store.verify_report("acme")["acme"].intact
    VALIDATOR.validate(body)


def test_the_cost_left_unknown_by_an_absent_try_says_why_in_the_cli_and_the_cost_report(
    store: EvidenceStore,
) -> None:
    from barecount_provider.api.queries import ABSENT_REASON, _unknown_tries
    from barecount_provider.cli import evidence as cli_evidence

    heartbeat = AirflowEvent("heartbeat timeout", T0, HEARTBEAT_EXTRA)
    record = _seal(store, [_row("sleep", "failed")], {("sleep", -1, 1): [heartbeat]})
    why = f"{ABSENT_REASON}: heartbeat_timeout"
    assert cli_evidence._unknown_costs(record) == [("sleep#1", why)]
    assert [
        reason for _facts, reason in _unknown_tries(store, since=None, until=None, tenant=None, dag_ids=None)
    ] == [why]
    # a record sealed before reasons were recorded: the absence alone
    old = {
        **record,
        "entries": [{k: v for k, v in entry.items() if k != "reason"} for entry in record["entries"]],
    }
    assert cli_evidence._unknown_costs(old) == [("sleep#1", ABSENT_REASON)]


def test_the_assembler_reads_the_events_of_the_run_it_seals(store: EvidenceStore) -> None:
    seen: list[tuple[str, str]] = []

    def load_events(dag_id: str, run_id: str) -> dict[tuple[str, int, int], list[AirflowEvent]]:
        seen.append((dag_id, run_id))
        return {("sleep", -1, 1): [AirflowEvent("heartbeat timeout", T0, HEARTBEAT_EXTRA)]}

    assembler = assemble_module.Assembler(
        lambda: store, lambda dag_id, run_id: [_row("sleep", "failed")], lambda: 0, load_events=load_events
    )
    record = assembler.run_finished(_run())
    assert record is not None and seen == [("orders", "r1")]
    assert _by_key(record)["sleep#1"]["reason"]["code"] == "heartbeat_timeout"


def test_every_reason_code_is_in_the_schema_and_the_docs() -> None:
    entry_reason = SCHEMA["$defs"]["entry"]["properties"]["reason"]["properties"]["code"]["enum"]
    assert entry_reason == list(assemble_module.REASON_CODES)
    docs = (Path(__file__).resolve().parents[2] / "docs" / "evidence.md").read_text()
    for code in assemble_module.REASON_CODES:
        assert f"| `{code}` |" in docs, code


def test_airflow_still_writes_the_audit_log_events_reasons_are_read_from() -> None:
    """The reasons come from what Airflow 3.3's scheduler writes into its ``log`` table: this fails clearly when
    an upgrade renames or drops those events."""
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

    purge = inspect.getsource(SchedulerJobRunner._purge_task_instances_without_heartbeats)
    assert (
        f'event="{assemble_module.HEARTBEAT_TIMEOUT_EVENT}"' in purge and "task_instance=ti.key" in purge
    ), "Airflow no longer logs its heartbeat timeouts as the 'heartbeat timeout' event of its audit log"
    events = inspect.getsource(SchedulerJobRunner.process_executor_events)
    assert (
        f'Log(event="{assemble_module.STATE_MISMATCH_EVENT}"' in events and "task_instance=ti.key" in events
    ), (
        "Airflow no longer logs an executor's report of a running try as the 'state mismatch' event of its audit log"
    )
