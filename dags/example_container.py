"""The container runner class: run tenant acme's `orders` transform as a Kubernetes pod of size s, then read
what it recorded (the ``runner_result`` XCom) downstream.

Needs a Kubernetes cluster (a kube config file, or the connection ``kubernetes_default``): it carries the tag
``needs-k8s`` so that the demo, which has no cluster, skips it. Parsing it needs nothing. The integration
tests build the same DAG with ``build_dag(config_file=...)`` against a fake Kubernetes API on loopback.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from barecount_provider.operators.kubernetes import KubernetesRunnerOperator

DAG_ID = "example_container"
NEEDS_K8S_TAG = "needs-k8s"


def build_dag(
    kubernetes_conn_id: str | None = "kubernetes_default",
    config_file: str | None = None,
    namespace: str = "default",
    size: str = "s",
    image: str = "python:3.11-slim",
    env_vars: dict[str, str] | None = None,
    get_logs: bool = True,
) -> DAG:
    with DAG(
        dag_id=DAG_ID,
        start_date=datetime(2026, 1, 1),
        schedule=None,
        catchup=False,
        tags=["example", NEEDS_K8S_TAG, "tenant:acme", "pipeline:orders"],
    ) as dag:
        transform = KubernetesRunnerOperator(
            task_id="transform",
            tenant="acme",
            pipeline="orders",
            size=size,  # requests and limits from the policy's size table
            network_profile="public",
            image=image,
            cmds=["python", "-c"],
            arguments=["import os; print('orders for', os.environ['BARECOUNT_CORRELATION_ID'])"],
            env_vars={"ORDERS_DAY": "{{ dag_run.run_after | ds }}", **(env_vars or {})},
            namespace=namespace,
            kubernetes_conn_id=kubernetes_conn_id,
            config_file=config_file,
            in_cluster=False if config_file else None,
            get_logs=get_logs,
            retries=0,
        )

        @task
        def report(ti: Any = None) -> dict[str, Any]:
            result = ti.xcom_pull(task_ids="transform", key="runner_result")
            print(
                f"transform ran on {result['runner_class']} size {result['size']} "
                f"(node {result['details'].get('node_name')}, image {result['digests'].get('image_digest')}): "
                f"{result['timings'].get('duration_s')} s, pod {result['external_run_id']}"
            )
            return {"external_run_id": result["external_run_id"], "error": result["error"]}

        transform >> report()
    return dag


dag = build_dag()
