"""An AWS emulator for the example runner DAGs: moto in this process, on 127.0.0.1, seeded with what the DAGs'
defaults name.

``AwsEmulator().start()`` starts a ``ThreadedMotoServer`` on a free loopback port, turns Docker off for Lambda
(moto's simple backend echoes the event) and creates every resource that the ``needs-aws`` DAGs of ``dags/``
(example_serverless, example_managed_etl, example_ecs, example_dedicated, example_all_runners) use with their
default arguments (see :class:`ExampleResources`). Airflow reaches it through the connection given by
:meth:`AwsEmulator.connection_env` (``AIRFLOW_CONN_AWS_DEFAULT`` by default: the DAGs' default conn id), so
the DAG files run unchanged; ``stop()`` stops the helper thread and the server and undoes the patches.

What moto 5.2.5 does not do, the emulator does on moto's in-process backends (this is why it must run in the
same process as the server):

* ECS: tasks never leave PENDING. A background thread moves each task to RUNNING (pull and start times,
  image digests, the task-level cpu/memory overrides applied) after ``ecs_start_s`` and to STOPPED (stop
  code EssentialContainerExited, exit code ``ecs_exit_code``) ``ecs_run_s`` later, as ECS would.
  A task definition in awsvpc mode breaks moto's RunTask, so the seeded one is in bridge mode and the DAGs'
  awsvpcConfiguration is only carried on the request.
* SSM: there is no DescribeInstanceInformation, which the dedicated runner's default readiness check
  (``ssm_agent_online``) polls. The emulator adds it: every running EC2 instance answers PingStatus Online.
  Run Command always succeeds. moto also adds every EC2 instance of the backend to a command sent without
  ``Targets`` (an empty tag filter matches all); the emulator keeps a command to its ``InstanceIds``.
* Glue: runs move STARTING -> RUNNING -> SUCCEEDED one step per GetJobRun (moto's state manager), instead of
  being SUCCEEDED at once. They report ExecutionTime 123 and no DPUSeconds.
* EMR Serverless: application ids are random, so the seeded application is re-keyed to the id the DAGs
  name. Its job runs start at SUCCESS with zero utilisation.
* EC2: the AMI the DAGs name is registered under that id (moto cannot register a chosen id).
* EC2 VPN: connections have no ``VgwTelemetry`` and random ids; ``seed_vpn_connection`` re-keys one to the id
  a policy names and sets its tunnels' statuses (the health tests).

moto's backends are global to the process: resources use names of their own (``barecount-example-*``, the
cluster ``pipelines``) so that other moto servers of the same process (tests/integration) are not disturbed.
``stop()`` does not reset the backends; it only removes the EC2 reservations launched while the emulator ran
(given the SendCommand behaviour above, they would join later commands of the same process).
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import os
import shutil
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account
FAKE_KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
DEFAULT_CONN_ID = "aws_default"
LAMBDA_HANDLER_SOURCE = "def handler(event, context):\n    return event\n"


def _trust(service: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": f"{service}.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
    )


@dataclass(frozen=True)
class ExampleResources:
    """The resources the example DAGs name by default (tests/integration/test_all_runners_dag.py checks that
    the DAG files and this class agree)."""

    function_name: str = "barecount-example-echo"
    lambda_memory_mb: int = 512
    glue_job_name: str = "barecount-example-transform"
    emr_application_id: str = "00example0app0id"
    emr_execution_role_arn: str = f"arn:aws:iam::{ACCOUNT_ID}:role/barecount-example-emr-job"
    ecs_cluster: str = "pipelines"
    ecs_task_definition: str = "orders-transform"
    ecs_container: str = "app"
    image_id: str = "ami-0example0barecount"
    iam_instance_profile: str = "barecount-ssm-managed-instance"


@dataclass
class EcsTaskDriver:
    """Plays ECS's part on moto's backend: PENDING -> RUNNING -> STOPPED by the clock, in a thread. It drives
    every task of the region's backend (moto's backends are per process), so only while the emulator runs."""

    region: str = REGION
    start_s: float = 1.0
    run_s: float = 2.0
    exit_code: int = 0
    interval_s: float = 0.25
    first_seen: dict[str, float] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="barecount-ecs-task-driver", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.step()
            except Exception:  # a task being created while we look: try again next tick
                continue

    def _tasks(self) -> list[Any]:
        from moto.ecs.models import ecs_backends

        backend = ecs_backends[ACCOUNT_ID][self.region]
        return [task for by_arn in list(backend.tasks.values()) for task in list(by_arn.values())]

    def step(self) -> None:
        now = time.monotonic()
        for task in self._tasks():
            arn = task.task_arn
            if getattr(task, "last_status", None) == "STOPPED" or getattr(task, "stopped_at", None):
                continue
            if arn not in self.first_seen:
                self.first_seen[arn] = now
                if not getattr(task, "created_at", None):
                    task.created_at = datetime.now(UTC)
            if arn not in self.started:
                if now - self.first_seen[arn] >= self.start_s:
                    self._run(task)
                    self.started[arn] = now
            elif now - self.started[arn] >= self.run_s:
                self._finish(task)

    @staticmethod
    def _run(task: Any) -> None:
        now = datetime.now(UTC)
        created = getattr(task, "created_at", None) or now
        task.created_at = created
        task.pull_started_at = created + (now - created) / 4  # created <= pull <= started, as in ECS
        task.pull_stopped_at = created + (now - created) * 3 / 4
        task.started_at = now
        overrides = getattr(task, "overrides", None) or {}
        if overrides.get("cpu"):  # ECS applies the task-level overrides
            task.cpu = overrides["cpu"]
        if overrides.get("memory"):
            task.memory = overrides["memory"]
        for container in task.containers:
            container.image_digest = "sha256:" + hashlib.sha256(str(container.image).encode()).hexdigest()
            container.last_status = "RUNNING"
        task.last_status = "RUNNING"

    def _finish(self, task: Any) -> None:
        for container in task.containers:
            container.exitCode = self.exit_code
            container.last_status = "STOPPED"
        task.stop_code = "EssentialContainerExited"
        task.stopped_reason = "Essential container in task exited"
        task.desired_status = "STOPPED"
        task.stopped_at = datetime.now(UTC)
        task.last_status = "STOPPED"


def _command_targets_only_when_given(self: Any) -> list[str]:
    """moto's Command._get_instance_ids_from_targets, minus its bug: no Targets selects no instance."""
    if not self.targets:
        return []
    return list(_ORIGINAL_TARGETS[0](self))


_ORIGINAL_TARGETS: list[Any] = []


def _describe_instance_information(self: Any) -> Any:
    """SSM DescribeInstanceInformation for moto: every running EC2 instance's agent is Online."""
    from moto.core.responses import ActionResult
    from moto.ec2.models import ec2_backends

    wanted: set[str] | None = None
    for entry in self._get_param("Filters") or self._get_param("InstanceInformationFilterList") or []:
        if entry.get("Key") in ("InstanceIds", "InstanceId", "instanceIds"):
            wanted = set(entry.get("Values") or entry.get("valueSet") or [])
    backend = ec2_backends[self.current_account][self.region]
    found = []
    for instance in backend.all_instances():
        if instance.state != "running" or (wanted is not None and instance.id not in wanted):
            continue
        found.append(
            {
                "InstanceId": instance.id,
                "PingStatus": "Online",
                "LastPingDateTime": datetime.now(UTC),
                "AgentVersion": "3.3.0.0",
                "IsLatestVersion": True,
                "PlatformType": "Linux",
                "PlatformName": "Amazon Linux",
                "ResourceType": "EC2Instance",
                "IPAddress": instance.private_ip,
                "ComputerName": getattr(instance, "private_dns_name", None) or instance.id,
            }
        )
    return ActionResult({"InstanceInformationList": found})


class AwsEmulator:
    """moto on 127.0.0.1 with the example DAGs' resources and the ECS/SSM/Glue parts moto lacks.

    Usage::

        with AwsEmulator() as aws:
            env = aws.connection_env()  # {"AIRFLOW_CONN_AWS_DEFAULT": "{...}"}
            ...
    """

    def __init__(
        self,
        resources: ExampleResources | None = None,
        *,
        region: str = REGION,
        ecs_start_s: float = 1.0,
        ecs_run_s: float = 2.0,
        ecs_exit_code: int = 0,
        glue_steps_per_poll: int = 1,
    ) -> None:
        self.resources = resources or ExampleResources()
        self.region = region
        self.ecs = EcsTaskDriver(region=region, start_s=ecs_start_s, run_s=ecs_run_s, exit_code=ecs_exit_code)
        self.glue_steps_per_poll = glue_steps_per_poll
        self.endpoint = ""
        self._server: Any = None
        self._patched_ssm = False
        self._reservations_before: set[str] = set()

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> AwsEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> AwsEmulator:
        import sys

        if self._server is not None:
            raise RuntimeError("emulator already started")
        # moto's request recorder reads its file path once, when moto is first imported: the directory serves
        # every later emulator of this process too, so it is removed at exit, not when this one stops.
        if "moto" not in sys.modules and not os.environ.get("MOTO_RECORDER_FILEPATH"):
            recording_dir = tempfile.mkdtemp(prefix="barecount-aws-emulator-")
            atexit.register(shutil.rmtree, recording_dir, True)
            os.environ["MOTO_RECORDER_FILEPATH"] = os.path.join(recording_dir, "requests.jsonl")
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        try:
            host, port = self._server.get_host_and_port()
            self.endpoint = f"http://{host}:{port}"
            self.api("POST", "config", {"lambda": {"use_docker": False}})
            self._reservations_before = set(self._ec2_backend().reservations)
            self._patch_ssm()
            self.seed()
            self.api(
                "POST",
                "state-manager/set-transition",
                {
                    "model_name": "glue::job_run",
                    "transition": {"progression": "manual", "times": self.glue_steps_per_poll},
                },
            )
            self.ecs.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.ecs.stop()
        if self._server is not None:
            try:
                self.api("POST", "state-manager/unset-transition", {"model_name": "glue::job_run"})
            except Exception:
                pass
            self._server.stop()
            self._server = None
            self._forget_reservations()
        self._unpatch_ssm()

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def _ec2_backend(self) -> Any:
        from moto.ec2.models import ec2_backends

        return ec2_backends[ACCOUNT_ID][self.region]

    def _forget_reservations(self) -> None:
        reservations = self._ec2_backend().reservations
        for reservation_id in set(reservations) - self._reservations_before:
            reservations.pop(reservation_id, None)

    def _patch_ssm(self) -> None:
        from moto.ssm.models import Command
        from moto.ssm.responses import SimpleSystemManagerResponse

        if hasattr(SimpleSystemManagerResponse, "describe_instance_information") or _ORIGINAL_TARGETS:
            return  # moto has it now, or another emulator of this process patched it
        responses: Any = SimpleSystemManagerResponse
        responses.describe_instance_information = _describe_instance_information
        command: Any = Command
        _ORIGINAL_TARGETS.append(command._get_instance_ids_from_targets)
        command._get_instance_ids_from_targets = _command_targets_only_when_given
        self._patched_ssm = True

    def _unpatch_ssm(self) -> None:
        if self._patched_ssm:
            from moto.ssm.models import Command
            from moto.ssm.responses import SimpleSystemManagerResponse

            responses: Any = SimpleSystemManagerResponse
            del responses.describe_instance_information
            command: Any = Command
            command._get_instance_ids_from_targets = _ORIGINAL_TARGETS.pop()
            self._patched_ssm = False

    # ------------------------------------------------------------------ Airflow side

    def connection(self) -> dict[str, Any]:
        """The Airflow connection (JSON form) that points the amazon provider's hooks at the emulator."""
        return {
            "conn_type": "aws",
            "login": FAKE_KEYS["aws_access_key_id"],
            "password": FAKE_KEYS["aws_secret_access_key"],
            "extra": {"endpoint_url": self.endpoint, "region_name": self.region},
        }

    def connection_env(self, conn_id: str = DEFAULT_CONN_ID) -> dict[str, str]:
        """``AIRFLOW_CONN_<ID>`` for the Airflow processes, plus loopback kept off any HTTP proxy."""
        no_proxy = ",".join(
            part for part in (os.environ.get("NO_PROXY") or os.environ.get("no_proxy"), "127.0.0.1") if part
        )
        return {
            f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(self.connection()),
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
            "AWS_DEFAULT_REGION": self.region,
        }

    # ------------------------------------------------------------------ moto access

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, region_name=self.region, endpoint_url=self.endpoint, **FAKE_KEYS)

    def api(self, method: str, path: str, body: Any = None) -> str:
        import requests

        response = requests.request(method, f"{self.endpoint}/moto-api/{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.text

    def start_recording(self) -> None:
        self.api("POST", "recorder/reset-recording")
        self.api("POST", "recorder/start-recording")

    def stop_recording(self) -> None:
        self.api("POST", "recorder/stop-recording")

    def recorded_requests(self) -> list[dict[str, Any]]:
        """Every request moto received since start_recording() (any moto server of this process)."""
        text = self.api("GET", "recorder/download-recording")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def instances(self, **filters: str) -> list[dict[str, Any]]:
        """EC2 instances, filtered by tag (``{"barecount:managed": "true"}``)."""
        request = [{"Name": f"tag:{key}", "Values": [value]} for key, value in filters.items()]
        reservations = self.client("ec2").describe_instances(Filters=request)["Reservations"]
        return [instance for reservation in reservations for instance in reservation["Instances"]]

    # ------------------------------------------------------------------ seeding

    def seed(self) -> None:
        """Create what the example DAGs name (idempotent within one process)."""
        r = self.resources
        iam = self.client("iam")
        roles = {}
        for name, service in (
            ("barecount-example-lambda", "lambda"),
            ("barecount-example-glue", "glue"),
            (r.emr_execution_role_arn.rsplit("/", 1)[1], "emr-serverless"),
        ):
            try:
                roles[name] = iam.create_role(RoleName=name, AssumeRolePolicyDocument=_trust(service))[
                    "Role"
                ]["Arn"]
            except iam.exceptions.EntityAlreadyExistsException:
                roles[name] = iam.get_role(RoleName=name)["Role"]["Arn"]
        try:
            iam.create_instance_profile(InstanceProfileName=r.iam_instance_profile)
        except iam.exceptions.EntityAlreadyExistsException:
            pass

        self._seed_lambda(roles["barecount-example-lambda"])
        self._seed_glue(roles["barecount-example-glue"])
        self._seed_emr_serverless()
        self._seed_ecs()
        self._seed_ami()

    def _seed_lambda(self, role_arn: str) -> None:
        r = self.resources
        client = self.client("lambda")
        try:
            client.get_function(FunctionName=r.function_name)
            return
        except client.exceptions.ResourceNotFoundException:
            pass
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("app.py", LAMBDA_HANDLER_SOURCE)
        client.create_function(
            FunctionName=r.function_name,
            Runtime="python3.11",
            Role=role_arn,
            Handler="app.handler",
            Code={"ZipFile": buffer.getvalue()},
            MemorySize=r.lambda_memory_mb,
            Architectures=["arm64"],
            Publish=True,
        )

    def _seed_glue(self, role_arn: str) -> None:
        r = self.resources
        client = self.client("glue")
        try:
            client.get_job(JobName=r.glue_job_name)
            return
        except client.exceptions.EntityNotFoundException:
            pass
        client.create_job(
            Name=r.glue_job_name,
            Role=role_arn,
            Command={
                "Name": "glueetl",
                "ScriptLocation": "s3://barecount-example-code/transform.py",
                "PythonVersion": "3",
            },
            GlueVersion="4.0",
            WorkerType="G.1X",
            NumberOfWorkers=2,
            ExecutionProperty={
                "MaxConcurrentRuns": 10
            },  # example_managed_etl and example_all_runners share it
        )

    def _seed_emr_serverless(self) -> None:
        """boto3 (the upstream create operator waits for a state moto never shows), then re-keyed in the
        backend to the id the DAGs name."""
        from moto.emrserverless.models import emrserverless_backends

        r = self.resources
        backend = emrserverless_backends[ACCOUNT_ID][self.region]
        if r.emr_application_id in backend.applications:
            return
        created = self.client("emr-serverless").create_application(
            name="barecount-example-aggregate", releaseLabel="emr-7.2.0", type="SPARK"
        )["applicationId"]
        application = backend.applications.pop(created)
        application.id = r.emr_application_id
        application.arn = application.arn.replace(created, r.emr_application_id)
        backend.applications[r.emr_application_id] = application

    def seed_vpn_connection(self, vpn_id: str, tunnels: tuple[str, ...] = ("UP", "UP")) -> None:
        """A Site-to-Site VPN connection under ``vpn_id`` whose tunnels have ``tunnels`` statuses (UP or DOWN).

        moto creates connections under random ids and without ``VgwTelemetry``: the connection is re-keyed
        and its telemetry set on moto's in-process backend (the attribute moto serializes). Calling it again
        with the same id only changes the statuses."""
        backend = self._ec2_backend()
        if vpn_id not in backend.vpn_connections:
            ec2 = self.client("ec2")
            customer = ec2.create_customer_gateway(Type="ipsec.1", PublicIp="198.51.100.7", BgpAsn=65010)
            gateway = ec2.create_vpn_gateway(Type="ipsec.1")
            created = ec2.create_vpn_connection(
                Type="ipsec.1",
                CustomerGatewayId=customer["CustomerGateway"]["CustomerGatewayId"],
                VpnGatewayId=gateway["VpnGateway"]["VpnGatewayId"],
            )["VpnConnection"]["VpnConnectionId"]
            connection = backend.vpn_connections.pop(created)
            connection.id = vpn_id
            backend.vpn_connections[vpn_id] = connection
        connection = backend.vpn_connections[vpn_id]
        changed = datetime.now(UTC)
        connection.state = "available"
        connection.vgw_telemetry = [
            {
                "OutsideIpAddress": f"203.0.113.{index + 1}",
                "Status": status,
                "LastStatusChange": changed,
                "StatusMessage": "" if status == "UP" else "IPSEC IS DOWN",
                "AcceptedRouteCount": 4 if status == "UP" else 0,
            }
            for index, status in enumerate(tunnels)
        ]

    def _seed_ecs(self) -> None:
        r = self.resources
        ecs = self.client("ecs")
        if not ecs.describe_clusters(clusters=[r.ecs_cluster])["clusters"]:
            ecs.create_cluster(clusterName=r.ecs_cluster)
        if not ecs.list_task_definitions(familyPrefix=r.ecs_task_definition)["taskDefinitionArns"]:
            ecs.register_task_definition(
                family=r.ecs_task_definition,
                networkMode="bridge",  # awsvpc breaks moto's RunTask (see the module docstring)
                cpu="256",
                memory="512",
                containerDefinitions=[
                    {
                        "name": r.ecs_container,
                        "image": "public.ecr.aws/docker/library/python:3.11-slim",
                        "cpu": 128,
                        "memory": 256,
                        "essential": True,
                    }
                ],
            )

    def _seed_ami(self) -> None:
        from moto.ec2.models.amis import Ami

        r = self.resources
        backend = self._ec2_backend()
        if r.image_id not in backend.amis:
            backend.amis[r.image_id] = Ami(
                backend,
                ami_id=r.image_id,
                name="barecount-example-al2023-ssm-agent",
                description="Amazon Linux 2023 with the SSM agent (BareCount example)",
                owner_id=ACCOUNT_ID,
                architecture="x86_64",
                virtualization_type="hvm",
                root_device_type="ebs",
                root_device_name="/dev/xvda",
            )
