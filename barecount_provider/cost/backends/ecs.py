"""The cost of an ECS task on Fargate: vCPU and GB hours over max(minimum, runtime), ephemeral storage above
the included amount; tasks on EC2 container instances are not costed per task."""

from __future__ import annotations

from barecount_provider.cost.base import COMPUTE, STORAGE, Estimate, Run, architecture_of
from barecount_provider.cost.format import fmt_number, fmt_usd


def model(est: Estimate, run: Run) -> None:
    """Fargate: (vCPU x price per vCPU-hour + GB x price per GB-hour) x max(minimum, pull start -> stop)."""
    launch_type = run.text("billing_inputs.launch_type") or run.text("details.launch_type")
    if launch_type is None:
        launch_type = "FARGATE"
        est.assume("launch type FARGATE (billing_inputs.launch_type not reported)")
    est.inputs["launch_type"] = launch_type
    runtime, why_runtime = run.number("billing_inputs.runtime_s")
    est.runtime_s = runtime
    if launch_type.upper() != "FARGATE":
        est.unknown(
            COMPUTE,
            f"ECS launch type {launch_type}: the container instances are billed (as EC2), not the task; "
            "not costed per task",
        )
        return
    cpu_units, why_cpu = run.number("billing_inputs.cpu_units")
    if cpu_units is None:
        cpu_units, _ = run.number("resources_used.cpu_units")
    memory_mb, why_memory = run.number("billing_inputs.memory_mb")
    if memory_mb is None:
        memory_mb, _ = run.number("resources_used.memory_mb")
    architecture = architecture_of(est, run, "billing_inputs.architecture", "x86_64", "Fargate")
    est.inputs.update(cpu_units=cpu_units, memory_mb=memory_mb, runtime_s=runtime, architecture=architecture)
    for value, why, what in (
        (cpu_units, why_cpu, "no task CPU"),
        (memory_mb, why_memory, "no task memory"),
        (runtime, why_runtime, "no runtime"),
    ):
        if value is None:
            est.unknown(COMPUTE, f"{what}: {why}")
    if architecture is None or cpu_units is None or memory_mb is None or runtime is None:
        return
    minimum = est.amount("fargate", "minimum_s")
    billed_s = max(minimum, runtime)
    est.runtime_s = billed_s
    est.inputs["billed_s"] = billed_s
    vcpu_price = est.price("fargate", "vcpu_hour", architecture)
    gb_price = est.price("fargate", "gb_hour", architecture)
    if vcpu_price is None or gb_price is None:
        key = "vcpu_hour" if vcpu_price is None else "gb_hour"
        est.unknown(COMPUTE, est.no_price(f"Fargate {architecture} {key}", "fargate", key, architecture))
        return
    vcpu, gb = cpu_units / 1024.0, memory_mb / 1024.0
    duration = f"max({fmt_number(minimum)} s, {fmt_number(runtime)} s)/3600"
    est.add(
        COMPUTE,
        vcpu * billed_s / 3600.0 * vcpu_price,
        f"{fmt_number(vcpu)} vCPU x {duration} x {fmt_usd(vcpu_price)}/vCPU-h",
    )
    est.add(
        COMPUTE,
        gb * billed_s / 3600.0 * gb_price,
        f"{fmt_number(gb)} GB x {duration} x {fmt_usd(gb_price)}/GB-h",
    )
    _fargate_storage(est, run, billed_s)


def _fargate_storage(est: Estimate, run: Run, billed_s: float) -> None:
    included = est.amount("fargate", "included_ephemeral_storage_gb")
    storage_gb, why = run.number("billing_inputs.ephemeral_storage_gb")
    est.inputs["ephemeral_storage_gb"] = storage_gb
    if storage_gb is None:
        est.not_costed(
            f"Fargate ephemeral storage above the {fmt_number(included)} GB included: not costed ({why})"
        )
        return
    if storage_gb <= included:
        return
    price = est.price("fargate", "ephemeral_storage_gb_hour")
    extra = storage_gb - included
    if price is None:
        est.not_costed(
            f"Fargate ephemeral storage above {fmt_number(included)} GB: not costed, "
            + est.no_price("Fargate ephemeral storage", "fargate", "ephemeral_storage_gb_hour")
        )
        return
    est.add(
        STORAGE,
        extra * billed_s / 3600.0 * price,
        f"{fmt_number(extra)} GB x {fmt_number(billed_s)} s/3600 x {fmt_usd(price)}/GB-h",
    )
