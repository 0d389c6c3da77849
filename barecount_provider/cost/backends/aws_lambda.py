"""The cost of a Lambda invocation: requests, GB-seconds at the architecture's price, ephemeral storage above
the included amount."""

from __future__ import annotations

from barecount_provider.cost.base import COMPUTE, STORAGE, Estimate, Run, architecture_of
from barecount_provider.cost.format import fmt_number, fmt_usd


def model(est: Estimate, run: Run) -> None:
    """requests x price per 1M + GB (MemorySize/1024) x billed seconds x price per GB-second (architecture)."""
    requests, _ = run.number("billing_inputs.requests")
    if requests is None:
        requests = 1.0
        est.assume("1 request (billing_inputs.requests not reported: one runner_result is one Invoke)")
    billed_ms, why_billed = run.number("billing_inputs.billed_duration_ms")
    memory_mb, why_memory = run.number("billing_inputs.memory_size_mb")
    if memory_mb is None:
        memory_mb, _ = run.number("resources_used.memory_size_mb")
    architecture = architecture_of(est, run, "billing_inputs.architecture", "x86_64", "Lambda")
    est.inputs.update(
        requests=requests, billed_duration_ms=billed_ms, memory_size_mb=memory_mb, architecture=architecture
    )
    request_price = est.price("lambda", "request_per_million")
    if request_price is None:
        est.unknown(COMPUTE, est.no_price("Lambda requests", "lambda", "request_per_million"))
    else:
        word = "request" if requests == 1 else "requests"
        est.add(
            COMPUTE,
            requests * request_price / 1e6,
            f"{fmt_number(requests)} {word} x {fmt_usd(request_price)}/1M",
        )
    if billed_ms is None:
        est.unknown(COMPUTE, f"no billed duration: {why_billed}")
    if memory_mb is None:
        est.unknown(COMPUTE, f"no memory size: {why_memory}")
    if billed_ms is not None:
        est.runtime_s = billed_ms / 1000.0
    if architecture is None or billed_ms is None or memory_mb is None:
        return
    gb_second = est.price("lambda", "gb_second", architecture)
    if gb_second is None:
        est.unknown(
            COMPUTE, est.no_price(f"Lambda {architecture} GB-seconds", "lambda", "gb_second", architecture)
        )
        return
    gb, seconds = memory_mb / 1024.0, billed_ms / 1000.0
    est.inputs["gb_seconds"] = gb * seconds
    est.add(
        COMPUTE,
        gb * seconds * gb_second,
        f"{fmt_number(gb)} GB x {fmt_number(seconds)} s x {fmt_usd(gb_second)}/GB-s",
    )
    _lambda_storage(est, run, seconds)


def _lambda_storage(est: Estimate, run: Run, seconds: float) -> None:
    storage_mb, why = run.number("billing_inputs.ephemeral_storage_mb")
    included = est.amount("lambda", "included_ephemeral_storage_mb")
    est.inputs["ephemeral_storage_mb"] = storage_mb
    if storage_mb is None:
        est.not_costed(f"Lambda ephemeral storage above {fmt_number(included)} MB: not costed ({why})")
        return
    if storage_mb <= included:
        return
    extra_gb = (storage_mb - included) / 1024.0
    price = est.table.price("lambda", "ephemeral_storage_gb_second")
    if price is None:
        est.not_costed(
            f"Lambda ephemeral storage above {fmt_number(included)} MB ({fmt_number(extra_gb)} GB x "
            f"{fmt_number(seconds)} s): not costed, "
            + est.no_price("Lambda ephemeral storage", "lambda", "ephemeral_storage_gb_second")
        )
        return
    est.price("lambda", "ephemeral_storage_gb_second")  # its basis
    est.add(
        STORAGE,
        extra_gb * seconds * price,
        f"{fmt_number(extra_gb)} GB x {fmt_number(seconds)} s x {fmt_usd(price)}/GB-s",
    )
