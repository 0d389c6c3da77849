"""The Kubernetes runner: ``KubernetesRunnerOperator`` runs a workload as a Kubernetes pod and records it.

A pod takes its resources and placement per run, so the size profile becomes the base container's requests
and limits (``size_tables.container.<size>.pod`` of the policy) and the run's identity goes into the pod's
environment and labels. The upstream ``KubernetesPodOperator`` does all the talking to the Kubernetes API; a
``KubernetesPodOperatorCallback`` keeps the last state of the pod it saw, and :func:`parse_pod` turns that
state into the runner_result.

What is recorded, and from which pod field, is documented in docs/runners/container.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.cncf.kubernetes.backcompat.backwards_compat_converters import (
    convert_env_vars_or_raise_error,
)
from airflow.providers.cncf.kubernetes.callbacks import KubernetesPodOperatorCallback
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowException, AirflowSkipException, TaskDeferred
from kubernetes.client import ApiClient, V1EnvVar, V1ResourceRequirements
from kubernetes.utils import parse_quantity

from barecount_provider import config
from barecount_provider import context as bc_context
from barecount_provider.operators.base import (
    BARECOUNT_TEMPLATE_FIELDS,
    BareCountRunnerMixin,
    RunnerConsoleLink,
    RunnerResult,
    identity_labels,
    not_reported,
    seconds_between,
)
from barecount_provider.runtime import health as runtime_health

TERMINAL_PHASES = ("Succeeded", "Failed")
POD_SIZE_KEYS = ("cpu_request", "cpu_limit", "memory_request", "memory_limit")
SERVICE = "the Kubernetes pod status"


class KubernetesPodFailed(AirflowException):
    """The pod (its base container) failed, or the upstream operator could not run it."""


# ------------------------------------------------------------------------------------------- pod parser


@dataclasses.dataclass(frozen=True)
class PodRun:
    """What the API server says about one pod run: the fields BareCount records, from the pod's JSON."""

    name: str | None
    namespace: str | None
    phase: str | None
    pod_reason: str | None  # status.reason: Evicted, DeadlineExceeded, ...
    pod_message: str | None
    node_name: str | None
    qos_class: str | None
    created_at: str | None
    scheduled_at: str | None
    started_at: str | None
    finished_at: str | None
    image: str | None
    image_id: str | None
    exit_code: int | None
    termination_reason: str | None  # Completed, Error, OOMKilled, ContainerCannotRun, ...
    termination_message: str | None
    restart_count: int | None
    requests: dict[str, str]
    limits: dict[str, str]

    @property
    def external_run_id(self) -> str | None:
        return f"{self.namespace}/{self.name}" if self.name and self.namespace else None

    @property
    def image_digest(self) -> str | None:
        """``sha256:…`` from imageID (``docker.io/library/python@sha256:…`` or ``docker-pullable://…``)."""
        if not self.image_id or "@" not in self.image_id:
            return None
        return self.image_id.rsplit("@", 1)[1] or None

    @property
    def failed(self) -> bool:
        if self.exit_code is not None:
            return self.exit_code != 0
        return self.phase == "Failed"

    def error(self, container: str) -> tuple[str, str] | None:
        """(error_class, message) of a failed run, from the termination state; None when it succeeded."""
        if not self.failed:
            return None
        reason = self.termination_reason or self.pod_reason or "Failed"
        parts = [f"pod {self.external_run_id or self.name}: container {container!r}"]
        if self.exit_code is not None:
            parts.append(f"exited with code {self.exit_code} ({reason})")
        else:
            parts.append(f"did not complete (phase {self.phase}, reason {reason})")
        detail = self.termination_message or self.pod_message
        message = " ".join(parts) + (f": {detail.strip()}" if detail and detail.strip() else "")
        return f"PodFailed.{reason}", message


def _strings(values: Any) -> dict[str, str]:
    return {str(key): str(value) for key, value in (values or {}).items()}


def parse_pod(pod: Mapping[str, Any], container: str = "base") -> PodRun:
    """The :class:`PodRun` of ``container`` in a pod as the API returns it (camelCase JSON)."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    spec_container: dict[str, Any] = next((c for c in spec.get("containers") or [] if c.get("name") == container), {})
    resources = spec_container.get("resources") or {}
    container_status: dict[str, Any] = next((c for c in status.get("containerStatuses") or [] if c.get("name") == container), {})
    state = container_status.get("state") or {}
    # A restarted container keeps its earlier termination in lastState; the current one wins.
    terminated = state.get("terminated") or (container_status.get("lastState") or {}).get("terminated") or {}
    scheduled: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled" and c.get("status") == "True"),
        {},
    )
    running_since = (state.get("running") or {}).get("startedAt")
    return PodRun(
        name=metadata.get("name"),
        namespace=metadata.get("namespace"),
        phase=status.get("phase"),
        pod_reason=status.get("reason"),
        pod_message=status.get("message"),
        node_name=spec.get("nodeName"),
        qos_class=status.get("qosClass"),
        created_at=metadata.get("creationTimestamp"),
        scheduled_at=scheduled.get("lastTransitionTime"),
        started_at=terminated.get("startedAt") or running_since,
        finished_at=terminated.get("finishedAt"),
        image=container_status.get("image") or spec_container.get("image"),
        image_id=container_status.get("imageID") or None,
        exit_code=terminated.get("exitCode"),
        termination_reason=terminated.get("reason"),
        termination_message=terminated.get("message"),
        restart_count=container_status.get("restartCount"),
        requests=_strings(resources.get("requests")),
        limits=_strings(resources.get("limits")),
    )


def pod_as_json(pod: Any) -> dict[str, Any]:
    """A ``V1Pod`` (or an already-JSON dict) as the API's camelCase JSON, the input of :func:`parse_pod`."""
    if isinstance(pod, Mapping):
        return dict(pod)
    return dict(ApiClient().sanitize_for_serialization(pod))


# ------------------------------------------------------------------------------------------- recording


def pod_resources(pod_size: Mapping[str, Any]) -> V1ResourceRequirements:
    """The size table's ``pod`` entry as the base container's requests and limits."""
    missing = [key for key in POD_SIZE_KEYS if key not in pod_size]
    if missing:
        raise ValueError(f"policy size table: the container size's pod entry lacks {', '.join(missing)}")
    return V1ResourceRequirements(
        requests={"cpu": str(pod_size["cpu_request"]), "memory": str(pod_size["memory_request"])},
        limits={"cpu": str(pod_size["cpu_limit"]), "memory": str(pod_size["memory_limit"])},
    )


def record_requested(result: RunnerResult, pod_size: Mapping[str, Any], size: str) -> None:
    source = f"policy size_tables.container.{size}.pod (set as the base container's resources)"
    for key in POD_SIZE_KEYS:
        result.record(f"resources_requested.{key}", str(pod_size[key]), source)


def record_pod_run(
    result: RunnerResult, run: PodRun | None, container: str, why_absent: str = "", *, cluster: str | None = None
) -> None:
    """Record what the pod reported; every field it does not report is recorded as absent, with why."""
    pod = "pod"
    cs = f"status.containerStatuses[{container}]"
    term = f"{cs}.state.terminated"
    gap = not_reported(SERVICE, why_absent or "no pod state was observed")
    if run is None:
        for path in (
            "external_run_id",
            "digests.image",
            "digests.image_digest",
            "timings.started_at",
            "timings.finished_at",
            "timings.duration_s",
            "resources_used.cpu_request",
            "resources_used.cpu_limit",
            "resources_used.memory_request",
            "resources_used.memory_limit",
            "billing_inputs.cpu_request_cores",
            "billing_inputs.memory_request_bytes",
            "billing_inputs.runtime_s",
            "details.node_name",
            "details.exit_code",
        ):
            result.absent(path, gap)
    else:
        values: list[tuple[str, Any, str]] = [
            ("external_run_id", run.external_run_id, f"{pod} metadata.namespace/metadata.name"),
            ("digests.image", run.image, f"{cs}.image"),
            ("digests.image_id", run.image_id, f"{cs}.imageID"),
            ("digests.image_digest", run.image_digest, f"{cs}.imageID (the part after @)"),
            ("timings.created_at", run.created_at, f"{pod} metadata.creationTimestamp"),
            ("timings.scheduled_at", run.scheduled_at, f"{pod} status.conditions[PodScheduled].lastTransitionTime"),
            ("timings.started_at", run.started_at, f"{term}.startedAt"),
            ("timings.finished_at", run.finished_at, f"{term}.finishedAt"),
            ("timings.duration_s", seconds_between(run.started_at, run.finished_at), f"{term}: finishedAt - startedAt"),
            ("timings.queued_s", seconds_between(run.created_at, run.started_at), f"{term}.startedAt - metadata.creationTimestamp"),
            ("details.phase", run.phase, f"{pod} status.phase"),
            ("details.node_name", run.node_name, f"{pod} spec.nodeName"),
            ("details.qos_class", run.qos_class, f"{pod} status.qosClass"),
            ("details.exit_code", run.exit_code, f"{term}.exitCode"),
            ("details.termination_reason", run.termination_reason, f"{term}.reason"),
            ("details.restart_count", run.restart_count, f"{cs}.restartCount"),
        ]
        for key in POD_SIZE_KEYS:
            kind, _, which = key.partition("_")
            value = (run.requests if which == "request" else run.limits).get(kind)
            values.append((f"resources_used.{key}", value, f"{pod} spec.containers[{container}].resources.{which}s.{kind} (as admitted)"))
        cpu = _quantity(run.requests.get("cpu"))
        memory = _quantity(run.requests.get("memory"))
        values += [
            ("billing_inputs.cpu_request_cores", float(cpu) if cpu is not None else None, f"{pod} spec resources.requests.cpu"),
            ("billing_inputs.memory_request_bytes", int(memory) if memory is not None else None, f"{pod} spec resources.requests.memory"),
            ("billing_inputs.runtime_s", seconds_between(run.started_at, run.finished_at), f"{term}: finishedAt - startedAt"),
        ]
        if run.termination_message:
            values.append(("details.termination_message", run.termination_message, f"{term}.message"))
        if run.pod_reason:
            values.append(("details.pod_reason", run.pod_reason, f"{pod} status.reason"))
        for path, value, source in values:
            if value is None or value == "":
                result.absent(path, not_reported(SERVICE, f"no {source}"))
            else:
                result.record(path, value, source)
    # Usage is not part of a pod's status: it comes from metrics-server / the kubelet's summary API.
    usage_gap = not_reported(SERVICE, "CPU, memory, IO and network usage need metrics-server or Container Insights")
    for path in ("resources_used.cpu_usage", "resources_used.max_memory_used_bytes"):
        result.absent(path, usage_gap)
    template = config.kubernetes_pod_link()
    if template and run is not None and run.name and run.namespace:
        link = template.replace("{namespace}", run.namespace).replace("{name}", run.name).replace("{cluster}", cluster or "")
        result.record("console_link", link, "[barecount] kubernetes_pod_link with the pod's namespace and name")
    else:
        result.absent(
            "console_link",
            "no [barecount] kubernetes_pod_link is configured (a cluster's console URL is the deployment's)"
            if not template
            else "the pod was never observed",
        )
    result.absent("driver_version", "a container runs an image, recorded in digests (no separate driver)")


def _quantity(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return parse_quantity(value)
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------- callback


class ObservePodCallback(KubernetesPodOperatorCallback):
    """Keeps the last pod state the upstream operator read (created, started, completed) on the operator."""

    @staticmethod
    def _keep(pod: Any, operator: Any) -> None:
        if pod is not None and isinstance(operator, KubernetesRunnerOperator):
            operator.observed_pod = pod

    @staticmethod
    def on_pod_creation(*, pod: Any, operator: Any, **kwargs: Any) -> None:
        ObservePodCallback._keep(pod, operator)

    @staticmethod
    def on_pod_starting(*, pod: Any, operator: Any, **kwargs: Any) -> None:
        ObservePodCallback._keep(pod, operator)

    @staticmethod
    def on_pod_completion(*, pod: Any, operator: Any, **kwargs: Any) -> None:
        ObservePodCallback._keep(pod, operator)


# ------------------------------------------------------------------------------------------- operator


class KubernetesRunnerOperator(BareCountRunnerMixin, KubernetesPodOperator):
    """Run a workload as a Kubernetes pod as a BareCount container runner, and record its runner_result.

    Adds to :class:`KubernetesPodOperator`: the tenant's policy checked before the pod is created, the size's
    requests and limits on the base container, the run's identity in the pod's environment
    (BARECOUNT_CORRELATION_ID, BARECOUNT_RUN_TOKEN, TRACEPARENT) and in its labels (tenant, pipeline, run),
    the ``runner_result`` XCom and the runner metrics. A failed pod fails the task after the runner_result is
    published.

    :param image: the container image (prefer a digest-pinned reference).
    :param tenant: see :class:`~barecount_provider.operators.base.BareCountRunnerMixin`.
    :param pipeline: see the mixin.
    :param size: size profile; ``container.<size>.pod`` of the size table becomes the base container's
        requests and limits (cpu and memory replace those of ``container_resources``; its other
        resources, e.g. ephemeral-storage or GPUs, are kept).
    :param network_profile: see the mixin; recorded and put on the pod as the label
        ``barecount.io/network-profile``.
    :param require_healthy: check its network profile's dependencies and the nodes matching the pod's node
        selector (``kubernetes_nodes``) before launching; None: the tenant's policy. See docs/health.md.
    :param wait_for_healthy: a timedelta: wait (deferred) up to this long for them to be healthy; None: fail at
        once when one is not.
    :param callbacks: KubernetesPodOperatorCallback classes; BareCount adds its own observer.
    :param kwargs: every other KubernetesPodOperator argument (namespace, cmds, arguments, env_vars, labels,
        kubernetes_conn_id, config_file, in_cluster, deferrable, on_finish_action, ...).
    """

    runner_class = "container"
    operator_extra_links = (*KubernetesPodOperator.operator_extra_links, RunnerConsoleLink())
    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, *BARECOUNT_TEMPLATE_FIELDS)

    def __init__(
        self,
        *,
        tenant: str | None = None,
        pipeline: str | None = None,
        size: str = "m",
        network_profile: str = "public",
        require_healthy: bool | None = None,
        wait_for_healthy: timedelta | None = None,
        callbacks: Any = None,
        **kwargs: Any,
    ) -> None:
        given = [] if not callbacks else list(callbacks) if isinstance(callbacks, list) else [callbacks]
        super().__init__(
            tenant=tenant,
            pipeline=pipeline,
            size=size,
            network_profile=network_profile,
            require_healthy=require_healthy,
            wait_for_healthy=wait_for_healthy,
            callbacks=[*given, ObservePodCallback],
            **kwargs,
        )
        self.observed_pod: Any = None

    # ------------------------------------------------------------------------------------ execution

    def execute(self, context: Any) -> Any:
        ctx = self.barecount_context(context)
        pod_size = self.governed_resources(ctx).get("pod", {})  # raises PolicyViolation before any pod exists
        self._place(ctx)
        self.check_health_before_launch(ctx)  # DependencyUnhealthy, or a deferral, before any pod exists
        self._prepare_pod(ctx, pod_size)
        return self._run_and_record(context, ctx, pod_size, lambda: super(KubernetesRunnerOperator, self).execute(context))

    def trigger_reentry(self, context: Any, event: dict[str, Any]) -> Any:
        """The deferrable path's second half: the pod ran while the task was deferred."""
        ctx = self.barecount_context(context)
        pod_size = self.governed_resources(ctx).get("pod", {})
        return self._run_and_record(
            context, ctx, pod_size, lambda: super(KubernetesRunnerOperator, self).trigger_reentry(context, event)
        )

    def runner_health_target(self, ctx: bc_context.RunContext) -> runtime_health.DependencySpec:
        """The nodes this pod may run on: ``Ready`` nodes matching its node selector (after the network
        profile's placement), through ``kubernetes_conn_id``. Its id is the selector (``*``: any node)."""
        selector = {str(key): str(value) for key, value in (self.node_selector or {}).items()}
        return runtime_health.runner_spec(
            "kubernetes_nodes",
            ",".join(f"{key}={value}" for key, value in sorted(selector.items())) or "*",
            tenant=ctx.tenant,
            network_profile=ctx.network_profile,
            conn_id=self.kubernetes_conn_id,
            node_selector=selector,
        )

    def _place(self, ctx: bc_context.RunContext) -> None:
        """The network profile's namespace, node selector and service account, set on this run's pod."""
        placement, source = self.network_placement(ctx, "pod")
        if "namespace" in placement:
            self.refuse_conflict(ctx, "namespace", self.namespace, placement["namespace"], source)
            self.namespace = placement["namespace"]
        if "service_account_name" in placement:
            self.refuse_conflict(
                ctx, "service_account_name", self.service_account_name, placement["service_account_name"], source
            )
            self.service_account_name = placement["service_account_name"]
        for label, value in (placement.get("node_selector") or {}).items():
            given = (self.node_selector or {}).get(label)
            self.refuse_conflict(ctx, f"node_selector[{label!r}]", given, value, source)
            self.node_selector = {**(self.node_selector or {}), label: value}

    def _placement_sources(self, ctx: bc_context.RunContext) -> str:
        placement, source = self.network_placement(ctx, "pod")
        return source if placement else "operator arguments (the policy places no such profile)"

    def _prepare_pod(self, ctx: bc_context.RunContext, pod_size: Mapping[str, Any]) -> None:
        """Size, identity and labels, set on this run's pod before the upstream operator builds it."""
        resources = pod_resources(pod_size)
        given = self.container_resources
        if given is not None:  # keep what the size does not set (ephemeral-storage, GPUs)
            given_json = ApiClient().sanitize_for_serialization(given) or {}
            resources.requests = {**(given_json.get("requests") or {}), **resources.requests}
            resources.limits = {**(given_json.get("limits") or {}), **resources.limits}
        self.container_resources = resources

        identity = self.identity_env(ctx)
        env = convert_env_vars_or_raise_error(self.env_vars) if self.env_vars else []
        env = [var for var in env if var.name not in identity]
        self.env_vars = [*env, *(V1EnvVar(name=name, value=value) for name, value in identity.items())]

        self.labels = {**(self.labels or {}), **identity_labels(ctx)}

    def _run_and_record(
        self, context: Any, ctx: bc_context.RunContext, pod_size: Mapping[str, Any], run: Callable[[], Any]
    ) -> Any:
        started_at = datetime.now(UTC)
        failure: BaseException | None = None
        try:
            value = run()
        except TaskDeferred:
            raise  # the pod runs on; trigger_reentry records it
        except AirflowSkipException:
            self._publish(context, ctx, pod_size, started_at, None)
            raise
        except Exception as err:
            failure = err
            value = None
        result = self._publish(context, ctx, pod_size, started_at, failure)
        if result.error is not None:
            self.log.error("Pod failed: %s", result.error["message"])
            pod = self._final_pod()
            self.on_runner_failed(
                context, result, {"pod": pod_as_json(pod) if pod is not None else None, "error": result.error}
            )
            raise KubernetesPodFailed(result.error["message"]) from failure
        return value

    def _final_pod(self) -> Any:
        """The pod's last state: the upstream operator's final read when terminal, else the callbacks'."""
        remote = self.remote_pod
        if remote is not None and getattr(remote.status, "phase", None) in TERMINAL_PHASES:
            return remote
        return self.observed_pod or remote

    def _publish(
        self,
        context: Any,
        ctx: bc_context.RunContext,
        pod_size: Mapping[str, Any],
        started_at: datetime,
        failure: BaseException | None,
    ) -> RunnerResult:
        result = self.new_runner_result(ctx)
        record_requested(result, pod_size, ctx.size)
        pod = self._final_pod()
        run = parse_pod(pod_as_json(pod), self.base_container_name) if pod is not None else None
        why = "" if pod is not None else f"the pod was never observed ({type(failure).__name__ if failure else 'no pod'})"
        record_pod_run(result, run, self.base_container_name, why, cluster=self.cluster_context)
        result.record("details.wall_started_at", started_at.isoformat(), "clock of the Airflow worker")
        result.record("details.container", self.base_container_name, "operator argument base_container_name")
        placement_source = self._placement_sources(ctx)
        result.record("details.namespace", self.namespace, f"namespace: {placement_source}")
        result.record("details.node_selector", dict(self.node_selector or {}), f"node_selector: {placement_source}")
        error = run.error(self.base_container_name) if run is not None else None
        if error is not None:
            result.fail(*error)
        elif failure is not None:
            # The upstream message ends with a dump of the whole pod: its first line is the error.
            first_line = (str(failure).strip().splitlines() or [type(failure).__name__])[0]
            result.fail(type(failure).__name__, first_line[:500])
        self.publish_runner_result(context, result)
        return result
