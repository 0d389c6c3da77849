"""dags/example_recovery.py by dag.test(): failed records go to the embedded DLQ with one call, a dry run
plans their replay, the policy lets a small replay through without an approval, and the replay delivers each
record once; a second run re-delivers nothing of the first. The replay's outcome is in its evidence entry."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from barecount_provider import config
from barecount_provider.runtime import sealing as evidence

pytestmark = pytest.mark.integration

DAGS = Path(__file__).resolve().parents[2] / "dags"


def _dag() -> Any:
    spec = importlib.util.spec_from_file_location("barecount_example_recovery", DAGS / "example_recovery.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def _xcom(run_id: str, task_id: str, key: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=run_id, key=key, dag_ids="example_recovery", task_ids=task_id)).first()
        return XComModel.deserialize_value(row) if row is not None else None


def test_failed_records_are_replayed_once_each(airflow_db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(tmp_path / "evidence"))
    config.cache_clear()
    dag = _dag()
    first = dag.test()
    assert first.state == "success", [(ti.task_id, ti.state) for ti in first.get_task_instances()]
    plan = _xcom(first.run_id, "plan", "replay_plan")
    assert plan["records"] == 4 and plan["needs_approval"] is False
    assert _xcom(first.run_id, "approve", "replay_approval")["decision"] == "not required"
    outcome = _xcom(first.run_id, "replay", "replay_outcome")
    assert outcome["delivered"] == 4 and outcome.get("failed", 0) == 0

    second = dag.test()  # four new failed records; the first run's four are not delivered again
    assert second.state == "success"
    assert _xcom(second.run_id, "replay", "replay_outcome")["delivered"] == 4
    loaded = [line for line in capsys.readouterr().out.splitlines() if line.startswith("loaded order")]
    assert len(loaded) == len(set(loaded)) == 8

    record = evidence.seal_run("example_recovery", first.run_id, grace_seconds=0)
    assert record is not None
    (replay_entry,) = [e for e in record["entries"] if e["context"]["task_id"] == "replay"]
    assert replay_entry["replay"]["delivered"] == 4
