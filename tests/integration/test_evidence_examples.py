"""The example DAGs without a cloud runner, run by dag.test(): each try writes its entry and the sealed record
is valid and complete; a DAG that opted out of BareCount leaves no evidence at all."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from barecount_provider.evidence import store as evidence_store
from barecount_provider.runtime import sealing as evidence

from .conftest import example_dag

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "docs" / "evidence.schema.json").read_text())



@pytest.mark.parametrize(("name", "tenant"), [("example_zero_code", "acme"), ("example_params_tenant", None)])
def test_example_dag_produces_a_valid_complete_record(
    airflow_db: None, evidence_dir: Path, name: str, tenant: str | None
) -> None:
    dag = example_dag(name)
    run = dag.test()
    record = evidence.seal_run(dag.dag_id, run.run_id, grace_seconds=0)
    assert record is not None
    jsonschema.Draft202012Validator(SCHEMA).validate(record)
    assert record["complete"] is True and record["absent"] == []
    assert record["state"] == run.state
    assert {entry["context"]["task_id"] for entry in record["entries"]} == {
        ti.task_id for ti in run.get_task_instances()
    }
    if tenant:
        assert record["tenant"] == tenant
    assert all(entry["context"]["runner_class"] == "local" for entry in record["entries"])
    assert evidence_store.open_store().verify(record["tenant"]) == {record["tenant"]: []}


def test_an_opted_out_dag_leaves_no_evidence(airflow_db: None, evidence_dir: Path) -> None:
    dag = example_dag("example_opt_out")
    run = dag.test()
    assert evidence_store.open_store().entries_for_run(dag.dag_id, run.run_id) == []
