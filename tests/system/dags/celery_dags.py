"""DAGs of the CeleryExecutor system test (tests/system/test_celery_real_run.py), whose two workers each serve
the default queue and a queue of their own (``worker_a``, ``worker_b``): tasks given one of those queues run on
that worker, the others on whichever worker takes them first.

* ``celery_fan_out``: one task on each worker's queue around 30 mapped tasks on the default queue.
* ``celery_retry_budget``: tenant ``storm`` (3 retries an hour across all its tasks, tests/system/policy.yaml),
  six tasks that fail with a transient error, three on each worker: the budget is counted in the shared index.
* ``celery_lost_worker``: a quick task on ``worker_a`` and a long sleep on ``worker_b``, whose worker the test
  kills with ``kill -9``; no retries, so that the try Airflow fails after its heartbeat timeout stays failed.
"""

from __future__ import annotations

import datetime
import time

from airflow.sdk import DAG, task

QUEUE_A, QUEUE_B = "worker_a", "worker_b"
START = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)

with DAG(
    dag_id="celery_fan_out",
    schedule=None,
    start_date=START,
    tags=["tenant:acme", "pipeline:fanout"],
    max_active_tasks=16,
):

    @task(queue=QUEUE_A)
    def split() -> list[int]:
        return list(range(30))

    @task
    def work(part: int) -> int:
        return part * part

    @task(queue=QUEUE_B)
    def gather(results: list[int]) -> int:
        return sum(results)

    gather(work.expand(part=split()))


with DAG(
    dag_id="celery_retry_budget",
    schedule=None,
    start_date=START,
    tags=["tenant:storm", "pipeline:ingest"],
    max_active_tasks=6,
):
    for n in range(6):

        @task(task_id=f"load_{n}", queue=(QUEUE_A, QUEUE_B)[n % 2])
        def load() -> None:
            raise ConnectionResetError("upstream reset the connection")

        load()


with DAG(
    dag_id="celery_lost_worker",
    schedule=None,
    start_date=START,
    tags=["tenant:acme", "pipeline:lost"],
    default_args={"retries": 0},
):

    @task(queue=QUEUE_A)
    def steady() -> str:
        return "done"

    @task(queue=QUEUE_B)
    def long_sleep() -> None:
        print("long_sleep: sleeping", flush=True)
        time.sleep(900)

    steady()
    long_sleep()
