"""The cost of a ``local`` task (run inside the Airflow worker): the try's duration at one worker slot's rate."""

from __future__ import annotations

from barecount_provider.cost.base import COMPUTE, Estimate
from barecount_provider.cost.format import fmt_number, fmt_usd


def model(est: Estimate, runtime_s: float | None) -> None:
    """The task try's duration x the rate of one Airflow worker slot per hour."""
    est.inputs["runtime_s"] = runtime_s
    est.runtime_s = runtime_s
    if runtime_s is None:
        est.unknown(COMPUTE, "no runtime_s (the task try's duration) was given")
    rate = est.price("local", "worker_slot_hour")
    if rate is None:
        est.unknown(
            COMPUTE,
            "no worker slot rate: set [barecount] cost_local_worker_slot_hour_usd or prices.local.worker_slot_hour "
            f"in a price table override (price table {est.table.label} has none)",
        )
    if runtime_s is None or rate is None:
        return
    est.add(COMPUTE, runtime_s / 3600.0 * rate, local_term(runtime_s, rate))


def local_term(runtime_s: float, rate: float) -> str:
    return f"1 slot x {fmt_number(runtime_s)} s/3600 x {fmt_usd(rate)}/slot-h"
