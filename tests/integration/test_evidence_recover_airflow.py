"""A starting scheduler looks for runs left unsealed (runtime/sealing.py ``recover``): a run that ended just
before, whose entries were still in the spool of a forwarder killed with the old scheduler, has no entry when
the new scheduler starts. It is looked at again when its grace period ends and sealed from the entries the new
forwarder brought meanwhile; a run with no entry by then is left alone (BareCount did not see it)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from barecount_provider import config
from barecount_provider.evidence import spool as evidence_spool
from barecount_provider.evidence.store import RecordFilter
from barecount_provider.runtime import sealing as evidence

from .conftest import example_dag

pytestmark = pytest.mark.integration




def _use_store(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    from barecount_provider.runtime.scheduler_side import get_scheduler_side

    assert get_scheduler_side().drain()  # the runs that ended are sealed into the store they ran with
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(directory))
    config.cache_clear()
    evidence.clear_caches()
    evidence_spool.clear_caches()  # the task side's store (dag.test runs the tries in this process)


def test_a_run_whose_entries_come_after_the_start_is_sealed_when_its_grace_period_ends(
    airflow_db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dag = example_dag("example_zero_code")
    _use_store(monkeypatch, tmp_path / "here")
    first = dag.test()  # sealed here as it ended: the index knows since when BareCount seals runs
    _use_store(monkeypatch, tmp_path / "spool")  # the next runs' entries are elsewhere for now
    late, unseen = dag.test(), dag.test()
    entries = evidence._store().entries_for_run(dag.dag_id, late.run_id)
    assert entries
    _use_store(monkeypatch, tmp_path / "here")
    assert _sealed() == {first.run_id: True}
    grace = timedelta(seconds=config.evidence_grace_seconds())
    start = max(late.end_date, unseen.end_date) + timedelta(seconds=1)  # the new scheduler starts

    queued = evidence.recover(now=start)
    assert (dag.dag_id, late.run_id) not in queued and (dag.dag_id, unseen.run_id) not in queued
    for entry in entries:  # the new forwarder's first round
        evidence._store().put_entry(entry)
    evidence.tick(now=start)
    assert _sealed() == {first.run_id: True}  # not looked at again before its grace period ends

    evidence.tick(now=max(late.end_date, unseen.end_date) + grace + timedelta(seconds=1))
    assert _sealed() == {first.run_id: True, late.run_id: True}  # unseen: no entry, left alone
    assert evidence.recover(now=start + 2 * grace, only=[(dag.dag_id, unseen.run_id)]) == []
    evidence.clear_caches()


def _sealed() -> dict[str, bool]:
    """run_id -> complete, of every record in the store."""
    rows, _ = evidence._store().list_records(RecordFilter())
    return {row["run_id"]: row["complete"] for row in rows}
