"""Hosts from Airflow's own records: a dag.test() run's entries name this machine, and when Airflow's task
instances say another machine ran a try, the ``local`` store's record, the start warning and the hosts
loaded at sealing all name it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from barecount_provider.evidence import assemble as assemble_module
from barecount_provider.evidence.record import this_host
from barecount_provider.evidence.store import EvidenceStore, LocalBodies
from barecount_provider.runtime import sealing as evidence

from .conftest import example_dag

pytestmark = pytest.mark.integration




def test_hosts_come_from_the_task_and_from_airflows_task_instances(
    airflow_db: None, evidence_dir: Path, tmp_path: Path
) -> None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import update

    dag = example_dag("example_zero_code")
    run = dag.test()
    record = evidence.seal_run(dag.dag_id, run.run_id, grace_seconds=0)
    assert record is not None and this_host()
    ran = [entry for entry in record["entries"] if entry["state"] not in ("skipped", "upstream_failed")]
    assert ran and {entry["host"] for entry in ran} == {this_host()}
    assert all(
        entry["host"] is None for entry in record["entries"] if entry not in ran
    )  # never reached a worker
    assert record["policy"]["exceptions"] == []

    run = dag.test()  # a second run, whose first task Airflow says ran on another machine
    task_id = sorted(ti.task_id for ti in run.get_task_instances())[0]
    with create_session() as session:
        session.execute(
            update(TaskInstance)
            .where(
                TaskInstance.dag_id == dag.dag_id,
                TaskInstance.run_id == run.run_id,
                TaskInstance.task_id == task_id,
            )
            .values(hostname="worker-elsewhere")
        )
    from barecount_provider.runtime.dag_runs import load_tries

    rows = load_tries(dag.dag_id, run.run_id)  # each try with Airflow's host
    assert {(row["task_id"], row["try_number"]): row["hostname"] for row in rows}[(task_id, 1)] == "worker-elsewhere"
    # the run was sealed as it ended (dag.test's listener): seal it again into a fresh store with its entries
    fresh = EvidenceStore(
        LocalBodies(str(tmp_path / "fresh")), f"sqlite:///{tmp_path / 'fresh' / 'index.db'}", "local"
    )
    for entry in evidence._store().entries_for_run(dag.dag_id, run.run_id):
        fresh.put_entry(entry)
    pending = assemble_module.PendingRun(
        dag_id=dag.dag_id, run_id=run.run_id, tenant="acme", pipeline="orders", state="success",
        started_at=run.start_date, ended_at=run.end_date,
    )  # fmt: skip
    record = assemble_module.assemble(
        fresh, pending, assemble_module.expected_tries(rows), now=run.end_date, grace=timedelta(0)
    )
    assert record is not None
    (exception,) = record["policy"]["exceptions"]
    assert exception["rule"] == assemble_module.LOCAL_STORE_RULE
    assert exception["hosts"] == sorted({this_host(), "worker-elsewhere"})
    assert "worker-elsewhere" in evidence.warn_hosts_at_start()  # the start warning, from Airflow's records
    assert this_host() not in evidence.warn_hosts_at_start()
