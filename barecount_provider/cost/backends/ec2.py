"""The cost of dedicated EC2 hosts: the instance type's hourly rate over each host's max(minimum, lifetime)."""

from __future__ import annotations

from collections.abc import Mapping

from barecount_provider.cost.base import COMPUTE, Estimate, Run
from barecount_provider.cost.format import fmt_number, fmt_usd, plural
from barecount_provider.schema import is_number


def model(est: Estimate, run: Run) -> None:
    """Hourly rate of the instance type x sum over hosts of max(minimum, lifetime) / 3600."""
    instance_type = run.text("billing_inputs.instance_type") or run.text("resources_used.instance_type")
    host_count, why_count = run.number("billing_inputs.host_count")
    lifetimes = run.get("billing_inputs.host_lifetimes_s")
    minimum = est.amount("ec2", "minimum_s")
    est.inputs.update(instance_type=instance_type, host_count=host_count, minimum_s=minimum)
    if host_count == 0:
        est.runtime_s = 0.0
        est.add(COMPUTE, 0.0, "0 hosts launched")
        return
    per_host: list[tuple[str, float]] = []
    unknown_hosts: list[str] = []
    if isinstance(lifetimes, Mapping):
        items = [(str(host), value) for host, value in lifetimes.items()]
    elif isinstance(lifetimes, list):
        items = [(f"host {index}", value) for index, value in enumerate(lifetimes)]
    else:
        items = []
    for host, value in items:
        if is_number(value) and value >= 0:
            per_host.append((host, float(value)))
        else:
            unknown_hosts.append(host)
    billed: float | None
    if items:
        billed = sum(max(minimum, lifetime) for _, lifetime in per_host)
        hosts_term = " + ".join(
            f"max({fmt_number(minimum)} s, {fmt_number(lifetime)} s)" for _, lifetime in per_host
        )
        est.inputs["host_lifetimes_s"] = {host: lifetime for host, lifetime in per_host}
    else:
        host_seconds, why_seconds = run.number("billing_inputs.host_seconds")
        if host_seconds is not None and host_count is not None:
            billed = max(host_seconds, host_count * minimum)
            hosts_term = (
                f"max({fmt_number(host_seconds)} s, {plural(host_count, 'host')} x {fmt_number(minimum)} s)"
            )
            est.assume(
                "the per-host minimum applied to the hosts' summed lifetime (no per-host lifetimes reported)"
            )
        else:
            billed, hosts_term = None, ""
            est.unknown(COMPUTE, f"no host lifetimes: {run.why_absent('billing_inputs.host_lifetimes_s')}")
            if host_count is None:
                est.missing.append(f"no host count: {why_count}")
    if unknown_hosts:
        est.unknown(
            COMPUTE,
            f"lifetime of {', '.join(unknown_hosts)} unknown (termination not confirmed: "
            "billing_inputs.host_lifetimes_s has no number for it)",
        )
    est.runtime_s = billed if not unknown_hosts else None
    if instance_type is None:
        est.unknown(COMPUTE, f"no instance type: {run.why_absent('billing_inputs.instance_type')}")
        return
    rate = est.price("ec2", "instance_hour", instance_type)
    if rate is None:
        est.unknown(
            COMPUTE, est.no_price(f"instance type {instance_type}", "ec2", "instance_hour", instance_type)
        )
        return
    if billed is None or unknown_hosts:
        return
    est.inputs["billed_host_seconds"] = billed
    est.add(COMPUTE, rate * billed / 3600.0, f"{fmt_usd(rate)}/h x ({hosts_term})/3600 ({instance_type})")
