"""Evidence past one machine: absent entries make the cost unknown (never a complete 0), each entry names the
host that ran its try (from the task process, or from Airflow's task instance at sealing), and a ``local``
store whose runs' tries ran on other machines says so in the record, the component log and doctor."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import msgspec
import pytest
import sqlalchemy as sa

from barecount_provider import cli, config
from barecount_provider.cli import evidence as cli_evidence
from barecount_provider.evidence import assemble as assemble_module
from barecount_provider.evidence import record as rec
from barecount_provider.evidence import store as store_module
from barecount_provider.evidence.facts import TryFacts
from barecount_provider.evidence.store import EvidenceStore, LocalBodies, records_table
from barecount_provider.runtime import entries as task_module
from barecount_provider.runtime import sealing as scheduler_module

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "evidence.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> EvidenceStore:
    store_module.clear_caches()
    return EvidenceStore(LocalBodies(str(tmp_path / "evidence")), f"sqlite:///{tmp_path / 'evidence' / 'index.db'}", "local")


@pytest.fixture(autouse=True)
def scheduler_host(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(assemble_module, "this_host", lambda: "sched")
    monkeypatch.setattr(assemble_module, "_WARNED", {})
    return "sched"


def _ctx(task_id: str, try_number: int = 1) -> dict[str, Any]:
    return {
        "tenant": "acme", "pipeline": "orders", "runner_class": "local", "size": "m", "network_profile": "public",
        "image_or_driver_digest": None, "dag_id": "orders", "run_id": "r1", "task_id": task_id,
        "try_number": try_number, "map_index": -1, "correlation_id": "c" * 32, "run_token": f"tok-{task_id}-{try_number}",
    }  # fmt: skip


def _entry(task_id: str, cost: float = 0.5, host: str | None = None) -> dict[str, Any]:
    return rec.build_entry(
        TryFacts(**_ctx(task_id), state="success", started_at=T0, ended_at=T0 + timedelta(seconds=3), host=host),
        cost={"runtime_hours": 0.001, "compute_usd": cost, "storage_usd": 0.0, "transfer_usd": 0.0, "total_usd": cost,
              "currency": "USD", "basis": "list-price estimate", "price_table": {"name": "aws-us-east-1-list", "version": "2026-11"}},
    )  # fmt: skip


def _rows(*tries: tuple[str, str | None]) -> list[dict[str, Any]]:
    return [
        {
            "task_id": task_id, "map_index": -1, "try_number": 1, "state": "success", "queued_dttm": T0,
            "start_date": T0, "end_date": T0 + timedelta(seconds=3), "pid": 1, "hostname": hostname,
        }
        for task_id, hostname in tries
    ]  # fmt: skip


def _run(run_id: str = "r1") -> assemble_module.PendingRun:
    return assemble_module.PendingRun(
        dag_id="orders", run_id=run_id, tenant="acme", pipeline="orders", state="success",
        started_at=T0, ended_at=T0 + timedelta(minutes=1),
    )  # fmt: skip


def _seal(store: EvidenceStore, rows: list[dict[str, Any]], run_id: str = "r1") -> dict[str, Any]:
    run = _run(run_id)
    record = assemble_module.assemble(
        store, run, assemble_module.expected_tries(rows), now=run.ended_at + timedelta(hours=1), grace=timedelta(seconds=60)
    )
    assert record is not None
    VALIDATOR.validate(record)
    return record


# ----------------------------------------------------------------------- absent entries: cost unknown


def test_absent_entries_make_the_cost_unknown_and_the_index_says_so(store: EvidenceStore) -> None:
    store.put_entry(_entry("t", cost=0.5, host="sched"))
    record = _seal(store, _rows(("t", "sched"), ("u", "sched")))  # u's entry never came
    assert record["absent"] == ["u#1"]
    cost = record["cost"]
    assert cost["complete"] is False  # was True with total 0.5: an absent try's cost counted as nothing
    assert cost["absent"] == ["u#1"] and cost["unknown"] == []  # in one list only
    assert cost["total_usd"] == 0.5  # the known part
    with store.index.engine.connect() as connection:
        assert connection.scalar(sa.select(records_table.c.cost_complete)) is False


def test_a_record_whose_every_entry_is_absent_never_claims_a_complete_zero() -> None:
    record = rec.build_record(
        dag_id="orders", run_id="r1", tenant="acme", pipeline="orders", state="success", started_at=T0, ended_at=T0,
        correlation_id=None, entries=[], absent=["t#1", "u#1"],
    )  # fmt: skip
    assert record["cost"]["total_usd"] == 0.0 and record["cost"]["complete"] is False
    assert record["cost"]["absent"] == ["t#1", "u#1"]


def test_an_absent_try_is_counted_once_as_unknown(store: EvidenceStore) -> None:
    store.put_entry(_entry("t", host="sched"))
    record = _seal(store, _rows(("t", "sched"), ("u", "sched")))
    assert cli_evidence._unknown_costs(record) == [("u#1", cli_reason())]
    from barecount_provider.api.queries import _unknown_tries

    unknown = list(_unknown_tries(store, since=None, until=None, tenant=None, dag_ids=None))
    assert len(unknown) == 1 and unknown[0][1] == cli_reason()


def cli_reason() -> str:
    from barecount_provider.api.queries import ABSENT_REASON

    return f"{ABSENT_REASON}: ended_without_entry"  # Airflow recorded no reason for u's missing entry


# ----------------------------------------------------------------------- the host of each try


def _facts(monkeypatch: pytest.MonkeyPatch, host: str | None, ti_hostname: str | None = None) -> TryFacts:
    monkeypatch.setattr(task_module, "this_host", lambda: host)
    ctx = SimpleNamespace(**_ctx("t"), metric_tags=lambda: {})
    ti = SimpleNamespace(task=None, queued_dttm=None, hostname=ti_hostname)
    return task_module.try_facts(
        ctx, ti, state="success", started_at=T0, ended_at=T0 + timedelta(seconds=2), duration_s=2.0,
        metrics={}, trace=None, error=None,
    )  # fmt: skip


def test_the_task_process_names_its_host_in_the_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    facts = _facts(monkeypatch, "worker-1")
    entry = task_module.entry_of(facts)
    assert entry["host"] == "worker-1"


def test_the_task_process_takes_the_host_the_task_sdk_set_on_its_task_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    facts = _facts(monkeypatch, "not-asked", ti_hostname="worker-3")  # RuntimeTaskInstance.hostname
    assert task_module.entry_of(facts)["host"] == "worker-3"


def test_an_entry_the_forwarder_builds_names_the_host_of_the_task(monkeypatch: pytest.MonkeyPatch) -> None:
    facts = json.loads(msgspec.json.encode(_facts(monkeypatch, "worker-2")))  # as read back from the spool
    written: list[dict[str, Any]] = []
    monkeypatch.setattr(task_module.evidence_spool, "write_entry", lambda entry: (written.append(entry), "stored")[1])
    assert task_module.deliver_entry(facts) == "stored"
    assert written[0]["host"] == "worker-2"


def test_this_host_asks_airflow_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import airflow.utils.net

    calls: list[int] = []
    monkeypatch.setattr(airflow.utils.net, "get_hostname", lambda: calls.append(1) or "w9")
    rec.this_host.cache_clear()
    try:
        assert [rec.this_host(), rec.this_host()] == ["w9", "w9"] and len(calls) == 1
    finally:
        rec.this_host.cache_clear()


def test_sealing_fills_the_host_from_airflows_task_instance(store: EvidenceStore) -> None:
    store.put_entry(_entry("t", host=None))  # written before hosts were recorded / host unknown to the task
    store.put_entry(_entry("v", host="sched"))
    record = _seal(store, _rows(("t", "sched"), ("u", "sched"), ("v", "other-name")))
    hosts = {entry["key"]: entry["host"] for entry in record["entries"]}
    assert hosts == {"t#1": "sched", "u#1": "sched", "v#1": "sched"}  # the task's own name is kept


def test_the_assembler_takes_the_hosts_from_the_rows_it_loads(store: EvidenceStore) -> None:
    rows = _rows(("t", "sched"))
    assembler = assemble_module.Assembler(lambda: store, lambda d, r: rows, lambda: 0)
    record = assembler.run_finished(_run())  # no rows given: loaded (the scheduler side's reader)
    assert record is not None and record["entries"][0]["host"] == "sched"


# ----------------------------------------------------------------------- the local store on several machines


def test_a_local_store_names_the_other_hosts_in_the_record_the_log_and_doctor(
    store: EvidenceStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=assemble_module.__name__)
    record = _seal(store, _rows(("t", "worker-1"), ("u", "worker-2")))  # both entries stranded on the workers
    (exception,) = record["policy"]["exceptions"]
    assert exception["rule"] == assemble_module.LOCAL_STORE_RULE and exception["tenant"] == "acme"
    assert exception["hosts"] == ["worker-1", "worker-2"] and exception["scheduler_host"] == "sched"
    assert "s3" in exception["fix"] and "forwarder" in exception["fix"]
    assemble_module._warn_hosts(store, _run(), exception)  # a second sealing attempt of the same run
    warned = [r for r in caplog.records if "local evidence store" in r.getMessage()]
    assert len(warned) == 1 and "worker-1, worker-2" in warned[0].getMessage()  # once per run
    count, latest = assemble_module.runs_on_several_hosts(store)
    assert count == 1 and latest is not None and latest["hosts"] == "worker-1,worker-2"


def test_one_other_host_is_enough(store: EvidenceStore) -> None:
    record = _seal(store, _rows(("t", "worker-1")))
    assert [e["rule"] for e in record["policy"]["exceptions"]] == [assemble_module.LOCAL_STORE_RULE]


def test_no_exception_when_every_try_ran_on_the_schedulers_machine(store: EvidenceStore) -> None:
    store.put_entry(_entry("t", host="sched"))
    record = _seal(store, _rows(("t", "sched"), ("u", None)))
    assert record["policy"]["exceptions"] == []
    assert assemble_module.runs_on_several_hosts(store) == (0, None)


def test_a_shared_store_is_never_flagged() -> None:
    hosts = ["worker-1", "worker-2", None]
    assert assemble_module.local_store_exception("s3", "acme", hosts, "sched") is None
    assert assemble_module.local_store_exception("local", "acme", hosts, "sched") is not None


def test_airflows_hostname_counts_even_where_the_entry_names_its_own(store: EvidenceStore) -> None:
    store.put_entry(_entry("t", host="sched"))
    record = _seal(store, _rows(("t", "worker-1")))
    assert record["entries"][0]["host"] == "sched"  # the task's own word is kept in the entry
    assert record["policy"]["exceptions"][0]["hosts"] == ["sched", "worker-1"]


def test_the_start_warning_names_the_hosts_other_than_this_one() -> None:
    assert scheduler_module.other_hosts({"sched", "worker-1"}, "sched") == ["worker-1"]
    assert scheduler_module.other_hosts({"sched"}, "sched") == []
    assert scheduler_module.other_hosts({"a", "b"}, None) == ["a", "b"]
    assert scheduler_module.other_hosts({"a"}, None) == []


def test_doctor_says_when_a_local_store_sealed_runs_from_other_machines(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(tmp_path / "evidence"))
    config.cache_clear()
    store_module.clear_caches()
    assert cli.main(["doctor"]) == 0
    assert "hosts: every sealed run's tries ran on this machine" in capsys.readouterr().out
    _seal(store_module.open_store(), _rows(("t", "worker-1"), ("u", "worker-2")))
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "hosts: WARNING: 1 run(s) sealed with tries from other machines" in out and "worker-1,worker-2" in out
