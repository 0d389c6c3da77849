"""The cost of an EMR Serverless job run: the billed vCPU-, GB- and storage GB-hours it reports."""

from __future__ import annotations

from barecount_provider.cost.base import COMPUTE, STORAGE, Estimate, Run
from barecount_provider.cost.format import fmt_number, fmt_usd


def model(est: Estimate, run: Run) -> None:
    """Billed vCPU-hours x price + billed GB-hours x price (+ billed storage GB-hours x price)."""
    vcpu_hours, why_vcpu = run.number("billing_inputs.billed_vcpu_hours")
    gb_hours, why_gb = run.number("billing_inputs.billed_memory_gb_hours")
    storage_gb_hours, why_storage = run.number("billing_inputs.billed_storage_gb_hours")
    duration, _ = run.number("timings.duration_s")
    est.runtime_s = duration
    est.inputs.update(
        billed_vcpu_hours=vcpu_hours,
        billed_memory_gb_hours=gb_hours,
        billed_storage_gb_hours=storage_gb_hours,
    )
    for value, why, what in (
        (vcpu_hours, why_vcpu, "no billed vCPU-hours"),
        (gb_hours, why_gb, "no billed GB-hours"),
    ):
        if value is None:
            est.unknown(COMPUTE, f"{what}: {why}")
    if vcpu_hours is not None and gb_hours is not None:
        vcpu_price = est.price("emr_serverless", "vcpu_hour")
        gb_price = est.price("emr_serverless", "gb_hour")
        if vcpu_price is None or gb_price is None:
            key = "vcpu_hour" if vcpu_price is None else "gb_hour"
            est.unknown(COMPUTE, est.no_price(f"EMR Serverless {key}", "emr_serverless", key))
        else:
            est.add(
                COMPUTE,
                vcpu_hours * vcpu_price,
                f"{fmt_number(vcpu_hours)} vCPU-h x {fmt_usd(vcpu_price)}/vCPU-h",
            )
            est.add(COMPUTE, gb_hours * gb_price, f"{fmt_number(gb_hours)} GB-h x {fmt_usd(gb_price)}/GB-h")
    if storage_gb_hours is None:
        est.not_costed(f"EMR Serverless storage: not costed ({why_storage})")
        return
    storage_price = est.price("emr_serverless", "storage_gb_hour")
    if storage_price is None:
        est.not_costed(
            "EMR Serverless storage: not costed, "
            + est.no_price("EMR Serverless storage", "emr_serverless", "storage_gb_hour")
        )
        return
    est.add(
        STORAGE,
        storage_gb_hours * storage_price,
        f"{fmt_number(storage_gb_hours)} storage GB-h x {fmt_usd(storage_price)}/GB-h",
    )
