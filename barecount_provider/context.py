"""RunContext: who, what and where of one task try, resolved once and used by every part of BareCount.

Resolution order (first that declares a value wins):

1. operator arguments (BareCount runner operators carry ``tenant``, ``pipeline``, ``size``,
   ``network_profile`` and ``runner_class`` attributes);
2. the task's and the DAG's *declared* params (their defaults, never a run's conf), then the DAG's
   ``default_args``;
3. DAG tags of the form ``tenant:acme`` and ``pipeline:orders``;
4. ``[barecount] default_tenant`` for the tenant and the DAG id for the pipeline.

The tenant never comes from a run's conf: a user who triggers a run must not be able to charge or read as
another tenant. Identifiers are keyed hashes of the run's identity, so every task process of a run derives
the same correlation ID and trace ID with no shared state.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Mapping
from typing import Any

from barecount_provider import config
from barecount_provider.adapters import airflow as airflow_adapter

RUNNER_CLASSES = ("serverless", "container", "managed_etl", "dedicated", "local")
NETWORK_PROFILES = ("public", "vpn", "privatelink", "private_vpc", "on_prem")
DEFAULT_SIZE = "m"
DEFAULT_NETWORK_PROFILE = "public"

ENV_CORRELATION_ID = "BARECOUNT_CORRELATION_ID"
ENV_RUN_TOKEN = "BARECOUNT_RUN_TOKEN"
ENV_TRACEPARENT = "TRACEPARENT"

_INSECURE_KEY = b"barecount-insecure-development-key"


def _key() -> bytes:
    return config.secret_key() or _INSECURE_KEY


@functools.lru_cache(maxsize=4)
def _keyed_blake2b(key: bytes) -> Any:
    """BLAKE2b in its keyed mode (a MAC by design, RFC 7693), keyed once per key; each use copies it. A key
    longer than BLAKE2b's 64 bytes is first hashed to 64 bytes, as HMAC does with a long key."""
    keyed = key
    if len(keyed) > hashlib.blake2b.MAX_KEY_SIZE:
        keyed = hashlib.blake2b(keyed, digest_size=hashlib.blake2b.MAX_KEY_SIZE, person=b"barecount-key").digest()
    return hashlib.blake2b(key=keyed, digest_size=32, person=b"barecount")


def keyed_hex(purpose: str, *parts: object, length: int = 32) -> str:
    """A keyed hash (keyed BLAKE2b-256) of ``parts`` under the deployment's secret key, as ``length`` hex
    characters (at most 64).

    Keyed BLAKE2b rather than HMAC-SHA256: the same guarantee (unguessable without the key), in one pass of
    CPython's built-in BLAKE2 instead of two of OpenSSL's SHA-256; it runs several times in every task try
    (correlation ID, run token, trace and span IDs), in a process forked from the scheduler where every
    touch of OpenSSL's inherited state is a copy-on-write page fault."""
    message = "\x1f".join([purpose, *(str(part) for part in parts)]).encode()
    mac = _keyed_blake2b(_key()).copy()
    mac.update(message)
    return mac.hexdigest()[:length]


def correlation_id_for(dag_id: str, run_id: str) -> str:
    """Same for every task and retry of one DAG run; differs between runs."""
    return keyed_hex("correlation", dag_id, run_id)


def run_token_for(dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int) -> str:
    """Unique per task try, unguessable without the key, stable across deferral and HITL resumes."""
    return keyed_hex("run-token", dag_id, run_id, task_id, map_index, try_number, length=40)


def trace_id_for(dag_id: str, run_id: str) -> int:
    """The 128-bit trace id of a run when BareCount runs its own tracer provider."""
    return int(keyed_hex("trace", dag_id, run_id), 16) or 1


def run_span_id_for(dag_id: str, run_id: str) -> int:
    """Span id of the run's root span (emitted scheduler-side when the run ends)."""
    return int(keyed_hex("run-span", dag_id, run_id, length=16), 16) or 1


def task_span_id_for(dag_id: str, run_id: str, task_id: str, map_index: int) -> int:
    """Span id of a task's span (all its tries); the target of downstream tasks' links."""
    return int(keyed_hex("task-span", dag_id, run_id, task_id, map_index, length=16), 16) or 1


def sampling_fraction(dag_id: str, run_id: str) -> float:
    """A uniform number in [0, 1) fixed by the run's identity: the run is sampled if it is below the ratio."""
    return int(keyed_hex("sample", dag_id, run_id, length=13), 16) / float(1 << 52)


@dataclasses.dataclass(frozen=True)
class RunContext:
    """The who/what/where of one task try."""

    tenant: str
    pipeline: str
    runner_class: str
    size: str
    network_profile: str
    dag_id: str
    run_id: str
    task_id: str
    try_number: int
    map_index: int
    correlation_id: str
    run_token: str
    image_or_driver_digest: str | None = None
    traceparent: str | None = None

    def metric_tags(self, **extra: str) -> dict[str, str]:
        """Bounded tags only: run_id, try_number and the correlation id never become tags."""
        tags = {
            "tenant": self.tenant,
            "pipeline": self.pipeline,
            "runner_class": self.runner_class,
            "size": self.size,
            "dag_id": self.dag_id,
            "task_id": self.task_id,
        }
        tags.update(extra)
        return tags

    def log_fields(self) -> dict[str, Any]:
        return {
            "correlation_id": self.correlation_id,
            "run_token": self.run_token,
            "tenant": self.tenant,
            "pipeline": self.pipeline,
            "runner_class": self.runner_class,
            "size": self.size,
            "network_profile": self.network_profile,
            "image_or_driver_digest": self.image_or_driver_digest,
        }

    def environment(self) -> dict[str, str]:
        env = {ENV_CORRELATION_ID: self.correlation_id, ENV_RUN_TOKEN: self.run_token}
        if self.traceparent:
            env[ENV_TRACEPARENT] = self.traceparent
        return env

    def export_to_environment(self, environ: Any = None) -> None:
        """Make the identity visible to the task's code and every process it starts."""
        target = os.environ if environ is None else environ
        for key, value in self.environment().items():  # not update(): MutableMapping's ABC checks first
            target[key] = value

    def with_trace(self, traceparent: str | None) -> RunContext:
        """A copy with ``traceparent`` set (what ``dataclasses.replace`` gives, without its field walk)."""
        copy = object.__new__(RunContext)
        copy.__dict__.update(self.__dict__)
        object.__setattr__(copy, "traceparent", traceparent)
        return copy


IDENTITY_KEYS = ("tenant", "pipeline", "size", "network_profile", "barecount_enabled")

# Declared params as parsed, before any run's conf: dag_id -> {"": dag's, task_id: task's}. Airflow merges a
# run's conf into the *same* Param objects when it builds a task's context (Param.resolve sets its value),
# so by the time a listener runs, dag.params and task.params may hold the conf's values. The cluster policy
# (barecount_provider.cluster_policies.dag_policy) snapshots them when the DAG file is parsed, in every process that
# parses it, the task process included.
_DECLARED: dict[str, dict[str, dict[str, Any]]] = {}


def _live_params(obj: Any) -> dict[str, Any]:
    params = getattr(obj, "params", None)
    if not params:
        return {}
    try:
        if hasattr(params, "get_param"):  # ParamsDict: the value lives on each Param
            return {key: params.get_param(key).value for key in params if key in IDENTITY_KEYS}
        return {key: value for key, value in dict(params).items() if key in IDENTITY_KEYS}
    except Exception:
        return {}


def snapshot_declared(dag: Any) -> None:
    """Record the DAG's and its tasks' declared identity params at parse time (called by the cluster policy)."""
    dag_id = getattr(dag, "dag_id", None)
    if not dag_id:
        return
    snapshot = {"": _live_params(dag)}
    for task in getattr(dag, "tasks", None) or ():
        task_params = _live_params(task)
        if task_params:
            snapshot[task.task_id] = task_params
    _DECLARED[dag_id] = snapshot


def _declared_params(obj: Any, conf_keys: frozenset[str] = frozenset()) -> Mapping[str, Any]:
    """The declared params of a task or DAG: the parse-time snapshot when there is one; otherwise the live
    params, minus any key a run's conf may have overwritten."""
    if obj is None:
        return {}
    dag = getattr(obj, "dag", None) if hasattr(obj, "task_id") else obj
    dag_id = getattr(dag, "dag_id", None)
    snapshot = _DECLARED.get(dag_id) if isinstance(dag_id, str) else None
    if snapshot is not None:
        return snapshot.get(obj.task_id, {}) if hasattr(obj, "task_id") else snapshot.get("", {})
    return {key: value for key, value in _live_params(obj).items() if key not in conf_keys}


def is_template(value: Any) -> bool:
    """Whether an operator argument is a Jinja template (rendered when the task runs, not when it is parsed)."""
    return isinstance(value, str) and "{{" in value


def tenant_argument(tenant: Any) -> str | None:
    """An operator's ``tenant`` argument, checked when the DAG is parsed: None (the DAG's declaration) or a
    name; a template is refused, since a run's conf must never choose the tenant. ``ValueError`` otherwise."""
    if tenant is not None and (not isinstance(tenant, str) or not tenant or is_template(tenant)):
        raise ValueError(f"tenant: {tenant!r} is not a tenant name (templates are refused: a run must not choose it)")
    return tenant


def tags_of(dag: Any) -> set[str]:
    tags = getattr(dag, "tags", None) or ()
    return {str(tag) for tag in tags}


def _from_tags(tags: set[str], key: str) -> str | None:
    prefix = f"{key}:"
    for tag in sorted(tags):
        if tag.startswith(prefix) and len(tag) > len(prefix):
            return tag[len(prefix) :].strip()
    return None


def _take_declared(found: dict[str, str | None], missing: list[str], source: Mapping[str, Any]) -> list[str]:
    """Fill ``found`` with the non-empty strings ``source`` declares for the ``missing`` keys; the keys still
    missing."""
    for key in missing:
        candidate = source.get(key)
        if isinstance(candidate, str) and candidate:
            found[key] = candidate
    return [key for key in missing if found[key] is None]


def declared_values(
    task: Any, dag: Any, keys: tuple[str, ...], conf_keys: frozenset[str] = frozenset(), tags: set[str] | None = None
) -> dict[str, str | None]:
    """:func:`declared` of each of ``keys``, reading each source once (the operator's attributes, the task's
    and the DAG's declared params, the DAG's ``default_args``, its tags) instead of once per key."""
    found: dict[str, str | None] = dict.fromkeys(keys)
    missing = list(keys)
    if task is not None:
        missing = _take_declared(found, missing, {key: getattr(task, key, None) for key in keys})
    for source in (task, dag):
        if missing:
            missing = _take_declared(found, missing, _declared_params(source, conf_keys))
    default_args = getattr(dag, "default_args", None) or {}
    if missing and isinstance(default_args, Mapping):
        missing = _take_declared(found, missing, default_args)
    if missing:
        tags = tags_of(dag) if tags is None else tags
        for key in missing:
            found[key] = _from_tags(tags, key)
    return found


def declared(
    task: Any, dag: Any, key: str, conf_keys: frozenset[str] = frozenset(), tags: set[str] | None = None
) -> str | None:
    """A value the DAG author declared, in the documented order; None when nobody did. ``tags``: the DAG's
    tags when the caller has them already (:func:`tags_of`)."""
    return declared_values(task, dag, (key,), conf_keys, tags)[key]


def is_opted_out(dag: Any, conf_keys: frozenset[str] = frozenset(), tags: set[str] | None = None) -> bool:
    """A DAG opts out with the ``[barecount] opt_out_tag`` tag or a declared ``barecount_enabled: false``.
    ``tags``: the DAG's tags when the caller has them already (:func:`tags_of`)."""
    if dag is None:
        return False
    tag = config.opt_out_tag()
    if tag and tag in (tags_of(dag) if tags is None else tags):
        return True
    flag = _declared_params(dag, conf_keys).get("barecount_enabled")
    return flag is False or (isinstance(flag, str) and flag.strip().lower() in ("false", "off", "0", "no"))


_RESOLVED_KEYS = ("tenant", "pipeline", "size", "network_profile")


def resolve(
    *,
    task: Any,
    dag: Any,
    dag_id: str,
    run_id: str,
    task_id: str,
    try_number: int,
    map_index: int | None,
    conf_keys: frozenset[str] = frozenset(),
    tags: set[str] | None = None,
) -> RunContext:
    """Resolve the RunContext of one task try (see the module docstring for the order). ``tags``: the DAG's
    tags when the caller has them already (:func:`tags_of`)."""
    map_index = -1 if map_index is None else int(map_index)
    if tags is None:
        tags = tags_of(dag)  # once for the four keys
    values = declared_values(task, dag, _RESOLVED_KEYS, conf_keys, tags)
    tenant = values["tenant"] or config.default_tenant()
    pipeline = values["pipeline"] or dag_id
    runner_class = getattr(task, "runner_class", None) or "local"
    if runner_class not in RUNNER_CLASSES:
        runner_class = "local"
    size = values["size"] or DEFAULT_SIZE
    network_profile = values["network_profile"] or DEFAULT_NETWORK_PROFILE
    digest = getattr(task, "image_or_driver_digest", None)
    return RunContext(
        tenant=tenant,
        pipeline=pipeline,
        runner_class=runner_class,
        size=size,
        network_profile=network_profile,
        dag_id=dag_id,
        run_id=run_id,
        task_id=task_id,
        try_number=int(try_number),
        map_index=map_index,
        correlation_id=correlation_id_for(dag_id, run_id),
        run_token=run_token_for(dag_id, run_id, task_id, map_index, int(try_number)),
        image_or_driver_digest=digest if isinstance(digest, str) else None,
    )


def run_conf_keys(task_instance: Any) -> frozenset[str]:
    """Keys of the run's conf (in the task process, from the context the API server sent)."""
    try:
        server_context = airflow_adapter.ti_context_from_server(task_instance)
        conf = getattr(getattr(server_context, "dag_run", None), "conf", None) or {}
        return frozenset(conf)
    except Exception:
        return frozenset(IDENTITY_KEYS)  # cannot tell: trust no live param


def resolve_for_ti(task_instance: Any, tags: set[str] | None = None) -> RunContext:
    """Resolve from a task instance (the task process's RuntimeTaskInstance or an ORM TaskInstance).
    ``tags``: its DAG's tags when the caller has them already (:func:`tags_of`)."""
    task = getattr(task_instance, "task", None)
    dag = getattr(task, "dag", None) if task is not None else None
    return resolve(
        conf_keys=run_conf_keys(task_instance),
        tags=tags,
        task=task,
        dag=dag,
        dag_id=task_instance.dag_id,
        run_id=task_instance.run_id,
        task_id=task_instance.task_id,
        try_number=getattr(task_instance, "try_number", 0) or 0,
        map_index=getattr(task_instance, "map_index", -1),
    )
