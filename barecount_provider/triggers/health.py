"""``HealthTrigger``: wait in Airflow's triggerer until a set of dependencies is healthy, or a deadline.

A deferrable health sensor (``barecount_provider.sensors.health``) and a runner operator with
``wait_for_healthy`` defer to it. Every ``poke_interval`` seconds it checks every dependency at once with
:func:`barecount_provider.runtime.health.check_async`, which runs the blocking SDK calls and probes on
threads of its own (never the event loop's default executor), each check bounded by its own deadline: the
triggerer's event loop is never blocked, whatever the number of dependencies or how they hang.

It fires one event and ends:

* ``{"status": "healthy", "verdict": {...}}`` as soon as a check passes (every dependency healthy, or
  degraded where the profile allows it);
* ``{"status": "unhealthy", "verdict": {...}}`` when ``end_at`` comes and the last check did not pass (a
  last check is run at ``end_at``);
* ``{"status": "error", "message": "..."}`` when the dependencies cannot be checked at all (a spec that is
  not one).

``verdict`` is :meth:`barecount_provider.health.plan.Verdict.as_dict` (``passed``, ``degraded_policy``,
``results``). The trigger publishes nothing itself: whoever resumes from the event records and publishes the
results in the task process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from barecount_provider.health.plan import Verdict
from barecount_provider.policy.model import DEGRADED_POLICIES
from barecount_provider.runtime import health as runtime_health
from barecount_provider.runtime.health_report import result_from_dict

CLASSPATH = "barecount_provider.triggers.health.HealthTrigger"


def _end_at(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"HealthTrigger end_at: {value!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise ValueError(f"HealthTrigger end_at: {value!r} has no time zone (expected e.g. +00:00)")
    return parsed


def verdict_of_event(event: Mapping[str, Any]) -> Verdict:
    """The :class:`Verdict` a :class:`HealthTrigger` event carries. Raises ``ValueError`` when it has none."""
    data = event.get("verdict")
    if not isinstance(data, Mapping):
        raise ValueError(f"health trigger event without a verdict: {dict(event)!r}")
    results = tuple(result_from_dict(result) for result in data.get("results") or ())
    return Verdict(results=results, degraded=str(data.get("degraded_policy") or "allow"))


class HealthTrigger(BaseTrigger):
    """Check ``specs`` every ``poke_interval`` seconds until they pass or ``end_at`` comes (see the module).

    :param specs: the dependencies, each :meth:`DependencySpec.as_dict` (JSON: the trigger is persisted).
    :param degraded: ``allow`` or ``refuse``: whether a degraded dependency passes (the profile's policy).
    :param poke_interval: seconds between checks (> 0).
    :param end_at: ISO 8601 time, with its zone, after which a failed check ends the wait with
        ``unhealthy``; None: wait until healthy.
    :param timeout_s: each check's deadline in seconds; None: ``[barecount] health_timeout_seconds``.
    """

    def __init__(
        self,
        specs: Sequence[Mapping[str, Any]],
        degraded: str = "allow",
        poke_interval: float = 60.0,
        end_at: str | None = None,
        timeout_s: float | None = None,
    ) -> None:
        super().__init__()
        if degraded not in DEGRADED_POLICIES:
            raise ValueError(f"HealthTrigger degraded: {degraded!r} is not one of {', '.join(DEGRADED_POLICIES)}")
        if isinstance(poke_interval, bool) or not isinstance(poke_interval, int | float) or poke_interval <= 0:
            raise ValueError(f"HealthTrigger poke_interval: {poke_interval!r} is not a positive number of seconds")
        if timeout_s is not None and (
            isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0
        ):
            raise ValueError(f"HealthTrigger timeout_s: {timeout_s!r} is not a positive number of seconds")
        self._end = _end_at(end_at)
        # each spec is read now: a bad one fails where the trigger is made, never in the triggerer
        self._specs = [runtime_health.DependencySpec.from_dict(spec) for spec in specs]
        self.specs = [spec.as_dict() for spec in self._specs]
        self.degraded = degraded
        self.poke_interval = float(poke_interval)
        self.end_at = end_at
        self.timeout_s = None if timeout_s is None else float(timeout_s)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            CLASSPATH,
            {
                "specs": [dict(spec) for spec in self.specs],
                "degraded": self.degraded,
                "poke_interval": self.poke_interval,
                "end_at": self.end_at,
                "timeout_s": self.timeout_s,
            },
        )

    def _remaining_s(self) -> float | None:
        if self._end is None:
            return None
        return (self._end - datetime.now(UTC)).total_seconds()

    async def run(self) -> AsyncIterator[TriggerEvent]:
        checks = 0
        while True:
            try:
                verdict = await runtime_health.check_async(
                    self._specs, timeout_s=self.timeout_s, degraded=self.degraded
                )
            except Exception as err:  # check_async does not raise; a bug must still end the wait
                self.log.exception("BareCount: the health check failed")
                yield TriggerEvent({"status": "error", "message": f"health check failed: {type(err).__name__}: {err}"})
                return
            checks += 1
            if verdict.passed:
                self.log.info("BareCount: %s (check %d)", verdict.message(), checks)
                yield TriggerEvent({"status": "healthy", "verdict": verdict.as_dict()})
                return
            remaining = self._remaining_s()
            if remaining is not None and remaining <= 0:
                self.log.info("BareCount: still not healthy at %s: %s", self.end_at, verdict.message())
                yield TriggerEvent({"status": "unhealthy", "verdict": verdict.as_dict()})
                return
            self.log.info("BareCount: %s; next check in %.0f s", verdict.message(), self.poke_interval)
            # the last check runs at end_at, not up to a poke interval after it
            await asyncio.sleep(self.poke_interval if remaining is None else min(self.poke_interval, remaining))
