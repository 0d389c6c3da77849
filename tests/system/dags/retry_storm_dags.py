"""Two tenants whose tasks all fail with a transient error (a connection reset): `storm`'s retries stop at
its window budget, `calm`'s go on. Retries and backoff come from the policy (no retries set here)."""

from __future__ import annotations

from airflow.sdk import DAG, task


def _failing_dag(dag_id: str, tenant: str, tasks: int) -> DAG:
    with DAG(dag_id=dag_id, schedule=None, tags=[f"tenant:{tenant}", "pipeline:ingest"], max_active_tasks=4) as dag:
        for n in range(tasks):

            @task(task_id=f"load_{n}")
            def load() -> None:
                raise ConnectionResetError("upstream reset the connection")

            load()
    return dag


storm = _failing_dag("retry_storm", "storm", 6)
calm = _failing_dag("retry_calm", "calm", 2)
