"""EcsRunnerOperator against an in-process moto server whose ECS backend the test advances, run by
``dag.test()`` on dags/example_ecs.py (a real task context, the real upstream EcsRunTaskOperator, boto3's
``tasks_stopped`` waiter, real HTTP on 127.0.0.1).

moto 5.2.5's ECS tasks never finish on their own: their containers stay PENDING, with no image digest,
exit code, timestamps or stop code, and a task lists only the task definition's first container. This
module therefore starts its own ``ThreadedMotoServer`` in this process and wraps the backend's
``describe_tasks`` (``moto.ecs.models.EC2ContainerServiceBackend``) so that, as ECS would, the first
DescribeTasks of a task shows it RUNNING (pullStartedAt, pullStoppedAt, startedAt, image digests) and every
later one STOPPED (stoppedAt, stopCode EssentialContainerExited, each container's exit code), with the task
level cpu and memory taken from the RunTask overrides. The tests that rely on this say
``backend_advanced_by_test`` in their names; everything else (RunTask, the waiter's polling, the request
moto received) is moto's own. Also a moto gap: a task definition in awsvpc network mode makes moto's RunTask
fail (an ENI without private_dns_name), so the test's task definition uses bridge mode and the
awsvpcConfiguration is only checked on the request. Multi-container records, and the fields a real ECS
fills in, are tested on fixtures in tests/unit/test_ecs_task_status.py.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from barecount_provider import context

from ..conftest import PolicyFile
from .conftest import REGION, MotoServer, moto_connection

pytestmark = pytest.mark.integration

ECS_CONN_ID = "aws_moto_ecs"
CLUSTER = "barecount-pipelines"
TASK_DEFINITION = "barecount-orders-transform"
ECS_TARGET = "AmazonEC2ContainerServiceV20141113"


@pytest.fixture(scope="module")
def ecs_moto() -> Iterator[MotoServer]:
    """A second moto server, in this process, behind the Airflow connection ``aws_moto_ecs``."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    moto = MotoServer(f"http://{host}:{port}")
    variable = f"AIRFLOW_CONN_{ECS_CONN_ID.upper()}"
    saved = os.environ.get(variable)
    os.environ[variable] = moto_connection(moto.endpoint)
    try:
        yield moto
    finally:
        if saved is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = saved
        server.stop()


@pytest.fixture(scope="module")
def ecs_resources(ecs_moto: MotoServer) -> dict[str, list[str]]:
    """A cluster, a two-container task definition and a subnet and security group for the network config."""
    ec2 = ecs_moto.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="barecount-ecs", Description="ecs", VpcId=vpc)["GroupId"]
    ecs = ecs_moto.client("ecs")
    ecs.create_cluster(clusterName=CLUSTER)
    ecs.register_task_definition(
        family=TASK_DEFINITION,
        networkMode="bridge",  # awsvpc breaks moto's RunTask (see the module docstring)
        cpu="256",
        memory="512",
        containerDefinitions=[
            {"name": "app", "image": "public.ecr.aws/docker/library/python:3.11-slim", "cpu": 128, "memory": 256},
            {"name": "log-router", "image": "public.ecr.aws/aws-observability/aws-for-fluent-bit:stable", "cpu": 64, "memory": 128},
        ],
    )
    return {"subnets": [subnet], "security_groups": [group]}


class EcsTaskAdvancer:
    """Plays ECS's part on moto's backend objects: RUNNING at the first DescribeTasks, STOPPED afterwards."""

    def __init__(self, exit_code: int) -> None:
        self.exit_code = exit_code
        self.describes: dict[str, int] = {}

    def advance(self, task: Any) -> None:
        seen = self.describes[task.task_arn] = self.describes.get(task.task_arn, 0) + 1
        if seen == 1:
            now = datetime.now(UTC)
            task.created_at = now - timedelta(seconds=30)
            task.pull_started_at = now - timedelta(seconds=25)
            task.pull_stopped_at = now - timedelta(seconds=12)
            task.started_at = now - timedelta(seconds=10)
            task.cpu = task.overrides.get("cpu")  # ECS applies the task-level overrides
            task.memory = task.overrides.get("memory")
            task.last_status = "RUNNING"
            for container in task.containers:
                container.last_status = "RUNNING"
                container.image_digest = "sha256:" + hashlib.sha256(container.image.encode()).hexdigest()
        elif not getattr(task, "stopped_at", None):
            task.stopped_at = datetime.now(UTC)
            task.stop_code = "EssentialContainerExited"
            task.stopped_reason = "Essential container in task exited"
            task.desired_status = "STOPPED"
            task.last_status = "STOPPED"
            for container in task.containers:
                container.last_status = "STOPPED"
                container.exitCode = self.exit_code


@pytest.fixture
def advance_ecs_tasks(monkeypatch: pytest.MonkeyPatch) -> Iterator[EcsTaskAdvancer]:
    """Wrap moto's DescribeTasks backend method: each described task is advanced before it is serialised."""
    from moto.ecs.models import EC2ContainerServiceBackend

    advancer = EcsTaskAdvancer(exit_code=0)
    original = EC2ContainerServiceBackend.describe_tasks

    def describe_tasks(self: Any, cluster_str: str, tasks: list[str]) -> list[Any]:
        described = original(self, cluster_str, tasks)
        for task in described:
            advancer.advance(task)
        return described

    monkeypatch.setattr(EC2ContainerServiceBackend, "describe_tasks", describe_tasks)
    yield advancer


@pytest.fixture
def acme_policy(policy_file: PolicyFile) -> None:
    policy_file("version: 1\ntenants:\n  acme:\n    max_size: s\n")


def _ecs_requests(moto: MotoServer, action: str) -> list[dict[str, Any]]:
    found = []
    for request in moto.recorded_requests():
        headers = {key.lower(): value for key, value in request["headers"].items()}
        if headers.get("x-amz-target") == f"{ECS_TARGET}.{action}":
            body = base64.b64decode(request["body"]) if request.get("body_encoded") else request["body"].encode()
            found.append(json.loads(body))
    return found


def _example_module() -> Any:
    path = Path(__file__).resolve().parents[2] / "dags" / "example_ecs.py"
    spec = importlib.util.spec_from_file_location("barecount_example_ecs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_example(resources: dict[str, list[str]], **kwargs: Any) -> tuple[Any, dict[str, Any] | None]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag = _example_module().build_dag(
        aws_conn_id=ECS_CONN_ID,
        cluster=CLUSTER,
        task_definition=TASK_DEFINITION,
        subnets=resources["subnets"],
        security_groups=resources["security_groups"],
        waiter_delay=1,
        **kwargs,
    )
    run = dag.test()
    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=run.run_id, key="runner_result", dag_ids=dag.dag_id, task_ids="transform")
        ).first()
        result = XComModel.deserialize_value(row) if row is not None else None
    return run, result


def test_fargate_task_backend_advanced_by_test_carries_size_identity_tags_and_is_recorded(
    ecs_moto: MotoServer, airflow_db: None, ecs_resources: dict[str, list[str]], advance_ecs_tasks: EcsTaskAdvancer
) -> None:
    ecs_moto.start_recording()
    run, result = _run_example(ecs_resources, size="s", environment={"BARECOUNT_RUN_TOKEN": "forged"})
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]

    # The request moto received: size as task-level overrides, identity in every container, tags
    (request,) = _ecs_requests(ecs_moto, "RunTask")
    overrides = request["overrides"]
    assert (overrides["cpu"], overrides["memory"]) == ("512", "1024")
    correlation_id = context.correlation_id_for("example_ecs", run.run_id)
    run_token = context.run_token_for("example_ecs", run.run_id, "transform", -1, 1)
    envs = {entry["name"]: {v["name"]: v["value"] for v in entry["environment"]} for entry in overrides["containerOverrides"]}
    assert set(envs) == {"app", "log-router"}
    for env in envs.values():
        assert env["BARECOUNT_CORRELATION_ID"] == correlation_id
        assert env["BARECOUNT_RUN_TOKEN"] == run_token  # the forged value is replaced
        assert env["TRACEPARENT"].startswith("00-")
    assert "{{" not in envs["app"]["ORDERS_DAY"]  # the author's, rendered, kept
    assert request["launchType"] == "FARGATE" and request["propagateTags"] == "TASK_DEFINITION"
    assert request["networkConfiguration"]["awsvpcConfiguration"]["subnets"] == ecs_resources["subnets"]
    tags = {tag["key"]: tag["value"] for tag in request["tags"]}
    assert tags["barecount.io/tenant"] == "acme" and tags["barecount.io/pipeline"] == "orders"
    assert tags["barecount.io/run"] == correlation_id and tags["cost-center"] == "orders"
    assert _ecs_requests(ecs_moto, "RegisterTaskDefinition") == []  # never re-registered
    assert len(_ecs_requests(ecs_moto, "DescribeTasks")) >= 2  # the upstream waiter polled through RUNNING

    assert result is not None and result["error"] is None
    assert (result["runner_class"], result["size"], result["tenant"]) == ("container", "s", "acme")
    assert result["resources_requested"] == {"cpu_units": 512, "memory_mb": 1024}
    assert (result["resources_used"]["cpu_units"], result["resources_used"]["memory_mb"]) == (512, 1024)
    assert result["external_run_id"].startswith(f"arn:aws:ecs:{REGION}:") and ":task/" in result["external_run_id"]
    assert f"/ecs/v2/clusters/{CLUSTER}/tasks/" in result["console_link"]
    assert result["details"]["launch_type"] == "FARGATE"
    assert result["details"]["stop_code"] == "EssentialContainerExited" and result["details"]["exit_code.app"] == 0
    assert result["digests"]["image_digest.app"].startswith("sha256:")
    for key in ("pull_started_at", "started_at", "stopped_at"):
        assert result["timings"][key], key
    assert result["timings"]["duration_s"] >= 10 and result["billing_inputs"]["runtime_s"] >= 25
    assert result["field_sources"]["timings.pull_started_at"] == "ECS DescribeTasks tasks[].pullStartedAt"


def test_container_exit_code_1_backend_advanced_by_test_fails_the_task_after_recording(
    ecs_moto: MotoServer, airflow_db: None, ecs_resources: dict[str, list[str]], advance_ecs_tasks: EcsTaskAdvancer
) -> None:
    advance_ecs_tasks.exit_code = 1
    run, result = _run_example(ecs_resources, size="xs")
    assert run.state == "failed"
    ti = run.get_task_instance("transform")
    assert ti is not None and ti.state == "failed"
    assert result is not None
    assert result["error"]["error_class"] == "EcsTaskFailed.NonZeroExitCode"
    assert "container 'app' exited with code 1" in result["error"]["message"]
    assert result["details"]["exit_code.app"] == 1
    assert result["resources_used"]["cpu_units"] == 256 and result["timings"]["stopped_at"]  # what was spent


def test_policy_cap_fails_before_run_task(
    ecs_moto: MotoServer, airflow_db: None, ecs_resources: dict[str, list[str]], acme_policy: None
) -> None:
    ecs_moto.start_recording()
    run, result = _run_example(ecs_resources, size="l")  # acme's max_size is s
    assert run.state == "failed"
    assert _ecs_requests(ecs_moto, "RunTask") == []
    assert result is None
    ti = run.get_task_instance("transform")
    assert ti is not None and ti.state == "failed" and ti.try_number == 1


def _placement_policy(policy_file: PolicyFile, resources: dict[str, list[str]]) -> None:
    policy_file(
        "version: 1\ntenants:\n  acme:\n    network_profiles:\n      public:\n        ecs:\n"
        f"          subnets: {json.dumps(resources['subnets'])}\n"
        f"          security_groups: {json.dumps(resources['security_groups'])}\n"
        "          assign_public_ip: ENABLED\n"
    )


def test_network_profile_places_the_task_in_the_policys_subnets(
    ecs_moto: MotoServer,
    airflow_db: None,
    ecs_resources: dict[str, list[str]],
    advance_ecs_tasks: EcsTaskAdvancer,
    policy_file: PolicyFile,
) -> None:
    """An operator that names no network: the tenant's policy places `public` in its subnets, on this RunTask.
    Run by execute() with a minimal task instance (dag.test() needs the DAG in the dags folder); the
    upstream operator, boto3 and moto are real."""
    from types import SimpleNamespace

    from airflow.sdk import DAG

    from barecount_provider.operators.ecs import EcsRunnerOperator

    class TI(SimpleNamespace):
        def xcom_push(self, key: str, value: Any) -> None:
            self.pushed[key] = value

    _placement_policy(policy_file, ecs_resources)
    with DAG(dag_id="ecs_placement", schedule=None):
        op = EcsRunnerOperator(
            task_id="transform",
            tenant="acme",
            size="xs",
            network_profile="public",
            cluster=CLUSTER,
            task_definition=TASK_DEFINITION,
            launch_type="FARGATE",
            aws_conn_id=ECS_CONN_ID,
            waiter_delay=1,
        )
    ti = TI(task=op, dag_id="ecs_placement", run_id="r1", task_id="transform", try_number=1, map_index=-1, pushed={})
    ecs_moto.start_recording()
    op.execute({"ti": ti})
    (request,) = _ecs_requests(ecs_moto, "RunTask")
    placed = {
        "subnets": ecs_resources["subnets"],
        "securityGroups": ecs_resources["security_groups"],
        "assignPublicIp": "ENABLED",
    }
    assert request["networkConfiguration"]["awsvpcConfiguration"] == placed
    result = ti.pushed["runner_result"]
    assert result["details"]["awsvpc_configuration"] == placed
    assert result["field_sources"]["details.awsvpc_configuration"] == "policy network_profiles.public.ecs"


def test_network_configuration_that_contradicts_the_profile_is_refused_before_run_task(
    ecs_moto: MotoServer,
    airflow_db: None,
    ecs_resources: dict[str, list[str]],
    policy_file: PolicyFile,
) -> None:
    _placement_policy(policy_file, ecs_resources)
    ecs_moto.start_recording()
    run, result = _run_example({"subnets": ["subnet-0other"], "security_groups": ecs_resources["security_groups"]})
    assert run.state == "failed"
    assert _ecs_requests(ecs_moto, "RunTask") == []
    assert result is None
