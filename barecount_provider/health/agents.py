"""On-premise agent health check: the age of an agent's last heartbeat against the largest the profile allows.

The heartbeats themselves are recorded by ``barecount_provider.health.records`` (``POST
/barecount/agents/{name}/heartbeat``, ``barecount agent heartbeat``); this check only judges one, so it takes
the last heartbeat's time as a parameter and never touches a database.
"""

from __future__ import annotations

from datetime import UTC, datetime

from barecount_provider.health.plan import Outcome, timed
from barecount_provider.health.result import Dependency, HealthResult
from barecount_provider.policy.model import AgentDependency


def _unknown(err: Exception) -> Outcome:
    return Outcome("unknown", f"{type(err).__name__}: {err}")


def check_agent(
    agent: AgentDependency,
    last_heartbeat_at: datetime | None,
    *,
    dependency: Dependency | None = None,
    now: datetime | None = None,
) -> HealthResult:
    """Healthy while the agent's last heartbeat is at most ``agent.max_heartbeat_age_seconds`` old;
    ``heartbeat_stale`` when older, or when none was ever received. Measurements: ``heartbeat_age_seconds``
    (absent when none was received). ``last_heartbeat_at`` and ``now`` are timezone-aware (``now``: the
    current time)."""

    def body() -> Outcome:
        if last_heartbeat_at is None:
            return Outcome("unhealthy", f"agent {agent.name}: no heartbeat received", "heartbeat_stale")
        if last_heartbeat_at.tzinfo is None:
            raise ValueError(f"agent {agent.name}: the last heartbeat's time {last_heartbeat_at!r} is not timezone-aware")
        age = max(0.0, ((now or datetime.now(UTC)) - last_heartbeat_at).total_seconds())
        measurements = {"heartbeat_age_seconds": round(age, 3)}
        when = last_heartbeat_at.astimezone(UTC).isoformat()
        limit = agent.max_heartbeat_age_seconds
        if age > limit:
            detail = f"agent {agent.name}: last heartbeat {age:.0f} s ago ({when}), more than the {limit} s allowed"
            return Outcome("unhealthy", detail, "heartbeat_stale", measurements)
        return Outcome("healthy", f"agent {agent.name}: last heartbeat {age:.0f} s ago ({when}), at most {limit} s allowed", None, measurements)

    return timed(dependency or Dependency(kind="agent", id=agent.name), body, _unknown)
