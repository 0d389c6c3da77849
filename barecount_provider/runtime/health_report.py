"""Publish health results: their metrics through the telemetry emitter, and the results to BareCount's
database (the last result of each dependency, read by ``GET /barecount/health``).

Called by every face that checks health (the health sensors, a runner operator's check before launch) with
the final results of its check. Never raises: a sink or database failure is counted
(``barecount.emit.failed`` with sink ``health``, stage ``emit`` or ``save``) and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from barecount_provider import selfmetrics
from barecount_provider.health import records
from barecount_provider.health.metrics import health_metric_points
from barecount_provider.health.result import PHASES, Dependency, HealthResult, PhaseTimings
from barecount_provider.telemetry.metrics import get_emitter

log = logging.getLogger(__name__)

SINK = "health"
"""The ``sink`` tag of this module's own failures in ``barecount.emit.failed``."""


def publish(results: Sequence[HealthResult], *, source: str) -> None:
    """Emit the metrics of ``results`` and save them as the dependencies' last results. ``source`` names who
    checked (``sensor:<task_id>``, ``operator:<task_id>``, ...) in the log lines. Never raises."""
    try:
        results = list(results)
    except Exception:
        selfmetrics.failure(SINK, "emit")
        log.warning("BareCount could not read the health results of %s", source, exc_info=True)
        return
    if not results:
        return
    try:
        get_emitter().emit(health_metric_points(results))
    except Exception:
        selfmetrics.failure(SINK, "emit")
        log.warning("BareCount could not emit the health metrics of %s", source, exc_info=True)
    try:
        _save(results)
    except Exception:
        selfmetrics.failure(SINK, "save")
        log.warning("BareCount could not save the health results of %s", source, exc_info=True)


def _save(results: Sequence[HealthResult]) -> None:
    records.save_results(results)


def result_from_dict(data: Mapping[str, Any]) -> HealthResult:
    """A :class:`HealthResult` from its ``as_dict()`` form (a trigger event's verdict crosses the triggerer
    as JSON). Raises ``ValueError`` naming what is wrong."""
    try:
        dependency = data["dependency"]
        phases = data.get("phases_ms") or {}
        return HealthResult(
            status=data["status"],
            dependency=Dependency(
                kind=dependency["kind"],
                id=dependency["id"],
                tenant=dependency.get("tenant"),
                network_profile=dependency.get("network_profile"),
            ),
            latency_ms=float(data["latency_ms"]),
            detail=str(data.get("detail") or ""),
            error_code=data.get("error_code"),
            phases=PhaseTimings(**{phase: phases.get(phase) for phase in PHASES}),
            checked_at=datetime.fromisoformat(data["checked_at"]),
            measurements=dict(data.get("measurements") or {}),
        )
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"not a health result ({type(err).__name__}: {err}); expected HealthResult.as_dict()'s keys") from None
