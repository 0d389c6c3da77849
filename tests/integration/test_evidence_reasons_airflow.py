"""Reasons from Airflow's own records: Airflow's scheduler code (SchedulerJobRunner's heartbeat check and its
processing of executor events) fails a try whose heartbeat stopped, in a real metadata database, and the
record sealed from that database gives the try's reason, its state and an unknown cost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from barecount_provider.evidence import assemble as assemble_module
from barecount_provider.evidence.store import EvidenceStore, LocalBodies
from barecount_provider.runtime import sealing as evidence

from .conftest import example_dag

pytestmark = pytest.mark.integration

DAG_ID = "example_zero_code"
LOST = "extract"  # a try that ran and succeeded under dag.test(): it is made the one whose worker was lost


def _lose_the_worker_of(run_id: str, task_id: str) -> None:
    """What Airflow's scheduler does to a running try whose worker died: its heartbeat check fails it (the
    `heartbeat timeout` event), its executor reports it failed, and the processing of that report fails the
    try (the `state mismatch` event, then handle_failure). Airflow's own code, in its own database."""
    from airflow.callbacks.database_callback_sink import DatabaseCallbackSink
    from airflow.executors.local_executor import LocalExecutor
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.dagbag import DBDagBag
    from airflow.models.db_callback_request import DbCallbackRequest
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import delete, update

    executor = LocalExecutor()
    executor.callback_sink = (
        DatabaseCallbackSink()
    )  # as the scheduler sets it: failure callbacks for the dag-processor
    job = Job()
    runner = SchedulerJobRunner(job=job, executors=[executor])
    with create_session() as session:
        session.add(job)
        session.flush()
        # the try as it stands when its worker is killed: running, its last heartbeat long ago
        session.execute(
            update(TaskInstance)
            .where(
                TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == run_id, TaskInstance.task_id == task_id
            )
            .values(
                state=TaskInstanceState.RUNNING,
                end_date=None,
                queued_by_job_id=job.id,
                last_heartbeat_at=datetime.now(UTC) - timedelta(hours=1),
            )
        )
    runner._find_and_purge_task_instances_without_heartbeats()
    assert executor.event_buffer, "Airflow's heartbeat check did not fail the try"
    with create_session() as session:
        SchedulerJobRunner.process_executor_events(executor, job.id, DBDagBag(), session)
        session.execute(delete(DbCallbackRequest))  # no dag-processor here to run the failure callbacks


def test_a_try_airflow_failed_for_its_heartbeat_is_sealed_with_that_reason(
    airflow_db: None, evidence_dir: Path, tmp_path: Path
) -> None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    run = example_dag(DAG_ID).test()
    _lose_the_worker_of(run.run_id, LOST)
    with create_session() as session:
        state = session.scalar(
            select(TaskInstance.state).where(
                TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == run.run_id, TaskInstance.task_id == LOST
            )
        )
    assert (
        state == "up_for_retry"
    )  # the DAG's tasks have a retry: Airflow keeps the lost try as failed in its history
    events = evidence.load_try_events(DAG_ID, run.run_id)
    assert [event.event for event in events[(LOST, -1, 1)]] == ["heartbeat timeout", "state mismatch"]
    assert list(events) == [(LOST, -1, 1)]

    # the lost try's own entry never came (its task process died with its worker): a store with the others'
    fresh = EvidenceStore(
        LocalBodies(str(tmp_path / "fresh")), f"sqlite:///{tmp_path / 'fresh' / 'index.db'}", "local"
    )
    for entry in evidence._store().entries_for_run(DAG_ID, run.run_id):
        if entry["key"] != f"{LOST}#1":
            fresh.put_entry(entry)
    from barecount_provider.runtime.dag_runs import load_tries

    assembler = assemble_module.Assembler(
        lambda: fresh, load_tries, lambda: 0, load_events=evidence.load_try_events
    )
    pending = assemble_module.PendingRun(
        dag_id=DAG_ID, run_id=run.run_id, tenant="acme", pipeline="orders", state="failed",
        started_at=run.start_date, ended_at=run.end_date,
    )  # fmt: skip
    record = assembler.run_finished(pending)
    assert record is not None and record["absent"] == [f"{LOST}#1"]
    lost = {entry["key"]: entry for entry in record["entries"]}[f"{LOST}#1"]
    assert (lost["source"], lost["state"], lost["absent"]) == ("airflow", "failed", True)
    assert (lost["reason"]["code"], lost["reason"]["airflow_event"]) == (
        "heartbeat_timeout",
        "heartbeat timeout",
    )
    assert "Task did not emit heartbeat within time limit" in lost["reason"]["detail"]
    assert record["cost"]["complete"] is False and record["cost"]["absent"] == [f"{LOST}#1"]
