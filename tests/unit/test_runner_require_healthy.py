"""Runner operators register healthy before they launch: ``require_healthy`` (default: the tenant's policy)
checks the network profile's dependencies and the runner target after the policy check and before anything
is launched; ``wait_for_healthy`` defers to HealthTrigger. The dependencies here are TCP servers on
127.0.0.1 (a closed port: refused); the runner target's own check against AWS is tested on moto in
tests/integration/test_health_gate_runners.py."""

from __future__ import annotations

import importlib
import inspect
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from barecount_provider import context
from barecount_provider.health.plan import Verdict
from barecount_provider.health.result import Dependency, HealthResult
from barecount_provider.operators import base
from barecount_provider.operators.base import DependencyUnhealthy, health_poke_interval
from barecount_provider.operators.ec2 import DedicatedComputeOperator
from barecount_provider.operators.ecs import EcsRunnerOperator
from barecount_provider.operators.emr_serverless import EmrServerlessRunnerOperator
from barecount_provider.operators.glue import GlueRunnerOperator
from barecount_provider.operators.kubernetes import KubernetesRunnerOperator
from barecount_provider.operators.lambda_function import LambdaRunnerOperator
from barecount_provider.runtime import health as runtime_health
from barecount_provider.triggers.health import HealthTrigger

from ..conftest import PolicyFile
from .test_health_trigger import Listener, _free_port

RUNNERS = (
    LambdaRunnerOperator,
    EcsRunnerOperator,
    GlueRunnerOperator,
    EmrServerlessRunnerOperator,
    KubernetesRunnerOperator,
    DedicatedComputeOperator,
)


class Launched(Exception):
    """Raised where the operator would start talking to its service: the health gate let it through."""


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[HealthResult], str]]:
    seen: list[tuple[list[HealthResult], str]] = []
    monkeypatch.setattr(base.health_report, "publish", lambda results, *, source: seen.append((list(results), source)))
    return seen


@pytest.fixture
def no_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Lambda target is not checked here (it needs AWS): only the profile's dependencies."""
    monkeypatch.setattr(LambdaRunnerOperator, "runner_health_target", lambda self, ctx: None)


def _policy(policy_file: PolicyFile, url: str, *, require_healthy: bool = True, degraded: str = "allow") -> None:
    policy_file(
        "version: 1\n"
        "tenants:\n"
        "  acme:\n"
        "    network_profiles:\n"
        "      vpn:\n"
        "        dependencies:\n"
        f'          health_urls: ["{url}"]\n'
        f"          require_healthy: {str(require_healthy).lower()}\n"
        f"          degraded: {degraded}\n"
    )


def _lambda(**kwargs: Any) -> LambdaRunnerOperator:
    arguments: dict[str, Any] = {
        "task_id": "ingest", "function_name": "orders-ingest", "tenant": "acme", "network_profile": "vpn",
        "size": "s", "aws_conn_id": None, "region_name": "us-east-1",
    }  # fmt: skip
    with DAG("health_gate", schedule=None):
        op = LambdaRunnerOperator(**{**arguments, **kwargs})

    def launch(result: Any) -> dict[str, Any]:
        raise Launched(op.task_id)

    op._function_configuration = launch  # type: ignore[method-assign]  # the first call to Lambda
    return op


def _run(op: Any) -> Any:
    ti = SimpleNamespace(task=op, dag_id="health_gate", run_id="r", task_id=op.task_id, try_number=1, map_index=-1)
    return op.execute({"ti": ti})


def _never_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    def check(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("health was checked")

    monkeypatch.setattr(runtime_health, "check", check)


# ------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("operator", RUNNERS)
def test_every_runner_operator_takes_require_healthy_and_wait_for_healthy(operator: type) -> None:
    parameters = inspect.signature(operator.__init__).parameters
    assert parameters["require_healthy"].default is None
    assert parameters["wait_for_healthy"].default is None


def test_the_arguments_are_validated_and_usable_in_mapped_tasks() -> None:
    with pytest.raises(ValueError, match="require_healthy: 'yes' is not True, False or None"):
        LambdaRunnerOperator(task_id="t", function_name="f", require_healthy="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="wait_for_healthy: .* is not a positive timedelta"):
        LambdaRunnerOperator(task_id="t", function_name="f", wait_for_healthy=timedelta(0))
    with pytest.raises(ValueError, match="wait_for_healthy: 600 is not a positive timedelta"):
        LambdaRunnerOperator(task_id="t", function_name="f", wait_for_healthy=600)  # type: ignore[arg-type]
    with DAG("mapped", schedule=None):
        mapped = LambdaRunnerOperator.partial(
            task_id="t", function_name="f", require_healthy=True, wait_for_healthy=timedelta(minutes=5)
        ).expand(payload=['{"a": 1}', '{"a": 2}'])
    assert mapped.partial_kwargs["require_healthy"] is True
    assert mapped.partial_kwargs["wait_for_healthy"] == timedelta(minutes=5)


def test_the_poke_interval_of_a_wait_is_a_tenth_of_it_between_5_and_60_s() -> None:
    assert health_poke_interval(timedelta(seconds=20)) == 5.0
    assert health_poke_interval(timedelta(minutes=5)) == 30.0
    assert health_poke_interval(timedelta(hours=2)) == 60.0


# ------------------------------------------------------------------------------------------- refusing


def test_an_unhealthy_dependency_refuses_before_anything_is_launched(
    policy_file: PolicyFile, published: list[Any], no_target: None
) -> None:
    closed = f"tcp://127.0.0.1:{_free_port()}"
    _policy(policy_file, closed)
    op = _lambda()
    with pytest.raises(DependencyUnhealthy) as raised:
        _run(op)
    assert isinstance(raised.value, AirflowFailException)  # not retried
    message = str(raised.value)
    assert message.startswith("LambdaRunnerOperator ingest: not launched: health: 1 of 1 dependencies not healthy")
    assert f"url {closed!r} (tenant acme, network profile vpn) is unhealthy, error_code refused" in message
    assert op.barecount_health is not None
    [result] = op.barecount_health
    assert (result["status"], result["error_code"], result["dependency"]["id"]) == ("unhealthy", "refused", closed)
    [(results, source)] = published
    assert [r.as_dict() for r in results] == op.barecount_health and source == "operator:ingest"
    assert op.barecount_runner_result is None  # nothing ran: no runner_result


def test_a_healthy_profile_launches_and_records_its_check(
    policy_file: PolicyFile, published: list[Any], no_target: None
) -> None:
    server = Listener()
    try:
        _policy(policy_file, f"tcp://127.0.0.1:{server.port}")
        op = _lambda()
        with pytest.raises(Launched):
            _run(op)
    finally:
        server.close()
    assert op.barecount_health and op.barecount_health[0]["status"] == "healthy"
    assert len(published) == 1


def test_require_healthy_false_skips_the_check_the_policy_asks_for(
    policy_file: PolicyFile, monkeypatch: pytest.MonkeyPatch, published: list[Any]
) -> None:
    _policy(policy_file, f"tcp://127.0.0.1:{_free_port()}", require_healthy=True)
    _never_checked(monkeypatch)
    op = _lambda(require_healthy=False)
    with pytest.raises(Launched):
        _run(op)
    assert op.barecount_health is None and published == []


def test_the_policy_s_require_healthy_is_the_default(
    policy_file: PolicyFile, monkeypatch: pytest.MonkeyPatch, no_target: None, published: list[Any]
) -> None:
    _policy(policy_file, f"tcp://127.0.0.1:{_free_port()}", require_healthy=False)
    op = _lambda()
    with pytest.raises(Launched):  # the policy does not require it: not checked, launched
        _run(op)
    assert op.barecount_health is None
    with pytest.raises(DependencyUnhealthy):  # the operator asks for it
        _run(_lambda(require_healthy=True))


def test_a_tenant_the_policy_does_not_declare_is_gated_by_the_defaults(
    policy_file: PolicyFile, published: list[Any], no_target: None
) -> None:
    """An undeclared tenant runs under the policy's defaults: their dependencies and require_healthy too."""
    port = _free_port()
    policy_file(
        "version: 1\ndefaults:\n  network_profiles:\n    vpn:\n      dependencies:\n"
        f"        health_urls: [tcp://127.0.0.1:{port}]\n        require_healthy: true\n"
        "tenants:\n  other: {}\n"
    )
    op = _lambda(tenant="newcomer")
    with pytest.raises(DependencyUnhealthy, match=f"tcp://127.0.0.1:{port}"):
        _run(op)
    assert [(r["dependency"]["tenant"], r["error_code"]) for r in op.barecount_health or []] == [("newcomer", "refused")]
    with pytest.raises(Launched):  # the operator says not to check
        _run(_lambda(tenant="newcomer", require_healthy=False))


def test_a_degraded_dependency_is_refused_where_the_profile_says_so(
    policy_file: PolicyFile, monkeypatch: pytest.MonkeyPatch, published: list[Any], no_target: None
) -> None:
    _policy(policy_file, "tcp://127.0.0.1:9", degraded="refuse")

    def degraded_vpn(specs: Any, *, timeout_s: Any = None, degraded: str = "allow") -> Verdict:
        result = HealthResult(
            status="degraded", dependency=Dependency("vpn_connection", "vpn-0123abcd", "acme", "vpn"),
            latency_ms=1.0, detail="1 of 2 tunnels UP",
        )  # fmt: skip
        return Verdict((result,), degraded=degraded)

    monkeypatch.setattr(runtime_health, "check", degraded_vpn)
    with pytest.raises(DependencyUnhealthy, match=r"\(degraded: refuse\).*vpn_connection 'vpn-0123abcd'.* is degraded"):
        _run(_lambda())
    _policy(policy_file, "tcp://127.0.0.1:9", degraded="allow")
    op = _lambda()
    with pytest.raises(Launched):  # allowed, and recorded
        _run(op)
    assert op.barecount_health and op.barecount_health[0]["status"] == "degraded"


# --------------------------------------------------------------------------------------------- waiting


def test_wait_for_healthy_defers_to_a_health_trigger(
    policy_file: PolicyFile, published: list[Any], no_target: None
) -> None:
    closed = f"tcp://127.0.0.1:{_free_port()}"
    _policy(policy_file, closed, degraded="refuse")
    op = _lambda(wait_for_healthy=timedelta(minutes=10))
    before = datetime.now(UTC)
    with pytest.raises(TaskDeferred) as deferred:
        _run(op)
    assert deferred.value.method_name == "resume_when_healthy"
    trigger = deferred.value.trigger
    assert isinstance(trigger, HealthTrigger)
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    assert getattr(importlib.import_module(module), name)(**kwargs).serialize() == (classpath, kwargs)
    assert [(s["kind"], s["id"]) for s in kwargs["specs"]] == [("url", closed)]
    assert (kwargs["degraded"], kwargs["poke_interval"]) == ("refuse", 60.0)
    end_at = datetime.fromisoformat(kwargs["end_at"])
    assert before + timedelta(minutes=10) <= end_at <= datetime.now(UTC) + timedelta(minutes=10)
    assert op.barecount_health and op.barecount_health[0]["status"] == "unhealthy"  # the first check's


def _event(status: str) -> dict[str, Any]:
    healthy = status == "healthy"
    result = HealthResult(
        status="healthy" if healthy else "unhealthy",
        dependency=Dependency("url", "tcp://127.0.0.1:9", "acme", "vpn"),
        latency_ms=1.0,
        detail="connect: ok" if healthy else "connect: refused",
        error_code=None if healthy else "refused",
    )
    return {"status": status, "verdict": Verdict((result,)).as_dict()}


def test_resumed_healthy_it_launches_without_checking_again(
    policy_file: PolicyFile, monkeypatch: pytest.MonkeyPatch, published: list[Any]
) -> None:
    _policy(policy_file, "tcp://127.0.0.1:9")
    _never_checked(monkeypatch)
    op = _lambda(wait_for_healthy=timedelta(minutes=10))
    ti = SimpleNamespace(task=op, dag_id="health_gate", run_id="r", task_id=op.task_id, try_number=1, map_index=-1)
    with pytest.raises(Launched):
        op.resume_when_healthy({"ti": ti}, _event("healthy"))
    assert op.barecount_health and op.barecount_health[0]["status"] == "healthy"
    assert len(published) == 1


def test_resumed_unhealthy_it_fails_naming_the_dependency(published: list[Any]) -> None:
    op = _lambda(wait_for_healthy=timedelta(minutes=10))
    with pytest.raises(DependencyUnhealthy, match=r"not launched after waiting 0:10:00: .*error_code refused"):
        op.resume_when_healthy({}, _event("unhealthy"))
    assert op.barecount_health and op.barecount_health[0]["error_code"] == "refused"
    with pytest.raises(DependencyUnhealthy, match="health could not be checked: health check failed: boom"):
        op.resume_when_healthy({}, {"status": "error", "message": "health check failed: boom"})


# --------------------------------------------------------------------------------------- runner targets


def _ctx() -> context.RunContext:
    return context.RunContext(
        tenant="acme", pipeline="orders", runner_class="serverless", size="s", network_profile="vpn", dag_id="d",
        run_id="r", task_id="t", try_number=1, map_index=-1, correlation_id="c" * 32, run_token="t" * 40,
    )  # fmt: skip


def test_each_runner_names_its_target() -> None:
    aws = {"aws_conn_id": "aws_prod", "region_name": "eu-west-1"}
    targets = {
        "lambda": LambdaRunnerOperator(task_id="l", function_name="orders-ingest", qualifier="vpn-s", **aws),
        "ecs": EcsRunnerOperator(task_id="e", cluster="etl", task_definition="orders:3", **aws),
        "glue": GlueRunnerOperator(task_id="g", job_name="orders-etl", **aws),
        "emr": EmrServerlessRunnerOperator(
            task_id="m", application_id="00fabc", execution_role_arn="arn:aws:iam::1:role/r",
            job_driver={"sparkSubmit": {"entryPoint": "s3://b/j.py"}}, **aws,
        ),
        "k8s": KubernetesRunnerOperator(
            task_id="k", image="busybox", kubernetes_conn_id="k8s_prod", node_selector={"pool": "etl", "zone": "a"}
        ),
    }  # fmt: skip
    specs = {name: op.runner_health_target(_ctx()) for name, op in targets.items()}
    expected = {
        "lambda": ("lambda_function", "orders-ingest", "aws_prod", {"qualifier": "vpn-s"}),
        "ecs": ("ecs_cluster", "etl", "aws_prod", {}),
        "glue": ("glue_job", "orders-etl", "aws_prod", {}),
        "emr": ("emr_serverless_application", "00fabc", "aws_prod", {}),
        "k8s": ("kubernetes_nodes", "pool=etl,zone=a", "k8s_prod", {"node_selector": {"pool": "etl", "zone": "a"}}),
    }
    for name, spec in specs.items():
        assert spec is not None
        assert (spec.kind, spec.id, spec.conn_id, dict(spec.options)) == expected[name], name
        assert (spec.tenant, spec.network_profile) == ("acme", "vpn")
    assert specs["lambda"].region_name == "eu-west-1"
    dedicated = DedicatedComputeOperator(task_id="d", commands=["true"], image_id="ami-0123456789abcdef0")
    assert dedicated.runner_health_target(_ctx()) is None  # nothing to check before its hosts exist


def test_deferred_until_healthy_then_resumed_by_the_task_runner_it_launches(
    policy_file: PolicyFile, published: list[Any], no_target: None
) -> None:
    """Defer, run the trigger Airflow would rebuild from its kwargs while the dependency comes up, and resume
    as the task runner does (``resume_execution(next_method, {"event": ...})``): the runner launches."""
    import asyncio
    import threading

    port = _free_port()
    _policy(policy_file, f"tcp://127.0.0.1:{port}")
    op = _lambda(wait_for_healthy=timedelta(seconds=30))
    with pytest.raises(TaskDeferred) as deferred:
        _run(op)
    classpath, kwargs = deferred.value.trigger.serialize()
    module, _, name = classpath.rpartition(".")
    trigger = getattr(importlib.import_module(module), name)(**{**kwargs, "poke_interval": 0.5})

    async def first() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("no event")

    started: list[Listener] = []
    timer = threading.Timer(1.0, lambda: started.append(Listener(port)))
    timer.start()
    try:
        payload = asyncio.run(first())
    finally:
        timer.cancel()
        for server in started:
            server.close()
    assert payload["status"] == "healthy"
    ti = SimpleNamespace(task=op, dag_id="health_gate", run_id="r", task_id=op.task_id, try_number=1, map_index=-1)
    with pytest.raises(Launched):
        op.resume_execution(deferred.value.method_name, {"event": payload}, {"ti": ti})
    assert [results[0].status for results, _ in published] == ["unhealthy", "healthy"]
