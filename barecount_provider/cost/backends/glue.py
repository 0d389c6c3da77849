"""The cost of a Glue job run: DPU-seconds, with the minimum of its Glue version, at the execution class's
price per DPU-hour."""

from __future__ import annotations

import re

from barecount_provider.cost.base import COMPUTE, Estimate, Run
from barecount_provider.cost.format import fmt_number, fmt_usd

# DPUs of one worker of each Glue worker type (https://docs.aws.amazon.com/glue/latest/dg/add-job.html): the
# one table, here so that costing never imports the Airflow operators; the Glue operator derives with it too.
GLUE_DPU_PER_WORKER = {
    "Standard": 1.0,
    "G.025X": 0.25,
    "G.1X": 1.0,
    "G.2X": 2.0,
    "G.4X": 4.0,
    "G.8X": 8.0,
    "G.12X": 12.0,
    "G.16X": 16.0,
    "R.1X": 1.0,
    "R.2X": 2.0,
    "R.4X": 4.0,
    "R.8X": 8.0,
    "Z.2X": 2.0,
}


def _glue_version(raw: str | None) -> str | None:
    if raw is None:
        return None
    match = re.fullmatch(r"(\d+)(?:\.(\d+))?", raw.strip())
    return f"{match.group(1)}.{match.group(2) or 0}" if match else raw.strip()


def model(est: Estimate, run: Run) -> None:
    """max(DPU-seconds, DPUs x minimum of the Glue version) / 3600 x price per DPU-hour (execution class)."""
    dpu_seconds, why_dpu = run.number("billing_inputs.dpu_seconds")
    execution_class = run.text("billing_inputs.execution_class") or run.text("details.execution_class")
    if execution_class is None:
        execution_class = "STANDARD"
        est.assume("execution class STANDARD (billing_inputs.execution_class not reported; Glue's default)")
    execution_class = execution_class.upper()
    version = _glue_version(run.text("driver_version"))
    by_version = est.table.prices.get("glue", {}).get("minimum_s_by_version", {})
    if version is None:
        minimum = est.amount("glue", "minimum_s")
        est.assume(f"the {fmt_number(minimum)} s minimum of Glue 2.0 and later (driver_version not reported)")
    else:
        minimum = float(by_version.get(version, est.amount("glue", "minimum_s")))
    duration, _ = run.number("timings.duration_s")
    dpus = None
    if duration is not None and duration > 0 and dpu_seconds is not None:
        dpus = dpu_seconds / duration
    else:
        worker_type = run.text("billing_inputs.worker_type")
        workers, _ = run.number("billing_inputs.number_of_workers")
        if worker_type in GLUE_DPU_PER_WORKER and workers is not None:
            dpus = GLUE_DPU_PER_WORKER[worker_type] * workers
        else:
            capacity, _ = run.number("resources_used.max_capacity_dpu")
            dpus = capacity
    est.inputs.update(
        dpu_seconds=dpu_seconds,
        execution_class=execution_class,
        glue_version=version,
        minimum_s=minimum,
        duration_s=duration,
        dpus=dpus,
    )
    if dpu_seconds is None:
        est.unknown(COMPUTE, f"no DPU-seconds: {why_dpu}")
        if duration is not None:
            est.runtime_s = max(duration, minimum)
        return
    price = est.price("glue", "dpu_hour", execution_class)
    if price is None:
        est.unknown(
            COMPUTE,
            est.no_price(f"Glue execution class {execution_class!r}", "glue", "dpu_hour", execution_class),
        )
        return
    if dpus is None:
        billed = dpu_seconds
        est.assume(
            "no minimum applied: neither timings.duration_s nor the capacity (workers, DPUs) is reported"
        )
        term = f"{fmt_number(dpu_seconds)} DPU-s/3600 x {fmt_usd(price)}/DPU-h"
    else:
        billed = max(dpu_seconds, dpus * minimum)
        term = (
            f"max({fmt_number(dpu_seconds)} DPU-s, {fmt_number(dpus)} DPU x {fmt_number(minimum)} s)/3600 x "
            f"{fmt_usd(price)}/DPU-h"
        )
    est.inputs["billed_dpu_seconds"] = billed
    est.runtime_s = max(duration, minimum) if duration is not None else None
    est.add(COMPUTE, billed / 3600.0 * price, term + f" ({execution_class})")
