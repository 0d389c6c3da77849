"""KubernetesRunnerOperator's pod status parser and recording, on real-shape pod fixtures.

The fake Kubernetes API of tests/integration/test_kubernetes_runner.py stores the pods it is sent and the
test writes their status; the fields a real kubelet fills in (imageID, node, termination reasons such as
OOMKilled, termination messages) are tested here on pods of the real shape (tests/fixtures/kubernetes/).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client import V1EnvVar, V1ResourceRequirements

from barecount_provider.operators.base import PolicyViolation, RunnerResult
from barecount_provider.operators.kubernetes import (
    KubernetesPodFailed,
    KubernetesRunnerOperator,
    ObservePodCallback,
    parse_pod,
    pod_as_json,
    pod_resources,
    record_pod_run,
    record_requested,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kubernetes"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


POD_S = {"cpu_request": "250m", "cpu_limit": "500m", "memory_request": "512Mi", "memory_limit": "1Gi"}


def _result() -> RunnerResult:
    result = RunnerResult(runner_class="container", size="s", tenant="acme", pipeline="orders", network_profile="public")
    record_requested(result, POD_S, "s")
    return result


def test_parse_pod_on_fixture_succeeded() -> None:
    run = parse_pod(fixture("pod_succeeded.json"))
    assert (run.name, run.namespace, run.external_run_id) == (
        "transform-7k2m9xq1", "pipelines", "pipelines/transform-7k2m9xq1",
    )
    assert run.phase == "Succeeded" and run.exit_code == 0 and run.termination_reason == "Completed"
    assert run.image_digest == "sha256:2c5b1b3a9f0e4d6c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c"
    assert run.node_name == "ip-10-0-42-17.eu-west-1.compute.internal"
    assert (run.started_at, run.finished_at) == ("2026-11-20T09:00:03Z", "2026-11-20T09:00:08Z")
    assert run.requests == {"cpu": "250m", "memory": "512Mi"} and run.limits == {"cpu": "500m", "memory": "1Gi"}
    assert not run.failed and run.error("base") is None


def test_parse_pod_on_fixture_failed_oomkilled() -> None:
    run = parse_pod(fixture("pod_failed_oomkilled.json"))
    assert run.failed
    assert run.error("base") == (
        "PodFailed.OOMKilled",
        "pod pipelines/transform-p4d8w3zr: container 'base' exited with code 137 (OOMKilled)",
    )


def test_parse_pod_on_fixture_failed_exit_code_with_termination_message() -> None:
    run = parse_pod(fixture("pod_failed_exit_code.json"))
    assert run.error("base") == (
        "PodFailed.Error",
        "pod pipelines/transform-h6t1v0nb: container 'base' exited with code 1 (Error): "
        "ValueError: order 1042 has no customer",
    )


def test_parse_pod_without_status_and_other_container() -> None:
    pending = {"metadata": {"name": "p", "namespace": "n"}, "status": {"phase": "Failed", "reason": "Evicted"}}
    run = parse_pod(pending)
    assert run.exit_code is None and run.image_digest is None and run.failed
    assert run.error("base") == ("PodFailed.Evicted", "pod n/p: container 'base' did not complete (phase Failed, reason Evicted)")
    assert parse_pod(fixture("pod_succeeded.json"), container="sidecar").exit_code is None


def test_record_pod_run_on_fixture_succeeded() -> None:
    result = _result()
    record_pod_run(result, parse_pod(fixture("pod_succeeded.json")), "base")
    data = result.as_dict()
    assert data["external_run_id"] == "pipelines/transform-7k2m9xq1"
    assert data["digests"]["image_digest"].startswith("sha256:2c5b1b3a")
    assert data["digests"]["image"] == "docker.io/library/python:3.11-slim"
    assert data["timings"]["duration_s"] == 5.0
    assert data["timings"]["queued_s"] == 3.0
    assert data["resources_used"]["cpu_request"] == "250m"
    assert data["resources_used"]["memory_limit"] == "1Gi"
    assert data["billing_inputs"] == {"cpu_request_cores": 0.25, "memory_request_bytes": 512 * 1024**2, "runtime_s": 5.0}
    assert data["details"]["node_name"] == "ip-10-0-42-17.eu-west-1.compute.internal"
    assert data["details"]["exit_code"] == 0
    assert data["field_sources"]["digests.image_digest"] == "status.containerStatuses[base].imageID (the part after @)"
    assert data["field_sources"]["resources_used.cpu_usage"].startswith("not reported by the Kubernetes pod status")
    assert result.unexplained_fields() == []


def test_record_pod_run_without_a_pod_explains_every_field() -> None:
    result = _result()
    record_pod_run(result, None, "base", "the pod was never observed (ApiException)")
    assert result.external_run_id is None
    assert result.field_sources["external_run_id"].endswith("the pod was never observed (ApiException)")
    assert result.unexplained_fields() == []


def test_pod_resources_and_pod_as_json() -> None:
    resources = pod_resources({"cpu_request": "1", "cpu_limit": "2", "memory_request": "2Gi", "memory_limit": "4Gi"})
    assert resources.requests == {"cpu": "1", "memory": "2Gi"} and resources.limits == {"cpu": "2", "memory": "4Gi"}
    with pytest.raises(ValueError, match="lacks cpu_limit"):
        pod_resources({"cpu_request": "1", "memory_request": "1Gi", "memory_limit": "1Gi"})
    from kubernetes.client import V1ObjectMeta, V1Pod

    assert pod_as_json(V1Pod(metadata=V1ObjectMeta(name="x", namespace="y"))) == {"metadata": {"name": "x", "namespace": "y"}}


# ------------------------------------------------------------------------ execute() around a stub upstream


class _TI(SimpleNamespace):
    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def _operator(monkeypatch: pytest.MonkeyPatch, pod_fixture: str | None, **kwargs: Any) -> tuple[Any, _TI, dict]:
    """The operator with KubernetesPodOperator.execute replaced by one that 'runs' the fixture pod: it calls
    the callbacks as the upstream does and, for a failed pod, raises as the upstream cleanup does."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk import DAG
    from airflow.sdk.exceptions import AirflowException
    from kubernetes.client import ApiClient

    seen: dict[str, Any] = {}

    def fake_execute(self: Any, context: Any) -> None:
        seen.update(env=list(self.env_vars), labels=dict(self.labels), resources=self.container_resources)
        if pod_fixture is None:
            raise AirflowException("Pod launch failed: pods is forbidden")
        raw = fixture(pod_fixture)
        pod = ApiClient()._ApiClient__deserialize(raw, "V1Pod")
        for callback in self.callbacks:
            callback.on_pod_completion(pod=pod, client=None, mode="sync", operator=self, context=context)
        self.remote_pod = pod
        if raw["status"]["phase"] != "Succeeded":
            raise AirflowException(f"Pod {raw['metadata']['name']} returned a failure.\nremote_pod: {{...}}")

    monkeypatch.setattr(KubernetesPodOperator, "execute", fake_execute)
    emitted: list[Any] = []
    monkeypatch.setattr("barecount_provider.operators.base.get_emitter", lambda: SimpleNamespace(emit=emitted.extend))
    with DAG("k8s_fixture", schedule=None):
        op = KubernetesRunnerOperator(task_id="transform", image="python:3.11-slim", tenant="acme", pipeline="orders", **kwargs)
    ti = _TI(task=op, dag_id="d", run_id="r", task_id="transform", try_number=1, map_index=-1, pushed={}, emitted=emitted)
    return op, ti, seen


def test_execute_on_fixture_succeeded_sets_size_identity_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    op, ti, seen = _operator(
        monkeypatch,
        "pod_succeeded.json",
        size="s",
        env_vars={"MODE": "full", "BARECOUNT_RUN_TOKEN": "forged"},
        labels={"team": "data"},
        container_resources=V1ResourceRequirements(limits={"nvidia.com/gpu": "1", "cpu": "9"}),
    )
    op.execute({"ti": ti})
    env = {var.name: var.value for var in seen["env"] if isinstance(var, V1EnvVar)}
    assert env["MODE"] == "full"
    assert env["BARECOUNT_RUN_TOKEN"] != "forged" and len(env["BARECOUNT_RUN_TOKEN"]) == 40
    assert len(env["BARECOUNT_CORRELATION_ID"]) == 32
    assert seen["labels"]["team"] == "data"
    assert seen["labels"]["barecount.io/tenant"] == "acme" and seen["labels"]["barecount.io/pipeline"] == "orders"
    assert seen["labels"]["barecount.io/run"] == env["BARECOUNT_CORRELATION_ID"]
    assert seen["resources"].requests == {"cpu": "250m", "memory": "512Mi"}
    assert seen["resources"].limits == {"nvidia.com/gpu": "1", "cpu": "500m", "memory": "1Gi"}
    result = ti.pushed["runner_result"]
    assert result["runner_class"] == "container" and result["error"] is None
    assert result["resources_requested"] == {
        "cpu_request": "250m", "cpu_limit": "500m", "memory_request": "512Mi", "memory_limit": "1Gi",
    }
    assert result["external_run_id"] == "pipelines/transform-7k2m9xq1"
    assert ObservePodCallback in op.callbacks
    names = [name for name, *_ in ti.emitted]
    assert "barecount.runner.invocations" in names and "barecount.runner.errors" not in names


def test_execute_on_fixture_failed_publishes_then_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    op, ti, _ = _operator(monkeypatch, "pod_failed_oomkilled.json", size="xs")
    failed: list[Any] = []
    monkeypatch.setattr(op, "on_runner_failed", lambda context, result, event: failed.append(event))
    with pytest.raises(KubernetesPodFailed, match=r"exited with code 137 \(OOMKilled\)"):
        op.execute({"ti": ti})
    result = ti.pushed["runner_result"]
    assert result["error"]["error_class"] == "PodFailed.OOMKilled"
    assert result["timings"]["duration_s"] == 37.0  # what was spent
    assert result["details"]["exit_code"] == 137
    assert failed[0]["pod"]["metadata"]["name"] == "transform-p4d8w3zr"
    errors = [tags for name, _, _, tags in ti.emitted if name == "barecount.runner.errors"]
    assert errors and errors[0]["error_class"] == "PodFailed.OOMKilled"


def test_execute_when_the_pod_never_ran_records_the_upstream_error(monkeypatch: pytest.MonkeyPatch) -> None:
    op, ti, _ = _operator(monkeypatch, None)
    with pytest.raises(KubernetesPodFailed, match="Pod launch failed: pods is forbidden"):
        op.execute({"ti": ti})
    result = ti.pushed["runner_result"]
    assert result["error"] == {"error_class": "AirflowException", "message": "Pod launch failed: pods is forbidden"}
    assert result["field_sources"]["external_run_id"].endswith("the pod was never observed (AirflowException)")


def test_policy_cap_refuses_before_the_pod_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    op, ti, seen = _operator(monkeypatch, "pod_succeeded.json", size="xl")  # built-in max_size is l
    with pytest.raises(PolicyViolation, match="size 'xl' exceeds max_size 'l'"):
        op.execute({"ti": ti})
    assert seen == {} and ti.pushed == {}


def test_bad_arguments_are_refused_when_the_dag_is_parsed() -> None:
    with pytest.raises(ValueError, match="size: 'xxl' is not one of"):
        KubernetesRunnerOperator(task_id="t", image="x", size="xxl")
    op = KubernetesRunnerOperator.partial(task_id="m", image="x", tenant="acme").expand(arguments=[["a"], ["b"]])
    assert op.partial_kwargs["tenant"] == "acme"


def test_deferrable_path_records_on_reentry_on_fixture_succeeded(monkeypatch: pytest.MonkeyPatch) -> None:
    """execute() deferring publishes nothing; trigger_reentry() records the pod the callbacks saw."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk.exceptions import TaskDeferred
    from kubernetes.client import ApiClient

    op, ti, _ = _operator(monkeypatch, "pod_succeeded.json", deferrable=True)

    def defer(self: Any, context: Any) -> None:
        raise TaskDeferred(trigger=SimpleNamespace(), method_name="trigger_reentry")

    def reentry(self: Any, context: Any, event: dict[str, Any]) -> None:
        self.pod = ApiClient()._ApiClient__deserialize(fixture("pod_succeeded.json"), "V1Pod")
        for callback in self.callbacks:
            callback.on_pod_completion(pod=self.pod, client=None, mode="sync", operator=self, context=context)

    monkeypatch.setattr(KubernetesPodOperator, "execute", defer)
    monkeypatch.setattr(KubernetesPodOperator, "trigger_reentry", reentry)
    with pytest.raises(TaskDeferred):
        op.execute({"ti": ti})
    assert ti.pushed == {}
    op.trigger_reentry({"ti": ti}, {"status": "success", "name": "transform-7k2m9xq1", "namespace": "pipelines"})
    assert ti.pushed["runner_result"]["details"]["exit_code"] == 0
    assert ti.pushed["runner_result"]["external_run_id"] == "pipelines/transform-7k2m9xq1"


def test_console_link_from_the_configured_pod_link_on_fixture_pod_succeeded(monkeypatch: pytest.MonkeyPatch) -> None:
    from barecount_provider import config

    result = _result()
    record_pod_run(result, parse_pod(fixture("pod_succeeded.json")), "base")
    assert result.console_link is None
    assert "no [barecount] kubernetes_pod_link" in result.field_sources["console_link"]

    monkeypatch.setenv("AIRFLOW__BARECOUNT__KUBERNETES_POD_LINK", "https://k8s.example/#/pod/{namespace}/{name}?c={cluster}")
    config.cache_clear()
    result = _result()
    run = parse_pod(fixture("pod_succeeded.json"))
    record_pod_run(result, run, "base", cluster="prod")
    assert result.console_link == f"https://k8s.example/#/pod/{run.namespace}/{run.name}?c=prod"
    assert result.field_sources["console_link"].startswith("[barecount] kubernetes_pod_link")
