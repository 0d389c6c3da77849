"""The cost of a Kubernetes pod: its CPU and memory requests over its runtime, at the configured rates."""

from __future__ import annotations

from barecount_provider.cost.base import COMPUTE, GIB, Estimate, Run
from barecount_provider.cost.format import fmt_number, fmt_usd
from barecount_provider.policy import parse_cpu_quantity, parse_memory_quantity


def model(est: Estimate, run: Run) -> None:
    """(CPU request x rate per vCPU-hour + memory request GB x rate per GB-hour) x runtime."""
    cores, why_cores = run.number("billing_inputs.cpu_request_cores")
    if cores is None:
        for path in ("resources_used.cpu_request", "resources_requested.cpu_request"):
            cores = parse_cpu_quantity(run.get(path))
            if cores is not None:
                if path.startswith("resources_requested"):
                    est.assume(f"CPU request from {path} (the size's, not the admitted pod's)")
                break
    memory_bytes, why_memory = run.number("billing_inputs.memory_request_bytes")
    if memory_bytes is None:
        for path in ("resources_used.memory_request", "resources_requested.memory_request"):
            memory_bytes = parse_memory_quantity(run.get(path))
            if memory_bytes is not None:
                if path.startswith("resources_requested"):
                    est.assume(f"memory request from {path} (the size's, not the admitted pod's)")
                break
    runtime, why_runtime = run.number("billing_inputs.runtime_s")
    if runtime is None:
        runtime, _ = run.number("timings.duration_s")
    est.runtime_s = runtime
    est.inputs.update(cpu_request_cores=cores, memory_request_bytes=memory_bytes, runtime_s=runtime)
    for value, why, what in (
        (cores, why_cores, "no CPU request"),
        (memory_bytes, why_memory, "no memory request"),
        (runtime, why_runtime, "no runtime"),
    ):
        if value is None:
            est.unknown(COMPUTE, f"{what}: {why}")
    vcpu_rate = est.price("kubernetes", "vcpu_hour")
    gb_rate = est.price("kubernetes", "gb_hour")
    for rate, key, option in (
        (vcpu_rate, "vcpu_hour", "cost_kubernetes_vcpu_hour_usd"),
        (gb_rate, "gb_hour", "cost_kubernetes_gb_hour_usd"),
    ):
        if rate is None:
            est.unknown(
                COMPUTE,
                f"no Kubernetes rate per {'vCPU' if key == 'vcpu_hour' else 'GB'}-hour: set [barecount] {option} "
                f"or prices.kubernetes.{key} in a price table override (price table {est.table.label} has none)",
            )
    if cores is None or memory_bytes is None or runtime is None or vcpu_rate is None or gb_rate is None:
        return
    gb = memory_bytes / GIB
    duration = f"{fmt_number(runtime)} s/3600"
    est.add(
        COMPUTE,
        cores * runtime / 3600.0 * vcpu_rate,
        f"{fmt_number(cores)} vCPU x {duration} x {fmt_usd(vcpu_rate)}/vCPU-h",
    )
    est.add(
        COMPUTE,
        gb * runtime / 3600.0 * gb_rate,
        f"{fmt_number(gb)} GB x {duration} x {fmt_usd(gb_rate)}/GB-h",
    )
