"""The metric points of health results: a pure function, results in, ``(name, kind, value, tags)`` out.

The names, kinds, units and tags are those of the telemetry catalogue (docs/metrics.md); this module only
builds the points (it never imports telemetry): whoever publishes results sends them through an emitter
(:func:`barecount_provider.runtime.health_report.publish`).

Every result gives ``barecount.health.up`` (1 when healthy or degraded, 0 otherwise) and
``barecount.health.check_duration``; a probe's timed phases give ``barecount.network.latency`` (tag
``phase``); a result with an error code gives ``barecount.network.errors`` (tag ``error_code``); a VPN
result's ``measurements["tunnels_up"]`` gives ``barecount.vpn.tunnels_up`` and an agent result's
``measurements["heartbeat_age_seconds"]`` gives ``barecount.agent.heartbeat_age``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from barecount_provider.health.result import PHASES, HealthResult
from barecount_provider.selfmetrics import COUNTER, GAUGE, TIMER, Point

UP = "barecount.health.up"
CHECK_DURATION = "barecount.health.check_duration"
NETWORK_LATENCY = "barecount.network.latency"
NETWORK_ERRORS = "barecount.network.errors"
VPN_TUNNELS_UP = "barecount.vpn.tunnels_up"
AGENT_HEARTBEAT_AGE = "barecount.agent.heartbeat_age"

NAMES = (UP, CHECK_DURATION, NETWORK_LATENCY, NETWORK_ERRORS, VPN_TUNNELS_UP, AGENT_HEARTBEAT_AGE)
"""Every metric this module emits (each is in the telemetry catalogue)."""


def dependency_tags(result: HealthResult) -> dict[str, Any]:
    """The tags every point of ``result`` carries: tenant, network_profile, dependency_kind, dependency
    (a tenant or profile the check was not given is left out: ``None`` tags are dropped by the emitter)."""
    dependency = result.dependency
    return {
        "tenant": dependency.tenant,
        "network_profile": dependency.network_profile,
        "dependency_kind": dependency.kind,
        "dependency": dependency.id,
    }


def _number(measurements: Mapping[str, Any], key: str) -> float | None:
    value = measurements.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def result_points(result: HealthResult) -> list[Point]:
    """The points of one result (see the module docstring)."""
    tags = dependency_tags(result)
    points: list[Point] = [
        (UP, GAUGE, 1.0 if result.ok else 0.0, tags),
        (CHECK_DURATION, TIMER, float(result.latency_ms), tags),
    ]
    for phase in PHASES:
        value = getattr(result.phases, phase)
        if value is not None:
            points.append((NETWORK_LATENCY, TIMER, float(value), {**tags, "phase": phase}))
    if result.error_code is not None:
        points.append((NETWORK_ERRORS, COUNTER, 1, {**tags, "error_code": result.error_code}))
    measurements = result.measurements or {}
    tunnels_up = _number(measurements, "tunnels_up")
    if tunnels_up is not None:
        points.append((VPN_TUNNELS_UP, GAUGE, tunnels_up, tags))
    heartbeat_age = _number(measurements, "heartbeat_age_seconds")
    if heartbeat_age is not None:
        points.append((AGENT_HEARTBEAT_AGE, GAUGE, heartbeat_age, tags))
    return points


def health_metric_points(results: Iterable[HealthResult]) -> list[Point]:
    """The points of every result, in order."""
    return [point for result in results for point in result_points(result)]
