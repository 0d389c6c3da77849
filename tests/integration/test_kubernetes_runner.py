"""KubernetesRunnerOperator against a fake Kubernetes API on 127.0.0.1 (kmock's KubernetesEmulator), run by
``dag.test()``: the real KubernetesPodOperator, KubernetesHook and kubernetes client, reaching it through a
kube config file (``in_cluster=False``), real HTTP.

kmock stores the objects it is sent and serves them back; it has no scheduler and no kubelet. The fake
kubelet below plays both when a pod is created: it binds the pod to a node and writes the terminal status a
kubelet would (container terminated with the exit code the pod's ``FAKE_EXIT_CODE`` env var asks for, an
imageID, start and finish times). Pod logs are not served (``get_logs=False``). The fields a real kubelet
writes are tested on real-shape pods in tests/unit/test_kubernetes_pod_status.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from barecount_provider import context

from ..conftest import PolicyFile

pytestmark = pytest.mark.integration

NODE_NAME = "kmock-node-1"


def _fake_kubelet_status(pod: dict[str, Any]) -> dict[str, Any]:
    """The terminal status a kubelet would write for the pod's base container."""
    container = (pod.get("spec", {}).get("containers") or [{}])[0]
    env = {var.get("name"): var.get("value") for var in container.get("env") or []}
    exit_code = int(env.get("FAKE_EXIT_CODE") or 0)
    image = container.get("image", "")
    created = datetime.now(UTC).replace(microsecond=0)
    started, finished = created + timedelta(seconds=1), created + timedelta(seconds=3)

    def stamp(moment: datetime) -> str:
        return moment.isoformat().replace("+00:00", "Z")

    return {
        "metadata": {"creationTimestamp": stamp(created), "uid": hashlib.md5(pod["metadata"]["name"].encode()).hexdigest()},
        "spec": {"nodeName": NODE_NAME},
        "status": {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "qosClass": "Burstable",
            "startTime": stamp(created),
            "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp(created)}],
            "containerStatuses": [
                {
                    "name": container.get("name", "base"),
                    "image": f"docker.io/library/{image}",
                    "imageID": f"docker.io/library/{image.split(':')[0]}@sha256:{hashlib.sha256(image.encode()).hexdigest()}",
                    "ready": False,
                    "restartCount": 0,
                    "started": False,
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "reason": "Completed" if exit_code == 0 else "Error",
                            "startedAt": stamp(started),
                            "finishedAt": stamp(finished),
                            **({"message": f"fake kubelet: exit {exit_code}"} if exit_code else {}),
                        }
                    },
                }
            ],
        },
    }


class FakeKubernetes:
    """kmock's KubernetesEmulator on a loopback port, in its own thread and event loop (the operator is
    synchronous and runs its own asyncio loops), with a fake kubelet that completes every created pod."""

    def __init__(self, config_dir: Path, resources: tuple[str, ...] = ("v1/pods", "v1/events")) -> None:
        self.config_file = str(config_dir / "kubeconfig.yaml")
        self.resources = resources
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, name="kmock", daemon=True)
        self.emulator: Any = None
        self.port = 0
        self.error: BaseException | None = None

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # reported to the test through self.error
            self.error = err
            self._ready.set()

    async def _main(self) -> None:
        import kmock

        class KubeletEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
            async def _handle(self, request: Any) -> Any:
                response = await super()._handle(request)
                resource = request.resource
                if request.action == kmock.action.CREATE and resource is not None and resource.plural == "pods":
                    data = request.data
                    namespace = request.namespace or data.get("metadata", {}).get("namespace")
                    key = (resource, namespace, data["metadata"]["name"])
                    self.objects[key].patch(_fake_kubelet_status(dict(self.objects[key].raw)))
                return response

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with KubeletEmulator() as emulator, kmock.Server(emulator, host="127.0.0.1") as server:
            # Listing needs the resource declared (or an object of it): the operator lists pods before it
            # creates its own, and lists the pod's events while it waits (the health check lists nodes).
            for resource in self.resources:
                emulator.resources[resource] = {}
            self.emulator = emulator
            self.port = server.port
            self._ready.set()
            await self._stop.wait()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(timeout=30) or self.error is not None:
            raise RuntimeError(f"kmock did not start: {self.error!r}")
        Path(self.config_file).write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: kmock\n  cluster:\n    server: http://127.0.0.1:{self.port}\n"
            "users:\n- name: kmock\n  user:\n    token: not-a-real-token\n"
            "contexts:\n- name: kmock\n  context:\n    cluster: kmock\n    user: kmock\n    namespace: default\n"
            "current-context: kmock\n",
            encoding="utf-8",
        )

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def created_pods(self, namespace: str) -> list[dict[str, Any]]:
        """Each pod of ``namespace`` as the operator sent it (the first version of its history)."""
        pods = []
        for (resource, pod_namespace, _), obj in list(self.emulator.objects.items()):
            if resource.plural == "pods" and pod_namespace == namespace:
                first = obj.history[0]
                pods.append(dict(first.raw) if first is not None else {})
        return pods


@pytest.fixture(scope="module")
def fake_kubernetes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeKubernetes]:
    server = FakeKubernetes(tmp_path_factory.mktemp("kube"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _example_module() -> Any:
    """dags/example_container.py, loaded by path (dags/ is not a package)."""
    path = Path(__file__).resolve().parents[2] / "dags" / "example_container.py"
    spec = importlib.util.spec_from_file_location("barecount_example_container", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_example(fake: FakeKubernetes, namespace: str, **kwargs: Any) -> tuple[Any, dict[str, Any] | None]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag = _example_module().build_dag(
        kubernetes_conn_id=None, config_file=fake.config_file, namespace=namespace, get_logs=False, **kwargs
    )
    run = dag.test()
    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=run.run_id, key="runner_result", dag_ids=dag.dag_id, task_ids="transform")
        ).first()
        result = XComModel.deserialize_value(row) if row is not None else None
    return run, result


def _env(pod: dict[str, Any]) -> dict[str, str]:
    return {var["name"]: var.get("value") for var in pod["spec"]["containers"][0].get("env") or []}


def test_pod_that_succeeds_carries_identity_size_labels_and_is_recorded(
    fake_kubernetes: FakeKubernetes, airflow_db: None
) -> None:
    run, result = _run_example(fake_kubernetes, "bc-succeeds", size="s")
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]

    (pod,) = fake_kubernetes.created_pods("bc-succeeds")
    env = _env(pod)
    correlation_id = context.correlation_id_for("example_container", run.run_id)
    assert env["BARECOUNT_CORRELATION_ID"] == correlation_id
    assert env["BARECOUNT_RUN_TOKEN"] == context.run_token_for("example_container", run.run_id, "transform", -1, 1)
    assert env["TRACEPARENT"].startswith("00-")
    assert "{{" not in env["ORDERS_DAY"]  # the DAG author's env vars, rendered, are kept
    assert pod["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "250m", "memory": "512Mi"},
        "limits": {"cpu": "500m", "memory": "1Gi"},
    }
    labels = pod["metadata"]["labels"]
    assert labels["barecount.io/tenant"] == "acme"
    assert labels["barecount.io/pipeline"] == "orders"
    assert labels["barecount.io/run"] == correlation_id
    assert labels["barecount.io/size"] == "s" and labels["barecount.io/network-profile"] == "public"

    assert result is not None
    assert (result["runner_class"], result["size"], result["tenant"]) == ("container", "s", "acme")
    assert result["error"] is None
    assert result["external_run_id"] == f"bc-succeeds/{pod['metadata']['name']}"
    assert result["digests"]["image_digest"] == "sha256:" + hashlib.sha256(b"python:3.11-slim").hexdigest()
    assert result["details"]["node_name"] == NODE_NAME
    assert result["details"]["exit_code"] == 0
    assert result["timings"]["duration_s"] == 2.0
    assert result["resources_requested"]["memory_limit"] == "1Gi"
    assert result["resources_used"]["cpu_request"] == "250m"


def test_pod_that_fails_fails_the_task_after_recording(fake_kubernetes: FakeKubernetes, airflow_db: None) -> None:
    run, result = _run_example(fake_kubernetes, "bc-fails", size="xs", env_vars={"FAKE_EXIT_CODE": "3"})
    assert run.state == "failed"
    ti = run.get_task_instance("transform")
    assert ti is not None and ti.state == "failed"

    (pod,) = fake_kubernetes.created_pods("bc-fails")
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "250m", "memory": "256Mi"}
    assert result is not None
    assert result["error"] == {
        "error_class": "PodFailed.Error",
        "message": f"pod bc-fails/{pod['metadata']['name']}: container 'base' exited with code 3 (Error): "
        "fake kubelet: exit 3",
    }
    assert result["details"]["exit_code"] == 3
    assert result["timings"]["duration_s"] == 2.0  # what was spent is still recorded


def test_network_profile_places_the_pod_and_a_contradicting_namespace_is_refused(
    fake_kubernetes: FakeKubernetes, airflow_db: None, policy_file: PolicyFile
) -> None:
    policy_file(
        "version: 1\ntenants:\n  acme:\n    network_profiles:\n      public:\n        pod:\n"
        "          namespace: bc-placed\n          node_selector: {barecount.io/network: public-egress}\n"
        "          service_account_name: acme-public\n"
    )

    run, result = _run_example(fake_kubernetes, "bc-placed", size="xs")  # the same namespace: no conflict
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    (pod,) = fake_kubernetes.created_pods("bc-placed")
    assert pod["spec"]["nodeSelector"] == {"barecount.io/network": "public-egress"}
    assert pod["spec"]["serviceAccountName"] == "acme-public"
    assert result is not None
    assert result["details"]["node_selector"] == {"barecount.io/network": "public-egress"}
    assert result["field_sources"]["details.namespace"] == "namespace: policy network_profiles.public.pod"

    run, result = _run_example(fake_kubernetes, "bc-elsewhere", size="xs")
    assert run.state == "failed"
    assert fake_kubernetes.created_pods("bc-elsewhere") == []  # refused before any pod was created
    assert result is None
