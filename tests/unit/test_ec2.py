"""DedicatedComputeOperator: argument checks, policy caps, the terminate-in-finally guarantee, the orphan
sweep and the recording of the command's outcome, on stubbed EC2 and SSM responses (botocore's Stubber, so
the upstream waiters run their real acceptors).

moto 5.2.5's SSM commands always succeed and it cannot refuse RunInstances for capacity: the failed-command
and the capacity-error paths are tested here on responses of the real shape; the request path runs against
moto in tests/integration/test_dedicated_runner.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from airflow.providers.amazon.aws.hooks.ec2 import EC2Hook
from airflow.sdk import DAG
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from barecount_provider.hooks.ec2 import BareCountEC2Hook
from barecount_provider.hooks.ssm import BareCountSsmHook
from barecount_provider.operators.base import RUNNER_RESULT_XCOM_KEY, PolicyViolation
from barecount_provider.operators.ec2 import (
    MANAGED_TAG,
    DedicatedComputeFailed,
    DedicatedComputeOperator,
    HostsNotReady,
    ManagedHost,
    commands_with_identity,
    ssm_agent_online,
    sweep_orphans,
)

from ..conftest import PolicyFile

REGION = "us-east-1"
LAUNCHED_AT = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
IDS = ["i-0aaaaaaaaaaaaaaa1", "i-0aaaaaaaaaaaaaaa2"]
COMMAND_ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


@pytest.fixture
def acme_policy(policy_file: PolicyFile) -> None:
    policy_file("version: 1\ntenants:\n  acme:\n    max_size: l\n    limits: {max_hosts: 1}\n")


class _TI(SimpleNamespace):
    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


class Stubs:
    """An operator whose EC2 and SSM hooks talk to stubbed boto3 clients."""

    def __init__(self, op: DedicatedComputeOperator) -> None:
        creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        self.ec2_client = boto3.client("ec2", region_name=REGION, **creds)
        self.ssm_client = boto3.client("ssm", region_name=REGION, **creds)
        self.ec2 = Stubber(self.ec2_client)
        self.ssm = Stubber(self.ssm_client)
        ec2_hook = BareCountEC2Hook(aws_conn_id=None, region_name=REGION)
        ec2_hook.__dict__["conn"] = self.ec2_client
        ssm_hook = BareCountSsmHook(aws_conn_id=None, region_name=REGION)
        ssm_hook.__dict__["conn"] = self.ssm_client
        op.__dict__["ec2_hook"] = ec2_hook
        op.__dict__["hook"] = ssm_hook
        self.ti = _TI(task=op, dag_id="d", run_id="r", task_id="heavy", try_number=1, map_index=-1, pushed={})
        self.context = {"ti": self.ti}

    def __enter__(self) -> Stubs:
        self.ec2.activate()
        self.ssm.activate()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.ec2.deactivate()
        self.ssm.deactivate()

    @property
    def result(self) -> dict[str, Any]:
        return self.ti.pushed[RUNNER_RESULT_XCOM_KEY]

    # ------------------------------------------------------------------------------ canned responses

    def launched(self, ids: list[str] = IDS) -> None:
        instances = [{"InstanceId": i, "LaunchTime": LAUNCHED_AT, "State": {"Name": "pending"}} for i in ids]
        self.ec2.add_response("run_instances", {"Instances": instances}, None)

    def described(self, state: str, ids: list[str] = IDS) -> None:
        instances = [{"InstanceId": i, "State": {"Name": state}} for i in ids]
        self.ec2.add_response("describe_instances", {"Reservations": [{"Instances": instances}]}, None)

    def terminated(self, ids: list[str] = IDS) -> None:
        self.ec2.add_response(
            "terminate_instances",
            {"TerminatingInstances": [{"InstanceId": i} for i in ids]},
            {"InstanceIds": ids},
        )
        self.described("terminated", ids)

    def command_sent(self, ids: list[str] = IDS) -> None:
        self.ssm.add_response(
            "send_command", {"Command": {"CommandId": COMMAND_ID, "InstanceIds": ids}}, None
        )


def invocation(instance_id: str, status: str, code: int, stderr: str = "") -> dict[str, Any]:
    """GetCommandInvocation of AWS-RunShellScript, as AWS returns it (moto's always says Success)."""
    return {
        "CommandId": COMMAND_ID,
        "InstanceId": instance_id,
        "DocumentName": "AWS-RunShellScript",
        "PluginName": "aws:runShellScript",
        "ResponseCode": code,
        "ExecutionStartDateTime": "2026-01-01T12:01:00.000Z",
        "ExecutionElapsedTime": "PT12.5S",
        "ExecutionEndDateTime": "2026-01-01T12:01:12.500Z",
        "Status": status,
        "StatusDetails": status,
        "StandardOutputContent": "",
        "StandardErrorContent": stderr,
    }


def _op(**kwargs: Any) -> DedicatedComputeOperator:
    arguments: dict[str, Any] = {
        "task_id": "heavy",
        "commands": ["python /opt/job.py"],
        "image_id": "ami-0123456789abcdef0",
        "tenant": "acme",
        "pipeline": "orders",
        "size": "l",  # 2 x m5.4xlarge in the built-in size table
        "readiness_check": lambda op, ids: None,
        "host_waiter_delay": 0,
        "waiter_delay": 0,
        "aws_conn_id": None,
        "region_name": REGION,
    }
    arguments.update(kwargs)
    with DAG(dag_id="d", schedule=None, start_date=LAUNCHED_AT):
        return DedicatedComputeOperator(**arguments)


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    yield


# ------------------------------------------------------------------------------------------ arguments


def test_arguments_are_checked_when_the_dag_is_parsed() -> None:
    with pytest.raises(ValueError, match=r"commands: 'echo hi' is not a non-empty list of shell lines"):
        _op(commands="echo hi")
    with pytest.raises(ValueError, match=r"image_id: '' is not an AMI id"):
        _op(image_id="")
    with pytest.raises(ValueError, match=r"run_instances_kwargs: InstanceType, MaxCount cannot be set"):
        _op(run_instances_kwargs={"InstanceType": "p5.48xlarge", "MaxCount": 9})
    with pytest.raises(ValueError, match=r"size: 'xxl' is not one of xs, s, m, l, xl"):
        _op(size="xxl")
    op = _op(document_name="AWS-RunPowerShellScript", deferrable=True)
    assert (op.document_name, op.deferrable, op.wait_for_completion) == ("AWS-RunShellScript", False, True)
    assert {"commands", "image_id", "size", "pipeline"} <= set(op.template_fields)
    assert "tenant" not in op.template_fields


def test_usable_in_mapped_tasks() -> None:
    with DAG(dag_id="mapped_dedicated", schedule=None):
        mapped = DedicatedComputeOperator.partial(
            task_id="heavy", image_id="ami-1", tenant="acme", size="s", network_profile="public"
        ).expand(commands=[["echo 1"], ["echo 2"]])
    assert mapped.partial_kwargs["tenant"] == "acme"


def test_identity_is_exported_before_the_authors_lines_quoted() -> None:
    lines = commands_with_identity(["echo $BARECOUNT_RUN_TOKEN"], {"BARECOUNT_RUN_TOKEN": "t 1; rm -rf /"})
    assert lines == ["export BARECOUNT_RUN_TOKEN='t 1; rm -rf /'", "echo $BARECOUNT_RUN_TOKEN"]


# ----------------------------------------------------------------------------------------- policy caps


def test_host_count_above_max_hosts_is_refused_before_run_instances(acme_policy: None) -> None:
    op = _op(size="l")  # 2 hosts; acme's max_hosts is 1
    with Stubs(op) as stubs, pytest.raises(PolicyViolation) as caught:
        op.execute(stubs.context)
    assert str(caught.value) == "tenant 'acme': hosts 2 exceeds max_hosts 1"
    assert caught.value.policy_exception == {
        "rule": "max_hosts",
        "tenant": "acme",
        "limit": 1,
        "requested": 2,
    }
    stubs.ec2.assert_no_pending_responses()  # nothing was stubbed: any EC2 call would have raised
    assert stubs.ti.pushed == {}


def test_size_above_max_size_is_refused_before_run_instances(acme_policy: None) -> None:
    op = _op(size="xl")
    with Stubs(op) as stubs, pytest.raises(PolicyViolation, match=r"size 'xl' exceeds max_size 'l'"):
        op.execute(stubs.context)


# ---------------------------------------------------------------------------- terminate whatever happens


def test_success_records_hosts_lifetimes_command_and_terminates(no_sleep: None) -> None:
    op = _op()
    with Stubs(op) as stubs:
        stubs.launched()
        stubs.described("running")
        stubs.command_sent()
        for instance_id in IDS:  # the command_executed waiter, once per host
            stubs.ssm.add_response("get_command_invocation", invocation(instance_id, "Success", 0), None)
        for instance_id in IDS:  # the invocations read for the record
            stubs.ssm.add_response("get_command_invocation", invocation(instance_id, "Success", 0), None)
        stubs.terminated()
        assert op.execute(stubs.context) == COMMAND_ID
        stubs.ec2.assert_no_pending_responses()
    result = stubs.result
    assert result["error"] is None and result["external_run_id"] == COMMAND_ID
    assert result["resources_used"]["instance_ids"] == IDS
    assert result["details"]["exit_code"] == 0 and result["details"]["status"] == "Success"
    assert result["timings"]["started_at"].startswith("2026-01-01T12:01:00")
    assert all(host["lifetime_s"] > 0 for host in result["details"]["hosts"])  # LaunchTime was in 2026-01-01
    assert result["billing_inputs"]["host_count"] == 2
    assert result["console_link"] == (
        f"https://{REGION}.console.aws.amazon.com/systems-manager/run-command/{COMMAND_ID}?region={REGION}"
    )


def test_failed_command_fails_the_task_with_exit_code_after_terminating(no_sleep: None) -> None:
    op = _op()
    with Stubs(op) as stubs:
        stubs.launched()
        stubs.described("running")
        stubs.command_sent()
        failed = invocation(IDS[0], "Failed", 2, stderr="job.py: input missing")
        stubs.ssm.add_response("get_command_invocation", failed, None)  # waiter: terminal failure
        stubs.ssm.add_response("get_command_invocation", invocation(IDS[1], "Success", 0), None)
        stubs.ssm.add_response("get_command_invocation", failed, None)
        stubs.ssm.add_response("get_command_invocation", invocation(IDS[1], "Success", 0), None)
        stubs.terminated()
        with pytest.raises(
            DedicatedComputeFailed, match=r"SsmCommand.Failed: command .* exit code 2 on i-0a"
        ):
            op.execute(stubs.context)
        stubs.ec2.assert_no_pending_responses()  # the hosts were terminated
    result = stubs.result
    assert result["error"]["error_class"] == "SsmCommand.Failed"
    assert "job.py: input missing" in result["error"]["message"]
    assert result["details"]["exit_code"] == 2
    assert result["details"]["exit_code_per_host"] == {IDS[0]: 2, IDS[1]: 0}
    assert all(host["terminated_at"] for host in result["details"]["hosts"])


def test_hosts_are_terminated_when_send_command_raises(no_sleep: None) -> None:
    op = _op()
    with Stubs(op) as stubs:
        stubs.launched()
        stubs.described("running")
        stubs.ssm.add_client_error("send_command", "InvalidInstanceId", "Instances not in a valid state")
        stubs.terminated()
        with pytest.raises(
            DedicatedComputeFailed, match=r"InvalidInstanceId: .*Instances not in a valid state"
        ):
            op.execute(stubs.context)
        stubs.ec2.assert_no_pending_responses()
    result = stubs.result
    assert result["resources_used"]["host_count"] == 2
    assert result["external_run_id"] is None
    assert result["field_sources"]["external_run_id"].startswith("no SSM command was sent")


def test_hosts_are_terminated_when_the_try_is_interrupted_between_launch_and_run(no_sleep: None) -> None:
    class TaskTimeout(BaseException):  # like Airflow's timeout and kill signals: not an Exception
        pass

    def interrupted(op: DedicatedComputeOperator, ids: list[str]) -> None:
        raise TaskTimeout("execution_timeout")

    op = _op(readiness_check=interrupted)
    with Stubs(op) as stubs:
        stubs.launched()
        stubs.described("running")
        stubs.terminated()
        with pytest.raises(TaskTimeout):
            op.execute(stubs.context)
        stubs.ec2.assert_no_pending_responses()


def test_readiness_failure_is_recorded_and_hosts_terminated(no_sleep: None) -> None:
    def never_ready(op: DedicatedComputeOperator, ids: list[str]) -> None:
        raise HostsNotReady(f"SSM agent of {ids[0]} not Online after 600 s")

    op = _op(readiness_check=never_ready)
    with Stubs(op) as stubs:
        stubs.launched()
        stubs.described("running")
        stubs.terminated()
        with pytest.raises(DedicatedComputeFailed, match=r"HostsNotReady: SSM agent of i-0a"):
            op.execute(stubs.context)
        stubs.ec2.assert_no_pending_responses()


def test_capacity_error_launches_nothing_and_records_the_refusal() -> None:
    op = _op()
    with Stubs(op) as stubs:
        stubs.ec2.add_client_error(
            "run_instances",
            "InsufficientInstanceCapacity",
            "We currently do not have sufficient m5.4xlarge capacity in the Availability Zone you requested.",
        )
        with pytest.raises(
            DedicatedComputeFailed, match=r"2 x m5.4xlarge \(0 launched\): InsufficientInstanceCapacity"
        ):
            op.execute(stubs.context)
        stubs.ec2.assert_no_pending_responses()  # no TerminateInstances: nothing to terminate
    result = stubs.result
    assert result["error"]["error_class"] == "InsufficientInstanceCapacity"
    assert result["resources_used"]["host_count"] == 0
    assert result["billing_inputs"]["host_seconds"] == 0


def test_on_kill_cancels_the_command_and_terminates_the_launched_hosts() -> None:
    op = _op()
    with Stubs(op) as stubs:
        op._launched = dict.fromkeys(IDS, LAUNCHED_AT)
        op._command_id = COMMAND_ID
        stubs.ssm.add_response("cancel_command", {}, {"CommandId": COMMAND_ID})
        stubs.terminated()
        op.on_kill()
        op.on_kill()  # idempotent: nothing left to terminate, no further call
        stubs.ec2.assert_no_pending_responses()
        stubs.ssm.assert_no_pending_responses()


# ----------------------------------------------------------------------------------------- readiness


def test_ssm_agent_online_waits_for_every_host_then_gives_up_with_the_missing_ones(no_sleep: None) -> None:
    op = _op(readiness_timeout_s=600, host_waiter_delay=300)  # the waiter polls 600 // 300 + 1 = 3 times
    request = {"Filters": [{"Key": "InstanceIds", "Values": IDS}]}
    with Stubs(op) as stubs:
        online = [{"InstanceId": i, "PingStatus": "Online"} for i in IDS]
        lost = [online[0], {"InstanceId": IDS[1], "PingStatus": "ConnectionLost"}]
        stubs.ssm.add_response("describe_instance_information", {"InstanceInformationList": lost}, request)
        stubs.ssm.add_response("describe_instance_information", {"InstanceInformationList": online}, request)
        ssm_agent_online(op, IDS)  # one host not yet Online, then both: waited for
        stubs.ssm.assert_no_pending_responses()
        for _ in range(3):
            stubs.ssm.add_response("describe_instance_information", {"InstanceInformationList": lost}, request)
        with pytest.raises(HostsNotReady, match=rf"SSM agent of {IDS[1]} not Online after 600 s"):
            ssm_agent_online(op, IDS)
        stubs.ssm.assert_no_pending_responses()


def test_ssm_agent_online_keeps_the_service_error_when_ssm_refuses(no_sleep: None) -> None:
    op = _op(readiness_timeout_s=600, host_waiter_delay=300)
    with Stubs(op) as stubs:
        stubs.ssm.add_client_error("describe_instance_information", "AccessDeniedException", "not allowed")
        with pytest.raises(ClientError, match="AccessDeniedException"):
            ssm_agent_online(op, IDS)


def test_the_ssm_agent_online_waiter_is_loaded_from_barecounts_waiter_json() -> None:
    """The amazon provider's custom-waiter loading (``waiter_path`` + ``get_waiter(parameters=...)``) finds
    BareCount's JSON; fails clearly if that upstream shape changes."""
    hook = BareCountSsmHook(aws_conn_id=None, region_name=REGION)
    assert "ssm_agent_online" in hook.list_waiters()
    assert "command_executed" in hook.list_waiters()  # botocore's own SSM waiters are still there
    waiter = hook.get_waiter("ssm_agent_online", parameters={"host_count": "2"})
    assert waiter.config.operation == "DescribeInstanceInformation"
    assert "== `2`" in waiter.config.acceptors[0].argument


# --------------------------------------------------------------------------------------------- sweep


def test_sweep_terminates_only_hosts_whose_run_is_no_longer_running() -> None:
    def host(instance_id: str, run_id: str) -> dict[str, Any]:
        tags = {MANAGED_TAG: "true", "barecount:dag_id": "d", "barecount:run_id": run_id}
        return {
            "InstanceId": instance_id,
            "State": {"Name": "running"},
            "LaunchTime": LAUNCHED_AT,
            "Tags": [{"Key": key, "Value": value} for key, value in tags.items()],
        }

    client = boto3.client("ec2", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    hook = EC2Hook(api_type="client_type", aws_conn_id=None, region_name=REGION)
    hook.__dict__["conn"] = client
    seen: list[ManagedHost] = []

    def is_run_active(managed: ManagedHost) -> bool:
        seen.append(managed)
        if managed.run_id == "unknown":
            raise ConnectionError("REST API down")
        return managed.run_id == "running"

    with Stubber(client) as stub:
        stub.add_response(
            "describe_instances",
            {
                "Reservations": [
                    {"Instances": [host("i-1", "running"), host("i-2", "done"), host("i-3", "unknown")]}
                ]
            },
            {
                "Filters": [
                    {"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]},
                    {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
                ],
                "InstanceIds": [],
            },
        )
        stub.add_response("terminate_instances", {"TerminatingInstances": []}, {"InstanceIds": ["i-2"]})
        assert sweep_orphans(hook, is_run_active) == ["i-2"]
        stub.assert_no_pending_responses()
    assert [(h.instance_id, h.dag_id) for h in seen] == [("i-1", "d"), ("i-2", "d"), ("i-3", "d")]
