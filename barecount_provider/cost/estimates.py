"""The public cost API: :func:`estimate` (a task try -> a :class:`~barecount_provider.cost.base.CostEstimate`,
by the model of the backend that ran it), :func:`backend_of` and :func:`attribution_key`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from barecount_provider.cost.backends import MODELS, local
from barecount_provider.cost.backends.storage_and_transfer import storage_and_transfer
from barecount_provider.cost.base import (
    COMPUTE,
    EC2,
    ECS,
    EMR_SERVERLESS,
    GLUE,
    KUBERNETES,
    LAMBDA,
    LOCAL,
    CostEstimate,
    Estimate,
    Run,
)
from barecount_provider.cost.format import MONEY_DECIMALS, fmt_usd, money
from barecount_provider.cost.prices import PriceTable, configured_price_table
from barecount_provider.policy import RUNNER_CLASSES
from barecount_provider.schema import is_mapping, is_number


def _as_mapping(result: Any) -> Mapping[str, Any] | None:
    if result is None or is_mapping(result):
        return result
    as_dict = getattr(result, "as_dict", None)
    if callable(as_dict):
        value = as_dict()
        if isinstance(value, Mapping):
            return value
    raise TypeError(f"runner_result: {type(result).__name__} is not a mapping nor a RunnerResult")


def backend_of(runner_class: str, runner_result: Mapping[str, Any] | None) -> str | None:
    """The backend that ran: ``lambda``, ``ecs``, ``kubernetes``, ``glue``, ``emr_serverless``, ``ec2``,
    ``local``; None when a ``container`` or ``managed_etl`` result does not say which service it was."""
    if runner_class == "local":
        return LOCAL
    if runner_class == "serverless":
        return LAMBDA
    if runner_class == "dedicated":
        return EC2
    run = Run(runner_result)
    if runner_class == "container":
        if any(run.has(f"billing_inputs.{key}") for key in ("cpu_units", "launch_type")) or run.has(
            "resources_requested.cpu_units"
        ):
            return ECS
        if any(
            run.has(f"billing_inputs.{key}") for key in ("cpu_request_cores", "memory_request_bytes")
        ) or run.has("resources_requested.cpu_request"):
            return KUBERNETES
        return None
    if runner_class == "managed_etl":
        if any(run.has(f"billing_inputs.{key}") for key in ("dpu_seconds", "worker_type", "execution_class")):
            return GLUE
        if run.has("billing_inputs.billed_vcpu_hours"):
            return EMR_SERVERLESS
        return None
    return None


def estimate(
    runner_class: str,
    runner_result: Mapping[str, Any] | None,
    *,
    runtime_s: float | None,
    price_table: PriceTable | None = None,
) -> CostEstimate:
    """The cost of one task try: ``runner_class`` (``serverless``, ``container``, ``managed_etl``,
    ``dedicated``, ``local``), its ``runner_result`` (None for ``local``, or when the runner recorded
    nothing), ``runtime_s`` the try's duration (the ``local`` runtime, and the fallback of
    ``runtime_hours``), ``price_table`` (default: :func:`configured_price_table`)."""
    if runner_class not in RUNNER_CLASSES:
        raise ValueError(f"runner class {runner_class!r} is not one of {', '.join(RUNNER_CLASSES)}")
    if runtime_s is not None and not (is_number(runtime_s) and runtime_s >= 0):
        raise ValueError(f"runtime_s: {runtime_s!r} is not a number of seconds >= 0")
    result = _as_mapping(runner_result)
    recorded_class = result.get("runner_class") if result else None
    if recorded_class is not None and recorded_class != runner_class:
        raise ValueError(f"runner class {runner_class!r}, but the runner_result is of {recorded_class!r}")
    table = price_table if price_table is not None else configured_price_table()
    runtime = float(runtime_s) if runtime_s is not None else None
    if runner_class == LOCAL and result is None and runtime is not None:
        return _local_estimate(runtime, table)  # every task not run by a runner operator, at each try's end
    return _estimate(runner_class, result, runtime, table)


def _estimate(
    runner_class: str, result: Mapping[str, Any] | None, runtime: float | None, table: PriceTable
) -> CostEstimate:
    """The general path of :func:`estimate`, its arguments checked."""
    backend = backend_of(runner_class, result)
    est = Estimate(runner_class, backend, table)
    run = Run(result)
    if backend == LOCAL:
        local.model(est, runtime)
    elif result is None:
        est.unknown(
            COMPUTE,
            f"no runner_result: the {runner_class} runner recorded nothing (nothing launched, or lost)",
        )
    elif backend is None:
        est.unknown(
            COMPUTE,
            f"the {runner_class} runner_result does not say which service ran it "
            "(no billing_inputs of an ECS task, a pod, a Glue or an EMR Serverless job run)",
        )
    else:
        MODELS[backend](est, run)
    storage_and_transfer(est, run, result is not None)
    return est.result(runtime)


# Per price table: the table, the general estimate of a local try of 0 s, the worker slot rate.
_LOCAL_TEMPLATES: dict[int, tuple[PriceTable, CostEstimate, float | None]] = {}


def _local_estimate(runtime: float, table: PriceTable) -> CostEstimate:
    """What :func:`_estimate` gives for a local try without a runner_result, built from one general estimate
    per price table: only the runtime, the compute cost and the formula depend on the try (a test compares
    the two). The general path touches some thirty functions, a copy-on-write page fault each in a task
    process, for a result that is mostly constant."""
    cached = _LOCAL_TEMPLATES.get(id(table))
    if cached is None or cached[0] is not table:
        if len(_LOCAL_TEMPLATES) >= 8:
            _LOCAL_TEMPLATES.clear()
        cached = _LOCAL_TEMPLATES[id(table)] = (
            table,
            _estimate(LOCAL, None, 0.0, table),
            table.price("local", "worker_slot_hour"),
        )
    _, template, rate = cached
    compute = None
    formula = template.formula  # no rate: "nothing priced = unknown (see missing)"
    if rate is not None:  # as local.model's one term and Estimate.result's total (storage and transfer are 0)
        compute = money(runtime / 3600.0 * rate)
        formula = f"{local.local_term(runtime, rate)} = {fmt_usd(compute)}"
    return CostEstimate(
        runner_class=LOCAL,
        backend=LOCAL,
        runtime_hours=round(runtime / 3600.0, MONEY_DECIMALS),
        compute_usd=compute,
        storage_usd=template.storage_usd,
        transfer_usd=template.transfer_usd,
        total_usd=compute,
        currency=template.currency,
        price_table=template.price_table,
        basis=template.basis,
        formula=formula,
        inputs={"runtime_s": runtime},
        missing=template.missing,
        assumptions=template.assumptions,
    )


def attribution_key(result: Mapping[str, Any] | Any) -> tuple[str, str, str, str]:
    """``(tenant, pipeline, runner_class, size)`` of a runner_result (a mapping or a RunnerResult); a field
    the result lacks is ``"unknown"``."""
    mapping = _as_mapping(result) or {}

    def field(name: str) -> str:
        value = mapping.get(name)
        return value if isinstance(value, str) and value else "unknown"

    return field("tenant"), field("pipeline"), field("runner_class"), field("size")
