"""GlueRunnerOperator and EmrServerlessRunnerOperator against moto in server mode on 127.0.0.1, run by
``dag.test()`` on dags/example_managed_etl.py (a real task context, the real upstream Glue and EMR Serverless
operators, hooks and waiters, boto3, real HTTP).

moto 5.2.5's Glue runs never fail and report ExecutionTime 123 with no DPUSeconds or ExecutionClass; its EMR
Serverless jobs start at SUCCESS with zero utilisation, and its create-application operator waits for a state
moto never shows, so the application is created with boto3. Failure paths and the fields moto lacks are
covered on fixtures in tests/unit/test_glue.py and tests/unit/test_emr_serverless.py.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from barecount_provider import context

from ..conftest import PolicyFile
from .conftest import MOTO_CONN_ID, MotoServer

pytestmark = pytest.mark.integration

GLUE_JOB = "barecount-orders-transform"
ACCOUNT_ID = "123456789012"  # moto's default account: EMR Serverless refuses cross-account roles


@pytest.fixture(scope="module")
def managed_etl_resources(moto_server: MotoServer) -> dict[str, str]:
    """A Glue job, an EMR Serverless application (boto3: the upstream create operator would wait forever
    on moto) and the roles they run as."""
    trust = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "glue.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
    )
    iam = moto_server.client("iam")
    glue_role = iam.create_role(RoleName="barecount-glue", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
    emr_role = iam.create_role(RoleName="barecount-emr-job", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
    moto_server.client("glue").create_job(
        Name=GLUE_JOB,
        Role=glue_role,
        Command={
            "Name": "glueetl",
            "ScriptLocation": "s3://barecount-code/transform.py",
            "PythonVersion": "3",
        },
        GlueVersion="4.0",
        WorkerType="G.1X",
        NumberOfWorkers=2,
    )
    application_id = moto_server.client("emr-serverless").create_application(
        name="barecount-orders", releaseLabel="emr-7.2.0", type="SPARK"
    )["applicationId"]
    return {"application_id": application_id, "execution_role_arn": emr_role}


@pytest.fixture
def acme_policy(policy_file: PolicyFile) -> None:
    policy_file("version: 1\ntenants:\n  acme:\n    max_size: s\n")


@pytest.fixture
def glue_runs_through_running(moto_server: MotoServer) -> Iterator[None]:
    """moto's state manager: a Glue run moves STARTING -> RUNNING -> SUCCEEDED one step per GetJobRun."""
    moto_server.api(
        "POST",
        "state-manager/set-transition",
        {"model_name": "glue::job_run", "transition": {"progression": "manual", "times": 1}},
    )
    yield
    moto_server.api("POST", "state-manager/unset-transition", {"model_name": "glue::job_run"})


def _body(request: dict[str, Any]) -> dict[str, Any]:
    body = base64.b64decode(request["body"]) if request.get("body_encoded") else request["body"].encode()
    return json.loads(body)


def _glue_requests(moto_server: MotoServer, action: str) -> list[dict[str, Any]]:
    return [
        request
        for request in moto_server.recorded_requests()
        if {key.lower(): value for key, value in request["headers"].items()}.get("x-amz-target")
        == f"AWSGlue.{action}"
    ]


def _emr_start_requests(moto_server: MotoServer, application_id: str) -> list[dict[str, Any]]:
    return [
        request
        for request in moto_server.recorded_requests()
        if request["url"].rstrip("/").endswith(f"/applications/{application_id}/jobruns")
        and request["method"] == "POST"
    ]


def _example_module() -> Any:
    path = Path(__file__).resolve().parents[2] / "dags" / "example_managed_etl.py"
    spec = importlib.util.spec_from_file_location("barecount_example_managed_etl", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_example(resources: dict[str, str], size: str) -> tuple[Any, dict[str, Any]]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag = _example_module().build_dag(
        aws_conn_id=MOTO_CONN_ID,
        glue_job_name=GLUE_JOB,
        emr_application_id=resources["application_id"],
        execution_role_arn=resources["execution_role_arn"],
        size=size,
        poll_interval_s=0.2,
    )
    run = dag.test()
    results: dict[str, Any] = {}
    with create_session() as session:
        for task_id in ("transform", "aggregate"):
            row = session.scalars(
                XComModel.get_many(
                    run_id=run.run_id, key="runner_result", dag_ids=dag.dag_id, task_ids=task_id
                )
            ).first()
            results[task_id] = XComModel.deserialize_value(row) if row is not None else None
    return run, results


def test_managed_etl_runners_carry_identity_and_record_runner_results(
    moto_server: MotoServer,
    airflow_db: None,
    managed_etl_resources: dict[str, str],
    acme_policy: None,
    glue_runs_through_running: None,
) -> None:
    moto_server.start_recording()
    run, results = _run_example(managed_etl_resources, "s")
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    correlation_id = context.correlation_id_for("example_managed_etl", run.run_id)

    # Glue: the size's capacity per run, the identity as job arguments, on the request moto received
    (start,) = _glue_requests(moto_server, "StartJobRun")
    request = _body(start)
    assert (request["JobName"], request["WorkerType"], request["NumberOfWorkers"]) == (GLUE_JOB, "G.1X", 2)
    arguments = request["Arguments"]
    assert arguments["--day"]  # the author's, templated
    assert arguments["--barecount_correlation_id"] == correlation_id
    assert arguments["--barecount_run_token"] == context.run_token_for(
        "example_managed_etl", run.run_id, "transform", -1, 1
    )
    assert arguments["--traceparent"].startswith("00-")
    assert len(_glue_requests(moto_server, "GetJobRun")) >= 3  # polled through RUNNING by the upstream hook
    assert _glue_requests(moto_server, "UpdateJob") == []  # the job itself is never modified

    glue = results["transform"]
    assert glue is not None
    assert (glue["runner_class"], glue["size"], glue["tenant"], glue["pipeline"]) == (
        "managed_etl",
        "s",
        "acme",
        "orders",
    )
    assert glue["resources_requested"] == {"worker_type": "G.1X", "number_of_workers": 2, "auto_scaling": False}
    assert (
        glue["resources_used"]["worker_type"] == "G.1X" and glue["resources_used"]["number_of_workers"] == 2
    )
    assert glue["timings"]["duration_s"] == 123  # moto's constant ExecutionTime
    assert glue["billing_inputs"]["dpu_seconds"] == 246.0
    assert glue["field_sources"]["billing_inputs.dpu_seconds"].startswith("derived:")
    assert glue["billing_inputs"]["execution_class"] is None
    assert glue["field_sources"]["billing_inputs.execution_class"].startswith("not reported by Glue")
    assert glue["driver_version"] == "0.9"  # moto's constant GlueVersion
    assert glue["external_run_id"].startswith("jr_")
    assert f"/job/{GLUE_JOB}/run/{glue['external_run_id']}" in glue["console_link"]
    assert glue["error"] is None

    # EMR Serverless: the identity in the Spark submit parameters, after the author's
    application_id = managed_etl_resources["application_id"]
    (emr_start,) = _emr_start_requests(moto_server, application_id)
    parameters = shlex.split(_body(emr_start)["jobDriver"]["sparkSubmit"]["sparkSubmitParameters"])
    assert parameters[:2] == ["--conf", "spark.executor.cores=4"]
    assert f"spark.executorEnv.BARECOUNT_CORRELATION_ID={correlation_id}" in parameters
    assert f"spark.emr-serverless.driverEnv.BARECOUNT_CORRELATION_ID={correlation_id}" in parameters
    run_token = context.run_token_for("example_managed_etl", run.run_id, "aggregate", -1, 1)
    assert f"spark.emr-serverless.driverEnv.BARECOUNT_RUN_TOKEN={run_token}" in parameters

    emr = results["aggregate"]
    assert emr is not None
    assert emr["driver_version"] == "emr-7.2.0"
    assert emr["external_run_id"] and emr["details"]["state"] == "SUCCESS"
    assert emr["billing_inputs"]["billed_vcpu_hours"] == 0.0  # moto: zero utilisation
    assert emr["field_sources"]["resources_used.total_vcpu_hours"].startswith(
        "not reported by EMR Serverless"
    )
    assert emr["resources_requested"]["initial_workers"] == 2
    assert emr["error"] is None


def test_policy_cap_fails_the_glue_task_before_starting_a_run(
    moto_server: MotoServer, airflow_db: None, managed_etl_resources: dict[str, str], acme_policy: None
) -> None:
    moto_server.start_recording()
    run, results = _run_example(managed_etl_resources, "l")  # acme's max_size is s
    assert run.state == "failed"
    assert _glue_requests(moto_server, "StartJobRun") == []
    assert _emr_start_requests(moto_server, managed_etl_resources["application_id"]) == []
    assert results == {"transform": None, "aggregate": None}
    ti = run.get_task_instance("transform")
    assert ti is not None and ti.state == "failed" and ti.try_number == 1


class _TI(SimpleNamespace):
    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def test_policy_runner_targets_select_the_glue_job_and_emr_application(
    moto_server: MotoServer,
    managed_etl_resources: dict[str, str],
    policy_file: PolicyFile,
) -> None:
    """The DAG names `orders` and `spark`; the tenant's policy says which Glue job and which EMR Serverless
    application implement (private_vpc, s). Run by execute() with a minimal task instance; the upstream
    operators, boto3 and moto are real. An unmapped profile is refused before anything starts."""
    from airflow.sdk import DAG

    from barecount_provider.operators.base import PolicyViolation
    from barecount_provider.operators.emr_serverless import EmrServerlessRunnerOperator
    from barecount_provider.operators.glue import GlueRunnerOperator

    application_id = managed_etl_resources["application_id"]
    policy_file(
        "version: 1\ntenants:\n  acme:\n    size_tables: {managed_etl: {s: {glue: {auto_scaling: true}}}}\n"
        "    runner_targets:\n"
        f"      glue:\n        orders: {{private_vpc: {GLUE_JOB}}}\n"
        f"      emr:\n        spark: {{private_vpc/s: {application_id}}}\n"
    )

    def operators(network_profile: str) -> tuple[GlueRunnerOperator, EmrServerlessRunnerOperator]:
        common = {"tenant": "acme", "size": "s", "network_profile": network_profile, "aws_conn_id": MOTO_CONN_ID}
        with DAG(dag_id=f"targets_{network_profile}", schedule=None):
            glue = GlueRunnerOperator(task_id="glue", job_name="orders", job_poll_interval=0.1, **common)
            emr = EmrServerlessRunnerOperator(
                task_id="emr",
                application_id="spark",
                execution_role_arn=managed_etl_resources["execution_role_arn"],
                job_driver={"sparkSubmit": {"entryPoint": "s3://barecount-code/job.py"}},
                waiter_delay=1,
                **common,
            )
        return glue, emr

    moto_server.start_recording()
    glue, emr = operators("private_vpc")
    for op in (glue, emr):
        ti = _TI(task=op, dag_id="targets", run_id="r1", task_id=op.task_id, try_number=1, map_index=-1, pushed={}, stats_tags={})
        op.execute({"ti": ti})
        result = ti.pushed["runner_result"]
        assert result["error"] is None
        if op is glue:
            assert result["details"]["target"] == GLUE_JOB
            assert result["field_sources"]["details.target"] == "policy runner_targets.glue.orders.private_vpc"
            assert result["details"]["job_name"] == GLUE_JOB  # GetJobRun of the selected job
            assert result["details"]["parallelism"].startswith("auto scaling, at most 2 workers")
        else:
            assert result["details"]["target"] == application_id
            assert result["field_sources"]["details.target"] == "policy runner_targets.emr.spark.private_vpc/s"
            # moto's application was created without capacity settings: said so, not left empty
            assert result["resources_used"]["maximum_capacity"] is None
            assert "no maximumCapacity" in result["field_sources"]["resources_used.maximum_capacity"]
    (start,) = _glue_requests(moto_server, "StartJobRun")
    assert _body(start)["JobName"] == GLUE_JOB
    # the size's auto_scaling: NumberOfWorkers is the maximum, Glue scales below it
    assert _body(start)["Arguments"]["--enable-auto-scaling"] == "true"
    assert _body(start)["NumberOfWorkers"] == 2
    assert len(_emr_start_requests(moto_server, application_id)) == 1

    moto_server.start_recording()
    glue, emr = operators("vpn")
    for op in (glue, emr):
        ti = _TI(task=op, dag_id="targets", run_id="r2", task_id=op.task_id, try_number=1, map_index=-1, pushed={}, stats_tags={})
        with pytest.raises(PolicyViolation, match="has no entry for network profile 'vpn' and size 's'"):
            op.execute({"ti": ti})
        assert ti.pushed == {}
    assert _glue_requests(moto_server, "StartJobRun") == []
    assert _emr_start_requests(moto_server, application_id) == []


def test_glue_job_metrics_emitted_by_the_test_are_read_from_moto_cloudwatch(
    moto_server: MotoServer,
    managed_etl_resources: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Glue's job metrics exist only in CloudWatch. moto's Glue emits none, so the test plays Glue's part: when
    the run starts it puts the job metrics of that run into moto's CloudWatch (in-process backend); the
    operator then reads them back over HTTP with GetMetricData, and what was not emitted is recorded as
    not reported."""
    from datetime import UTC, datetime

    from airflow.sdk import DAG
    from moto.cloudwatch.models import cloudwatch_backends
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.glue.models import FakeJob

    from barecount_provider.operators.glue import GlueRunnerOperator

    original = FakeJob.start_job_run

    def start_job_run(self: Any, *args: Any, **kwargs: Any) -> str:
        run_id = original(self, *args, **kwargs)
        metrics = [
            ("glue.driver.aggregate.bytesRead", "count", 5_000_000.0),
            ("glue.driver.aggregate.recordsRead", "count", 120_000.0),
            ("glue.driver.aggregate.shuffleBytesWritten", "count", 750_000.0),
            ("glue.driver.aggregate.numCompletedTasks", "count", 48.0),
            ("glue.ALL.system.cpuSystemLoad", "gauge", 0.62),
        ]
        cloudwatch_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].put_metric_data(
            "Glue",
            [
                {
                    "MetricName": name,
                    "Value": value,
                    "Timestamp": datetime.now(UTC).replace(tzinfo=None),  # as moto stores a parsed one
                    "Dimensions": [
                        {"Name": "JobName", "Value": self.name},
                        {"Name": "JobRunId", "Value": run_id},
                        {"Name": "Type", "Value": kind},
                    ],
                }
                for name, kind, value in metrics
            ],
        )
        return run_id

    monkeypatch.setattr(FakeJob, "start_job_run", start_job_run)
    with DAG(dag_id="glue_metrics", schedule=None):
        op = GlueRunnerOperator(
            task_id="glue", job_name=GLUE_JOB, tenant="acme", size="s", aws_conn_id=MOTO_CONN_ID, job_poll_interval=0.1
        )
    ti = _TI(task=op, dag_id="glue_metrics", run_id="r1", task_id="glue", try_number=1, map_index=-1, pushed={}, stats_tags={})
    op.execute({"ti": ti})
    result = ti.pushed["runner_result"]
    used = result["resources_used"]
    assert used["bytes_read"] == 5_000_000.0
    assert used["records_read"] == 120_000.0
    assert used["shuffle_bytes_written"] == 750_000.0
    assert used["completed_tasks"] == 48.0
    assert used["cpu_load"] == 0.62
    assert result["field_sources"]["resources_used.bytes_read"].startswith(
        "CloudWatch Glue glue.driver.aggregate.bytesRead (Sum; JobName="
    )
    assert used["memory_used_fraction"] is None  # not emitted: said so, never 0
    assert "no glue.ALL.jvm.heap.usage datapoints" in result["field_sources"]["resources_used.memory_used_fraction"]
