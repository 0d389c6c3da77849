"""The runner operators' shared base: argument validation, policy caps, identity, runner_result, metrics."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from barecount_provider import context
from barecount_provider.operators.base import (
    RUNNER_RESULT_XCOM_KEY,
    PolicyViolation,
    RunnerResult,
    check_policy,
    not_reported,
    runner_metric_points,
)
from barecount_provider.operators.lambda_function import LambdaRunnerOperator
from barecount_provider.telemetry import metrics

from ..conftest import PolicyFile

POLICY = """
version: 1
defaults:
  max_size: l
tenants:
  acme:
    allowed_runner_classes: [serverless, local]
    max_size: m
    allowed_network_profiles: [public, vpn]
    limits: {max_workers: 20, max_hosts: 2, max_parallel_tasks: 8}
  globex:
    allowed_runner_classes: [container]
"""


@pytest.fixture
def acme_policy(policy_file: PolicyFile) -> None:
    policy_file(POLICY)


def _ctx(tenant: str = "acme", size: str = "m", network_profile: str = "public", runner_class: str = "serverless"):
    return context.RunContext(
        tenant=tenant,
        pipeline="orders",
        runner_class=runner_class,
        size=size,
        network_profile=network_profile,
        dag_id="d",
        run_id="r",
        task_id="t",
        try_number=1,
        map_index=-1,
        correlation_id="c" * 32,
        run_token="t" * 40,
    )


# ------------------------------------------------------------------------------------------ arguments


def test_runner_arguments_are_validated_when_the_dag_is_parsed() -> None:
    with pytest.raises(ValueError, match=r"size: 'xxl' is not one of xs, s, m, l, xl"):
        LambdaRunnerOperator(task_id="t", function_name="f", size="xxl")
    with pytest.raises(ValueError, match=r"network_profile: 'lan' is not one of public, vpn"):
        LambdaRunnerOperator(task_id="t", function_name="f", network_profile="lan")
    with pytest.raises(ValueError, match="tenant"):
        LambdaRunnerOperator(task_id="t", function_name="f", tenant="{{ dag_run.conf['tenant'] }}")


def test_defaults_template_fields_and_forced_tail_log() -> None:
    op = LambdaRunnerOperator(task_id="t", function_name="f", log_type="None")
    assert (op.tenant, op.pipeline, op.size, op.network_profile) == (None, None, "m", "public")
    assert op.log_type == "Tail"
    assert op.runner_class == "serverless"
    assert {"function_name", "payload", "qualifier", "pipeline", "size", "network_profile"} <= set(op.template_fields)
    assert "tenant" not in op.template_fields
    templated = LambdaRunnerOperator(task_id="t2", function_name="f", size="{{ params.size }}")
    assert templated.size == "{{ params.size }}"  # checked against the policy at execute time


def test_usable_in_mapped_tasks() -> None:
    from airflow.sdk import DAG

    with DAG("mapped_runner", schedule=None):
        mapped = LambdaRunnerOperator.partial(task_id="m", function_name="f", tenant="acme").expand(
            size=["s", "m"]
        )
    assert mapped.partial_kwargs["tenant"] == "acme"


def test_context_takes_the_operators_own_arguments() -> None:
    from airflow.sdk import DAG

    with DAG("ctx_dag", schedule=None, tags=["tenant:fromtag", "pipeline:tagpipe"]) as dag:
        op = LambdaRunnerOperator(task_id="t", function_name="f", tenant="acme", size="s", network_profile="vpn")
    ti = SimpleNamespace(task=op, dag_id=dag.dag_id, run_id="r1", task_id="t", try_number=1, map_index=-1)
    ctx = op.barecount_context({"ti": ti})
    assert (ctx.tenant, ctx.pipeline, ctx.size, ctx.network_profile, ctx.runner_class) == (
        "acme",
        "tagpipe",
        "s",
        "vpn",
        "serverless",
    )


def test_identity_env_carries_the_listeners_traceparent(monkeypatch: pytest.MonkeyPatch) -> None:
    op = LambdaRunnerOperator(task_id="t", function_name="f")
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    monkeypatch.setenv("TRACEPARENT", traceparent)
    env = op.identity_env(_ctx())
    assert env == {"BARECOUNT_CORRELATION_ID": "c" * 32, "BARECOUNT_RUN_TOKEN": "t" * 40, "TRACEPARENT": traceparent}
    monkeypatch.delenv("TRACEPARENT")
    assert "TRACEPARENT" not in op.identity_env(_ctx())


# -------------------------------------------------------------------------------------------- policy


@pytest.mark.parametrize(
    ("ctx_args", "check_args", "rule", "message"),
    [
        ({"size": "xl"}, {}, "max_size", "tenant 'acme': size 'xl' exceeds max_size 'm'"),
        ({"size": "big"}, {}, "size", "tenant 'acme': size 'big' is not one of xs, s, m, l, xl"),
        (
            {"network_profile": "privatelink"},
            {},
            "allowed_network_profiles",
            "tenant 'acme': network profile 'privatelink' is not allowed (allowed_network_profiles: public, vpn)",
        ),
        (
            {"runner_class": "dedicated"},
            {},
            "allowed_runner_classes",
            "tenant 'acme': runner class 'dedicated' is not allowed (allowed_runner_classes: serverless, local)",
        ),
        ({}, {"workers": 21}, "max_workers", "tenant 'acme': workers 21 exceeds max_workers 20"),
        ({}, {"hosts": 3}, "max_hosts", "tenant 'acme': hosts 3 exceeds max_hosts 2"),
    ],
)
def test_policy_violation_names_tenant_limit_and_requested_value(
    acme_policy: None, ctx_args: dict[str, str], check_args: dict[str, int], rule: str, message: str
) -> None:
    with pytest.raises(PolicyViolation) as raised:
        check_policy(_ctx(**ctx_args), **check_args)
    assert str(raised.value) == message
    assert raised.value.policy_exception["rule"] == rule
    assert raised.value.policy_exception["tenant"] == "acme"
    from airflow.sdk.exceptions import AirflowFailException

    assert isinstance(raised.value, AirflowFailException)  # never retried


def test_policy_within_caps_returns_the_size_table_entry(acme_policy: None) -> None:
    op = LambdaRunnerOperator(task_id="t", function_name="f")
    assert op.governed_resources(_ctx(size="s"), workers=20, hosts=2) == {
        "lambda": {"memory_mb": 512, "ephemeral_storage_mb": 512}
    }
    # an undeclared tenant gets the file's defaults (max_size l)
    assert check_policy(_ctx(tenant="initech", size="l"))["lambda"]["memory_mb"] == 3008
    with pytest.raises(PolicyViolation, match="runner class 'serverless' is not allowed"):
        check_policy(_ctx(tenant="globex"))


# ------------------------------------------------------------------------------------- runner_result


def _result() -> RunnerResult:
    return RunnerResult(runner_class="serverless", size="m", tenant="acme", pipeline="orders", network_profile="public")


def test_runner_result_schema_is_json_and_every_empty_field_is_explained() -> None:
    result = _result()
    assert set(result.unexplained_fields()) >= {"external_run_id", "console_link", "driver_version", "timings"}
    result.record("timings.duration_s", 0.5, "REPORT Duration")
    result.absent("timings.init_duration_s", not_reported("AWS Lambda", "warm start"))
    result.record("external_run_id", "req-1", "RequestId")
    for path in ("console_link", "driver_version", "resources_requested.memory_mb", "resources_used.x",
                 "digests.code_sha256", "billing_inputs.requests"):
        result.absent(path, not_reported("the emulator/service"))
    assert result.unexplained_fields() == []
    data = json.loads(json.dumps(result.as_dict()))
    assert data["schema_version"] == 1
    assert set(data) == {
        "runner_class", "size", "tenant", "pipeline", "network_profile", "resources_requested", "resources_used",
        "timings", "digests", "billing_inputs", "external_run_id", "console_link", "driver_version", "error",
        "details", "field_sources", "schema_version",
    }
    assert data["field_sources"]["timings.init_duration_s"] == "not reported by AWS Lambda: warm start"
    with pytest.raises(ValueError, match="'bogus' is not one of"):
        result.record("bogus.key", 1, "x")


def test_runner_metrics_only_for_reported_values_and_errors_by_class() -> None:
    result = _result()
    result.record("timings.duration_s", 0.25, "s")
    result.record("resources_used.max_memory_used_mb", 70, "s")
    result.absent("timings.billed_duration_s", "not reported")
    result.fail("FunctionError.Unhandled", "boom")
    points = {name: (kind, value, tags) for name, kind, value, tags in runner_metric_points(result, _ctx().metric_tags())}
    assert set(points) == {
        "barecount.runner.invocations", "barecount.runner.duration", "barecount.runner.memory_used",
        "barecount.runner.errors",
    }
    assert points["barecount.runner.duration"][1] == 250.0
    assert points["barecount.runner.memory_used"][1] == 70 * 1024 * 1024
    assert points["barecount.runner.errors"][2]["error_class"] == "FunctionError.Unhandled"
    assert points["barecount.runner.invocations"][2] == {
        "tenant": "acme", "pipeline": "orders", "runner_class": "serverless", "size": "m", "dag_id": "d", "task_id": "t",
    }
    for name in points:
        assert name in metrics.CATALOG


class _TI(SimpleNamespace):
    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def test_publish_pushes_the_xcom_and_never_raises_from_emission(monkeypatch: pytest.MonkeyPatch) -> None:
    op = LambdaRunnerOperator(task_id="t", function_name="f", tenant="acme")
    ti = _TI(task=op, dag_id="d", run_id="r", task_id="t", try_number=1, map_index=-1, pushed={})

    class Broken:
        def emit(self, points: Any) -> None:
            raise RuntimeError("sink down")

    monkeypatch.setattr("barecount_provider.operators.base.get_emitter", lambda: Broken())
    before = metrics.EMIT_FAILURES.counts[("runner", "emit")]
    op.publish_runner_result({"ti": ti}, _result())
    assert ti.pushed[RUNNER_RESULT_XCOM_KEY]["tenant"] == "acme"
    assert metrics.EMIT_FAILURES.counts[("runner", "emit")] == before + 1


# ---------------------------------------------------------------------- policy targets and placements

TARGETS_POLICY = """
version: 1
tenants:
  acme:
    network_profiles:
      private_vpc:
        ecs: {subnets: [subnet-private-a], security_groups: [sg-acme], assign_public_ip: DISABLED}
    runner_targets:
      lambda:
        ingest: {"private_vpc/l": vpc-large, private_vpc: vpc, "*": live}
      glue:
        orders-etl: {public: orders-etl-public}
"""


@pytest.fixture
def targets_policy(policy_file: PolicyFile) -> None:
    policy_file(TARGETS_POLICY)


def test_policy_target_most_specific_selector_wins(targets_policy: None) -> None:
    op = LambdaRunnerOperator(task_id="t", function_name="ingest")
    assert op.policy_target(_ctx(network_profile="private_vpc", size="l"), "lambda", "ingest") == (
        "vpc-large",
        "policy runner_targets.lambda.ingest.private_vpc/l",
    )
    assert op.policy_target(_ctx(network_profile="private_vpc", size="s"), "lambda", "ingest")[0] == "vpc"
    assert op.policy_target(_ctx(network_profile="public"), "lambda", "ingest")[0] == "live"
    # a name the policy does not map keeps the author's argument, and says so
    target, source = op.policy_target(_ctx(), "lambda", "other", given="3")
    assert target == "3" and source.startswith("operator argument")
    # the same name for another tenant: not mapped
    assert op.policy_target(_ctx(tenant="globex"), "lambda", "ingest", given=None)[0] is None


def test_policy_target_refuses_an_unmapped_profile_and_a_conflicting_argument(targets_policy: None) -> None:
    op = LambdaRunnerOperator(task_id="t", function_name="ingest")
    with pytest.raises(PolicyViolation) as unmapped:
        op.policy_target(_ctx(network_profile="vpn"), "glue", "orders-etl")
    assert unmapped.value.policy_exception == {
        "rule": "runner_targets",
        "tenant": "acme",
        "limit": "runner_targets.glue.orders-etl",
        "requested": "vpn/m",
    }
    assert "has no entry for network profile 'vpn' and size 'm' (it has: public)" in str(unmapped.value)
    with pytest.raises(PolicyViolation, match="'7' was given but the policy's runner_targets.lambda.ingest"):
        op.policy_target(_ctx(network_profile="private_vpc"), "lambda", "ingest", given="7")
    # the same value as the policy's is not a conflict
    assert op.policy_target(_ctx(network_profile="private_vpc"), "lambda", "ingest", given="vpc")[0] == "vpc"


def test_network_placement_and_conflicts(targets_policy: None) -> None:
    op = LambdaRunnerOperator(task_id="t", function_name="ingest")
    placement, source = op.network_placement(_ctx(network_profile="private_vpc"), "ecs")
    assert placement == {"subnets": ["subnet-private-a"], "security_groups": ["sg-acme"], "assign_public_ip": "DISABLED"}
    assert source == "policy network_profiles.private_vpc.ecs"
    assert op.network_placement(_ctx(network_profile="public"), "ecs")[0] == {}
    ctx = _ctx(network_profile="private_vpc")
    op.refuse_conflict(ctx, "subnets", None, ["subnet-private-a"], source)  # nothing given: fine
    op.refuse_conflict(ctx, "subnets", ["subnet-private-a"], ["subnet-private-a"], source)  # the same: fine
    with pytest.raises(PolicyViolation, match=r"subnets \['subnet-x'\] was given but policy network_profiles"):
        op.refuse_conflict(ctx, "subnets", ["subnet-x"], ["subnet-private-a"], source)


def test_every_runner_operator_keeps_its_upstream_links_and_adds_the_console_link() -> None:
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    from barecount_provider.operators.base import RunnerConsoleLink
    from barecount_provider.operators.ec2 import DedicatedComputeOperator
    from barecount_provider.operators.ecs import EcsRunnerOperator
    from barecount_provider.operators.emr_serverless import EmrServerlessRunnerOperator
    from barecount_provider.operators.glue import GlueRunnerOperator
    from barecount_provider.operators.kubernetes import KubernetesRunnerOperator

    classes = (
        LambdaRunnerOperator,
        GlueRunnerOperator,
        EmrServerlessRunnerOperator,
        KubernetesRunnerOperator,
        EcsRunnerOperator,
        DedicatedComputeOperator,
    )
    for cls in classes:
        upstream = cls.__mro__[2]  # (cls, BareCountRunnerMixin, upstream operator, ...)
        names = [link.name for link in cls.operator_extra_links]
        assert names == [*(link.name for link in upstream.operator_extra_links), RunnerConsoleLink.name], cls

    with DAG("links", schedule=None) as dag:
        LambdaRunnerOperator(task_id="ingest", function_name="f", tenant="acme")
    restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    assert RunnerConsoleLink.name in restored.get_task("ingest").extra_links
