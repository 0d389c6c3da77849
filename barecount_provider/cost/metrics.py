"""The ``barecount.cost.*`` metric points of a cost estimate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from barecount_provider.cost.base import CostEstimate
from barecount_provider.selfmetrics import COUNTER

METRIC_NAMES = (
    "barecount.cost.runtime_hours",
    "barecount.cost.compute_usd",
    "barecount.cost.storage_usd",
    "barecount.cost.transfer_usd",
    "barecount.cost.total_usd",
)


def cost_metric_points(
    estimate: CostEstimate, tags: Mapping[str, Any]
) -> list[tuple[str, str, float, Mapping[str, Any]]]:
    """The ``barecount.cost.*`` points of one estimate, as ``Emitter.emit`` takes them: counters (sums over
    runs), tagged like the runner metrics. A value that is unknown is not emitted (never as 0)."""
    point_tags = {**tags, "runner_class": tags.get("runner_class") or estimate.runner_class}
    values = (
        estimate.runtime_hours,
        estimate.compute_usd,
        estimate.storage_usd,
        estimate.transfer_usd,
        estimate.total_usd,
    )
    return [
        (name, COUNTER, float(value), point_tags)
        for name, value in zip(METRIC_NAMES, values, strict=True)
        if value is not None
    ]
