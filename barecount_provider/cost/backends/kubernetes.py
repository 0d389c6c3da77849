"""The cost of a Kubernetes pod: its CPU and memory requests over its runtime, at the configured rates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from barecount_provider.cost.base import COMPUTE, GIB, Estimate, Run
from barecount_provider.cost.format import fmt_number, fmt_usd
from barecount_provider.policy import parse_cpu_quantity, parse_memory_quantity


def _request(est: Estimate, run: Run, billed: str, setting: str, parse: Callable[[Any], float | None], what: str) -> tuple[float | None, str]:
    """The pod's ``billed`` billing input, else its ``setting`` (``cpu_request``, ``memory_request``) as
    admitted (``resources_used``), else as the size asked for it (``resources_requested``: an assumption);
    with why it is unknown when none is there."""
    value, why = run.number(f"billing_inputs.{billed}")
    if value is not None:
        return value, why
    for path in (f"resources_used.{setting}", f"resources_requested.{setting}"):
        value = parse(run.get(path))
        if value is not None:
            if path.startswith("resources_requested"):
                est.assume(f"{what} request from {path} (the size's, not the admitted pod's)")
            return value, why
    return None, why


def model(est: Estimate, run: Run) -> None:
    """(CPU request x rate per vCPU-hour + memory request GB x rate per GB-hour) x runtime."""
    cores, why_cores = _request(est, run, "cpu_request_cores", "cpu_request", parse_cpu_quantity, "CPU")
    memory_bytes, why_memory = _request(est, run, "memory_request_bytes", "memory_request", parse_memory_quantity, "memory")
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
