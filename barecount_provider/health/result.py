"""The one result every health check returns: status, dependency, latency, phase timings, error code, detail,
measurements.

The error codes are a closed list (docs/health.md): a check that builds a result with any other code has a bug,
so the constructor raises ``ValueError`` rather than letting an unknown code reach the evidence or the metrics.
"""

from __future__ import annotations

import math
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["healthy", "degraded", "unhealthy", "unknown"]

STATUSES: tuple[Status, ...] = ("healthy", "degraded", "unhealthy", "unknown")

# The fixed error codes; ``http_<status>`` (http_100 .. http_599) is the one family besides them.
ERROR_CODES: frozenset[str] = frozenset(
    {"dns", "refused", "timeout", "tls", "tunnel_down", "endpoint_state", "heartbeat_stale", "not_found", "access_denied"}
)
_HTTP_CODE = re.compile(r"http_[1-5][0-9][0-9]")

# The network phases a probe times, in the order it runs them.
PHASES: tuple[str, ...] = ("dns", "connect", "tls", "http")


def is_error_code(code: str) -> bool:
    """Whether ``code`` is in the closed list (a fixed code or ``http_<status>``)."""
    return code in ERROR_CODES or _HTTP_CODE.fullmatch(code) is not None


def http_error_code(status: int) -> str:
    """The error code of an HTTP status: ``http_503``."""
    code = f"http_{status}"
    if not is_error_code(code):
        raise ValueError(f"HTTP status {status!r} is not between 100 and 599")
    return code


@dataclass(frozen=True)
class Dependency:
    """What was checked: its kind (``url``, ``private_endpoint``, ...), its id, and whose profile names it."""

    kind: str
    id: str
    tenant: str | None = None
    network_profile: str | None = None

    def __post_init__(self) -> None:
        if not self.kind:
            raise ValueError("a health dependency needs a kind")
        if not self.id:
            raise ValueError(f"a health dependency of kind {self.kind!r} needs an id")

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "tenant": self.tenant, "network_profile": self.network_profile}


@dataclass(frozen=True)
class PhaseTimings:
    """Milliseconds spent in each network phase; ``None`` for a phase that did not run."""

    dns: float | None = None
    connect: float | None = None
    tls: float | None = None
    http: float | None = None

    def __post_init__(self) -> None:
        for phase in PHASES:
            value = getattr(self, phase)
            if value is not None and value < 0:
                raise ValueError(f"phase {phase}: {value!r} ms is negative")

    def as_dict(self) -> dict[str, float | None]:
        return {phase: getattr(self, phase) for phase in PHASES}


@dataclass(frozen=True)
class HealthResult:
    """One check's outcome.

    :param status: ``healthy``, ``degraded`` (working, below what the profile asks), ``unhealthy`` or
        ``unknown`` (the check itself could not decide, ``detail`` says why).
    :param dependency: what was checked.
    :param latency_ms: the whole check's duration in milliseconds.
    :param phases: per-phase timings of a network probe (all ``None`` for checks without a network phase).
    :param error_code: from the closed list (``ERROR_CODES`` or ``http_<status>``); ``None`` when healthy.
    :param detail: one line for a human: what was seen.
    :param checked_at: when the check started, timezone-aware.
    :param measurements: numbers the check measured besides its latency, by name (the VPN check's
        ``tunnels_up`` and ``tunnels_required``, the agent check's ``heartbeat_age_seconds``); kept read-only.
    """

    status: Status
    dependency: Dependency
    latency_ms: float
    detail: str
    error_code: str | None = None
    phases: PhaseTimings = field(default_factory=PhaseTimings)
    checked_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    measurements: Mapping[str, float] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"health status {self.status!r} is not one of {', '.join(STATUSES)}")
        if self.error_code is not None and not is_error_code(self.error_code):
            raise ValueError(
                f"health error code {self.error_code!r} is not one of {', '.join(sorted(ERROR_CODES))}, http_<status>"
            )
        if self.status == "healthy" and self.error_code is not None:
            raise ValueError(f"a healthy result has no error code (got {self.error_code!r})")
        if self.status == "unhealthy" and self.error_code is None:
            raise ValueError("an unhealthy result needs an error code")
        if self.latency_ms < 0:
            raise ValueError(f"latency {self.latency_ms!r} ms is negative")
        if self.checked_at.tzinfo is None:
            raise ValueError("checked_at must be timezone-aware")
        for name, value in self.measurements.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"measurement name {name!r} is not a non-empty string")
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"measurement {name}: {value!r} is not a finite number")
        object.__setattr__(self, "measurements", types.MappingProxyType(dict(self.measurements)))

    @property
    def ok(self) -> bool:
        """Healthy or degraded: the dependency works."""
        return self.status in ("healthy", "degraded")

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-able values (the evidence's and the API's shape)."""
        return {
            "status": self.status,
            "dependency": self.dependency.as_dict(),
            "latency_ms": self.latency_ms,
            "phases_ms": self.phases.as_dict(),
            "error_code": self.error_code,
            "detail": self.detail,
            "checked_at": self.checked_at.isoformat(),
            "measurements": dict(self.measurements),
        }
