"""Nothing lost when a component stops: the run's type and the tries' queued times reach the record, and runs
waiting to be sealed are sealed from what is stored after a stop, a crash or a restart."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest

from barecount_provider.evidence import assemble as assemble_module
from barecount_provider.evidence import record as rec
from barecount_provider.evidence import store as store_module
from barecount_provider.evidence.store import EvidenceStore, LocalBodies

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "evidence.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> EvidenceStore:
    store_module.clear_caches()
    return EvidenceStore(LocalBodies(str(tmp_path / "evidence")), f"sqlite:///{tmp_path / 'evidence' / 'index.db'}", "local")


def _ctx(task_id: str, run_id: str = "r1", try_number: int = 1) -> dict[str, Any]:
    return {
        "tenant": "acme", "pipeline": "orders", "runner_class": "local", "size": "m", "network_profile": None,
        "image_or_driver_digest": None, "dag_id": "orders", "run_id": run_id, "task_id": task_id,
        "try_number": try_number, "map_index": -1, "correlation_id": "c" * 32, "run_token": f"tok-{task_id}-{run_id}",
    }


def _task_entry(task_id: str, run_id: str = "r1") -> dict[str, Any]:
    """An entry as a task process (or the forwarder, from its facts) writes it on Airflow 3.3: no queued time."""
    return rec.build_entry(
        _ctx(task_id, run_id), state="success", source="task", started_at=T0 + timedelta(seconds=2),
        ended_at=T0 + timedelta(seconds=5),
    )


def _rows(*task_ids: str, run_id: str = "r1") -> list[dict[str, Any]]:
    return [
        {
            "dag_id": "orders", "run_id": run_id, "task_id": task_id, "map_index": -1, "try_number": 1,
            "state": "success", "queued_dttm": T0 + timedelta(seconds=1), "start_date": T0 + timedelta(seconds=2),
            "end_date": T0 + timedelta(seconds=5), "pid": 1, "latest": True,
        }
        for task_id in task_ids
    ]


def _pending(run_id: str = "r1", run_type: str | None = None) -> assemble_module.PendingRun:
    return assemble_module.PendingRun(
        dag_id="orders", run_id=run_id, tenant="acme", pipeline="orders", state="success", started_at=T0,
        ended_at=T0 + timedelta(seconds=6), run_type=run_type,
    )


# ------------------------------------------------------------------------------ run_type and queued_at


def test_entries_written_without_a_queued_time_get_it_from_airflows_records(store: EvidenceStore) -> None:
    store.put_entry(_task_entry("t"))
    store.put_entry(_task_entry("u"))
    record = assemble_module.assemble(
        store, _pending(), assemble_module.expected_tries(_rows("t", "u")), now=T0 + timedelta(seconds=7),
        grace=timedelta(seconds=60),
    )
    assert record is not None
    VALIDATOR.validate(record)
    queued = {entry["key"]: entry["timings"]["queued_at"] for entry in record["entries"]}
    assert queued == {"t#1": (T0 + timedelta(seconds=1)).isoformat(), "u#1": (T0 + timedelta(seconds=1)).isoformat()}
    assert all(entry["source"] == "task" for entry in record["entries"])


def test_the_scheduler_side_seals_a_finished_run_with_its_run_type(monkeypatch: pytest.MonkeyPatch, store: EvidenceStore) -> None:
    from airflow.utils.types import DagRunType

    from barecount_provider.runtime import scheduler_side
    from barecount_provider.runtime import sealing as evidence

    side = scheduler_side.SchedulerSide()
    monkeypatch.setattr(scheduler_side, "get_scheduler_side", lambda: side)
    monkeypatch.setattr(side, "tenant_of", lambda dag_id, dag=None, conf_keys=frozenset(), force=False: ("acme", "orders"))
    monkeypatch.setattr(side, "opted_out", lambda dag_id: False)
    monkeypatch.setattr(scheduler_side, "load_tries", lambda dag_id, run_id: _rows("t"))
    monkeypatch.setattr(side, "_emit_spans", lambda *args: None)
    emitter = SimpleNamespace(emit=lambda points: None, report_failures=lambda: None, flush=lambda *a: None, describe=dict)
    monkeypatch.setattr(scheduler_side, "get_emitter", lambda: emitter)
    monkeypatch.setenv("AIRFLOW__BARECOUNT__FILE_SINK_ON", "False")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_ON", "True")
    evidence.clear_caches()
    monkeypatch.setattr(evidence, "_store", lambda: store)
    monkeypatch.setattr(evidence, "get_assembler", lambda: assemble_module.Assembler(lambda: store, scheduler_side.load_tries, lambda: 60))
    store.put_entry(_task_entry("t"))
    dag_run = SimpleNamespace(
        dag_id="orders", run_id="r1", state="success", start_date=T0, end_date=T0 + timedelta(seconds=6),
        queued_at=T0, dag=None, conf={}, run_type=DagRunType.MANUAL,
    )
    side.dag_run_finished(dag_run)
    assert side.drain(timeout_s=10)
    record = store.get(rec.record_id_for("orders", "r1"))
    assert record is not None and record["run_type"] == "manual"
    assert record["entries"][0]["timings"]["queued_at"] is not None


# ------------------------------------------------------------------------------------ pending runs kept


def test_a_run_not_sealed_at_once_is_kept_in_the_store_until_sealed(store: EvidenceStore) -> None:
    """A scheduler that stops (or dies) leaves its waiting runs in the pending table, not only in memory;
    the run is removed from it once sealed."""
    now = datetime.now(UTC)
    loads = lambda dag_id, run_id: _rows("t", "u")  # noqa: E731
    run = assemble_module.PendingRun(
        dag_id="orders", run_id="r1", tenant="acme", pipeline="orders", state="success", started_at=now, ended_at=now
    )
    store.put_entry(_task_entry("t"))
    first = assemble_module.Assembler(lambda: store, loads, lambda: 3600)
    assert first.run_finished(run) is None  # "u" has not written its entry, the grace period runs
    assert assemble_module.stored_pending(store) == [("orders", "r1")]
    # the scheduler is gone (its Assembler with it); a new one finds the run in the store
    store.put_entry(_task_entry("u"))
    second = assemble_module.Assembler(lambda: store, loads, lambda: 3600)
    (dag_id, run_id), = assemble_module.stored_pending(store)
    resumed = assemble_module.PendingRun(
        dag_id=dag_id, run_id=run_id, tenant="acme", pipeline="orders", state="success", started_at=now, ended_at=now,
        remembered=True,
    )
    record = second.run_finished(resumed)
    assert record is not None and record["complete"] is True
    assert assemble_module.stored_pending(store) == []


def test_a_run_sealed_at_once_is_never_written_to_the_pending_table(store: EvidenceStore) -> None:
    store.put_entry(_task_entry("t"))
    assembler = assemble_module.Assembler(lambda: store, lambda d, r: _rows("t"), lambda: 3600)
    assert assembler.run_finished(_pending()) is not None
    assert assemble_module.stored_pending(store) == []


def test_a_stopping_scheduler_seals_the_runs_whose_entries_came_in_time(monkeypatch: pytest.MonkeyPatch, store: EvidenceStore) -> None:
    """The last handed-off entries reach the store during the stop (the forwarder's last round): the stop
    seals the run then, instead of leaving it for the next start."""
    from barecount_provider.runtime import scheduler_side
    from barecount_provider.runtime import sealing as evidence

    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_ON", "True")
    side = scheduler_side.SchedulerSide()
    side._prepared = True
    now = datetime.now(UTC)
    assembler = assemble_module.Assembler(lambda: store, lambda dag_id, run_id: _rows("t", "u"), lambda: 3600)
    monkeypatch.setattr(evidence, "get_assembler", lambda: assembler)
    monkeypatch.setattr(scheduler_side, "get_scheduler_side", lambda: side)
    store.put_entry(_task_entry("t"))
    run = assemble_module.PendingRun(
        dag_id="orders", run_id="r1", tenant="acme", pipeline="orders", state="success", started_at=now, ended_at=now
    )
    side.submit(lambda: assembler.run_finished(run))  # the run's end, taken by the worker: "u" is missing
    assert side.drain(timeout_s=10) and list(assembler.pending) == [("orders", "r1")]

    class LastRound:  # the forwarder's last round delivers "u"'s handed-off entry
        def withdraw(self) -> None:
            pass

        def stop(self, timeout_s: float | None = None) -> int:
            store.put_entry(_task_entry("u"))
            return 0

    side._forwarder = LastRound()
    side.stop()
    assert assembler.pending == {}
    record = store.get(rec.record_id_for("orders", "r1"))
    assert record is not None and record["complete"] is True
    assert assemble_module.stored_pending(store) == []


def test_a_failed_look_for_runs_left_unsealed_is_tried_again_at_every_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    """The look for runs left unsealed runs once at start; when it fails (the metadata database locked, say)
    it is tried again at the next tick instead of waiting for the next start, and only until it works."""
    from barecount_provider.runtime import scheduler_side
    from barecount_provider.runtime import sealing as evidence

    calls: list[str] = []

    def recover() -> list[tuple[str, str]]:
        calls.append("recover")
        if len(calls) == 1:
            raise RuntimeError("database is locked")
        return []

    side = scheduler_side.SchedulerSide()
    monkeypatch.setattr(evidence, "recover", recover)
    monkeypatch.setattr(evidence, "tick", lambda: [])
    monkeypatch.setattr(side, "check_forwarder", lambda: False)
    from barecount_provider.selfmetrics import EmitFailures

    failures = EmitFailures()  # this test's own: no other test's thread reports these
    monkeypatch.setattr(scheduler_side, "EMIT_FAILURES", failures)
    side._recover_evidence()
    assert failures.counts[("evidence", "recover")] == 1  # counted, never raised
    side._evidence_tick()
    side._evidence_tick()
    assert calls == ["recover", "recover"]
