"""DedicatedComputeOperator against moto in server mode on 127.0.0.1, run by ``dag.test()`` on
dags/example_dedicated.py (a real task context, the amazon provider's EC2 and SSM hooks, botocore's
``instance_running`` / ``command_executed`` / ``instance_terminated`` waiters, real HTTP).

moto 5.2.5 gaps: SSM has no DescribeInstanceInformation, so the DAG is built with the
``instance_state_only`` readiness check instead of the SSM-agent ping; its Run Command always succeeds, so the
failed-command path (and the EC2 capacity error) are unit tests on stubbed responses
(tests/unit/test_ec2.py).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from barecount_provider import context
from barecount_provider.operators.ec2 import MANAGED_TAG, TAG_RUN, instance_state_only

from ..conftest import PolicyFile
from .conftest import MOTO_CONN_ID, MotoServer

pytestmark = pytest.mark.integration

DAG_ID = "example_dedicated"


def _write_policy(policy_file: PolicyFile, max_hosts: int) -> None:
    policy_file(f"version: 1\ntenants:\n  acme:\n    max_size: l\n    limits: {{max_hosts: {max_hosts}}}\n")


@pytest.fixture(scope="module")
def image_id(moto_server: MotoServer) -> str:
    return str(moto_server.client("ec2").describe_images()["Images"][0]["ImageId"])


def _example_module() -> Any:
    path = Path(__file__).resolve().parents[2] / "dags" / "example_dedicated.py"
    spec = importlib.util.spec_from_file_location("barecount_example_dedicated", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_example(image_id: str, size: str) -> tuple[Any, dict[str, Any] | None]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag = _example_module().build_dag(
        aws_conn_id=MOTO_CONN_ID,
        image_id=image_id,
        iam_instance_profile=None,
        size=size,
        readiness_check=instance_state_only,  # moto: no DescribeInstanceInformation
        poll_interval_s=1,
    )
    run = dag.test()
    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(
                run_id=run.run_id, key="runner_result", dag_ids=dag.dag_id, task_ids="heavy_step"
            )
        ).first()
        result = XComModel.deserialize_value(row) if row is not None else None
    return run, result


def _instances_of_run(moto_server: MotoServer, correlation_id: str) -> list[dict[str, Any]]:
    reservations = moto_server.client("ec2").describe_instances(
        Filters=[
            {"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]},
            {"Name": f"tag:{TAG_RUN}", "Values": [correlation_id]},
        ]
    )["Reservations"]
    return [instance for reservation in reservations for instance in reservation["Instances"]]


def _body(request: dict[str, Any]) -> str:
    body = request.get("body") or ""
    return base64.b64decode(body).decode() if request.get("body_encoded") else str(body)


def _run_instances_requests(moto_server: MotoServer) -> list[dict[str, list[str]]]:
    """The form fields of each EC2 RunInstances request moto received."""
    forms = [urllib.parse.parse_qs(_body(request)) for request in moto_server.recorded_requests()]
    return [form for form in forms if form.get("Action") == ["RunInstances"]]


def _send_command_bodies(moto_server: MotoServer) -> list[dict[str, Any]]:
    return [
        json.loads(_body(request))
        for request in moto_server.recorded_requests()
        if {key.lower(): value for key, value in request["headers"].items()}.get("x-amz-target")
        == "AmazonSSM.SendCommand"
    ]


def test_dedicated_job_runs_on_tagged_hosts_with_identity_and_terminates_them(
    moto_server: MotoServer,
    airflow_db: None,
    image_id: str,
    policy_file: PolicyFile,
) -> None:
    _write_policy(policy_file, max_hosts=4)
    moto_server.start_recording()
    run, result = _run_example(image_id, "l")  # l: 2 x m5.4xlarge
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    correlation_id = context.correlation_id_for(DAG_ID, run.run_id)

    (launch,) = _run_instances_requests(moto_server)  # all hosts in one all-or-nothing request
    assert (launch["MinCount"], launch["MaxCount"], launch["InstanceType"]) == (["2"], ["2"], ["m5.4xlarge"])
    assert launch["ClientToken"] == [context.run_token_for(DAG_ID, run.run_id, "heavy_step", -1, 1)]
    instances = _instances_of_run(moto_server, correlation_id)
    assert len(instances) == 2
    for instance in instances:
        tags = {tag["Key"]: tag["Value"] for tag in instance["Tags"]}
        assert tags[MANAGED_TAG] == "true"
        assert (tags["barecount:tenant"], tags["barecount:pipeline"]) == ("acme", "orders")
        assert (tags["barecount:dag_id"], tags["barecount:run_id"]) == (DAG_ID, run.run_id)
        assert instance["InstanceType"] == "m5.4xlarge"
        assert instance["State"]["Name"] == "terminated"  # no host left running

    (send,) = _send_command_bodies(moto_server)
    assert send["DocumentName"] == "AWS-RunShellScript"
    assert sorted(send["InstanceIds"]) == sorted(i["InstanceId"] for i in instances)
    commands = send["Parameters"]["commands"]
    run_token = context.run_token_for(DAG_ID, run.run_id, "heavy_step", -1, 1)
    assert commands[0] == f"export BARECOUNT_CORRELATION_ID={correlation_id}"
    assert commands[1] == f"export BARECOUNT_RUN_TOKEN={run_token}"
    assert commands[2].startswith("export TRACEPARENT=00-")
    assert commands[3] == "set -euo pipefail"  # the author's lines follow, templated
    assert commands[4].startswith('echo "orders ') and "{{" not in commands[4]

    assert result is not None
    assert (result["runner_class"], result["size"], result["tenant"]) == ("dedicated", "l", "acme")
    assert result["resources_requested"] == {"instance_type": "m5.4xlarge", "host_count": 2}
    assert sorted(result["resources_used"]["instance_ids"]) == sorted(i["InstanceId"] for i in instances)
    (command,) = moto_server.client("ssm").list_commands(CommandId=result["external_run_id"])["Commands"]
    assert sorted(command["InstanceIds"]) == sorted(result["resources_used"]["instance_ids"])
    assert result["details"]["status"] == "Success" and result["details"]["exit_code"] == 0
    hosts = result["details"]["hosts"]
    assert len(hosts) == 2 and all(host["terminated_at"] and host["lifetime_s"] >= 0 for host in hosts)
    assert result["billing_inputs"]["host_count"] == 2
    assert result["billing_inputs"]["host_seconds"] == pytest.approx(sum(h["lifetime_s"] for h in hosts))
    assert f"/systems-manager/run-command/{result['external_run_id']}" in result["console_link"]
    assert result["error"] is None


def test_host_cap_fails_before_any_host_is_launched(
    moto_server: MotoServer,
    airflow_db: None,
    image_id: str,
    policy_file: PolicyFile,
) -> None:
    _write_policy(policy_file, max_hosts=1)
    moto_server.start_recording()
    run, result = _run_example(image_id, "l")  # 2 hosts > max_hosts 1
    assert run.state == "failed"
    assert result is None
    assert _instances_of_run(moto_server, context.correlation_id_for(DAG_ID, run.run_id)) == []
    assert _run_instances_requests(moto_server) == []


def test_network_profile_places_the_hosts_in_the_policys_subnet(
    moto_server: MotoServer,
    airflow_db: None,
    image_id: str,
    policy_file: PolicyFile,
) -> None:
    """The example names no subnet: the tenant's policy places `public` in a subnet and security group of
    its own, on this run's RunInstances; the hosts are launched there and terminated."""
    ec2 = moto_server.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="barecount-hosts", Description="hosts", VpcId=vpc)["GroupId"]
    policy_file(
        "version: 1\ntenants:\n  acme:\n    network_profiles:\n      public:\n"
        f"        ec2: {{subnet_id: {subnet}, security_group_ids: [{group}]}}\n"
    )

    moto_server.start_recording()
    run, result = _run_example(image_id, "xs")
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    (launch,) = _run_instances_requests(moto_server)
    assert launch["SubnetId"] == [subnet] and launch["SecurityGroupId.1"] == [group]
    instances = _instances_of_run(moto_server, context.correlation_id_for(DAG_ID, run.run_id))
    assert [instance["SubnetId"] for instance in instances] == [subnet]
    assert all(instance["State"]["Name"] == "terminated" for instance in instances)
    assert result is not None
    assert result["details"]["subnet_id"] == subnet
    assert result["field_sources"]["details.subnet_id"] == "subnet_id: policy network_profiles.public.ec2"
