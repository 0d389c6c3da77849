"""Kubernetes health check: nodes ``Ready`` that match a network profile's node selector.

The check takes a kubernetes ``CoreV1Api`` client (``barecount_provider.runtime.health`` gets it from the
cncf-kubernetes ``KubernetesHook``) and returns one ``HealthResult``; it never raises. The API's errors map to
the closed list in :func:`classify_kubernetes_error`: HTTP 401 and 403 ``access_denied``, 404 ``not_found``,
a refused connection ``refused``, a name that does not resolve ``dns``, a connect or read timeout ``timeout``;
anything else ``unknown``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from barecount_provider.health.plan import Outcome, timed
from barecount_provider.health.result import Dependency, HealthResult, http_error_code
from barecount_provider.redaction import redact_text


def label_selector(node_selector: Mapping[str, str]) -> str:
    """``key=value,key2=value2``: the API's label selector of a node selector (sorted by key)."""
    return ",".join(f"{key}={value}" for key, value in sorted(node_selector.items()))


def classify_kubernetes_error(err: Exception) -> Outcome:
    """The outcome of an error the kubernetes client raised."""
    import urllib3.exceptions as http

    text = redact_text(str(err))
    status = getattr(err, "status", None)
    if isinstance(status, int) and status >= 400 and type(err).__name__ == "ApiException":
        reason = getattr(err, "reason", None) or ""
        if status in (401, 403):
            return Outcome("unhealthy", f"access denied: HTTP {status} {reason}".strip(), "access_denied")
        if status == 404:
            return Outcome("unhealthy", f"not found: HTTP 404 {reason}".strip(), "not_found")
        if status <= 599:
            return Outcome("unhealthy", f"the API server answered HTTP {status} {reason}".strip(), http_error_code(status))
    cause: BaseException = err
    if isinstance(err, http.MaxRetryError) and err.reason is not None:
        cause = err.reason
    if isinstance(cause, http.NameResolutionError):
        return Outcome("unhealthy", f"the API server's name does not resolve: {text}", "dns")
    if isinstance(cause, http.NewConnectionError) or isinstance(cause, ConnectionRefusedError):
        if "refused" in str(cause).lower() or isinstance(cause, ConnectionRefusedError):
            return Outcome("unhealthy", f"the API server refused the connection: {text}", "refused")
        return Outcome("unknown", f"the API server cannot be reached: {text}")
    if isinstance(cause, http.TimeoutError | TimeoutError):
        return Outcome("unhealthy", f"the API server did not answer in time: {text}", "timeout")
    return Outcome("unknown", f"{type(err).__name__}: {text}")


def _matches(node: Any, node_selector: Mapping[str, str]) -> bool:
    labels = getattr(getattr(node, "metadata", None), "labels", None) or {}
    return all(labels.get(key) == value for key, value in node_selector.items())


def _ready(node: Any) -> bool:
    conditions = getattr(getattr(node, "status", None), "conditions", None) or []
    return any(getattr(c, "type", None) == "Ready" and getattr(c, "status", None) == "True" for c in conditions)


def check_kubernetes_nodes(
    core_v1: Any,
    node_selector: Mapping[str, str],
    *,
    dependency: Dependency | None = None,
    timeout_s: float | None = None,
) -> HealthResult:
    """At least one node matching ``node_selector`` (labels; empty: every node) has the condition
    ``Ready=True``. No node matching at all is ``not_found``; nodes matching but none Ready is
    ``endpoint_state``. ``timeout_s`` bounds the API call (the client's ``_request_timeout``).
    Measurements: ``nodes_ready``, ``nodes_matching``."""
    selector = label_selector(node_selector)
    shown = selector or "(any node)"

    def body() -> Outcome:
        kwargs: dict[str, Any] = {"label_selector": selector} if selector else {}
        if timeout_s is not None:
            kwargs["_request_timeout"] = timeout_s
        # The API server filters by the selector; the labels are matched here too, for servers that do not.
        nodes = [node for node in core_v1.list_node(**kwargs).items or [] if _matches(node, node_selector)]
        ready = [node.metadata.name for node in nodes if _ready(node)]
        measurements = {"nodes_ready": len(ready), "nodes_matching": len(nodes)}
        if not nodes:
            return Outcome("unhealthy", f"no node matches {shown}", "not_found", measurements)
        if not ready:
            return Outcome("unhealthy", f"none of the {len(nodes)} nodes matching {shown} is Ready", "endpoint_state", measurements)
        names = ", ".join(ready[:5]) + (", ..." if len(ready) > 5 else "")
        return Outcome("healthy", f"{len(ready)} of {len(nodes)} nodes matching {shown} Ready: {names}", None, measurements)

    return timed(dependency or Dependency(kind="kubernetes_nodes", id=shown), body, classify_kubernetes_error)
