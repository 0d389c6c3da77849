"""One cost model per runner backend: a run's ``runner_result`` and a price table -> a :class:`CostEstimate`.

Every model is a pure function of the runner_result's ``billing_inputs`` (and a few ``timings`` /
``resources_used`` fields), the price table and, for ``local`` tasks, the task try's duration. What cannot be
priced is never counted as 0: the compute cost is then ``None`` (unknown) and ``missing`` says why, with the
runner_result's own ``field_sources`` reason when it has one. Storage and data transfer a run does not report
cost 0, and ``missing`` records that they were not reported. The formulas are in docs/cost.md.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from barecount_provider.cost.prices import (
    ARCHITECTURES,
    CONFIGURED_RATE_BASIS,
    CURRENCY,
    LIST_PRICE_BASIS,
    PriceTable,
    configured_price_table,
)
from barecount_provider.policy import RUNNER_CLASSES, parse_cpu_quantity, parse_memory_quantity
from barecount_provider.schema import is_mapping, is_number, join_quoted
from barecount_provider.selfmetrics import COUNTER

LAMBDA, ECS, KUBERNETES, GLUE, EMR_SERVERLESS, EC2, LOCAL = (
    "lambda",
    "ecs",
    "kubernetes",
    "glue",
    "emr_serverless",
    "ec2",
    "local",
)
BACKENDS = (LAMBDA, ECS, KUBERNETES, GLUE, EMR_SERVERLESS, EC2, LOCAL)
COMPUTE, STORAGE, TRANSFER = "compute", "storage", "transfer"
GIB = 1024**3
MONEY_DECIMALS = 10

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

METRIC_NAMES = (
    "barecount.cost.runtime_hours",
    "barecount.cost.compute_usd",
    "barecount.cost.storage_usd",
    "barecount.cost.transfer_usd",
    "barecount.cost.total_usd",
)


@dataclasses.dataclass(frozen=True)
class CostEstimate:
    """What one run cost, how it was computed, and what could not be costed.

    ``compute_usd`` and ``total_usd`` are None when the compute cost is unknown (a missing input, no price):
    never 0. ``storage_usd`` and ``transfer_usd`` are 0 when the run reports none, with the reason in
    ``missing``. ``basis`` is ``list-price estimate`` unless a price used came from an override
    (``negotiated rates (<table name>)``) or a ``[barecount]`` rate option. ``assumptions`` lists the
    defaults taken for inputs the run did not report (architecture, execution class, Glue version, ...).
    """

    runner_class: str
    backend: str | None
    runtime_hours: float | None
    compute_usd: float | None
    storage_usd: float
    transfer_usd: float
    total_usd: float | None
    currency: str
    price_table: Mapping[str, str]
    basis: str
    formula: str
    inputs: Mapping[str, Any]
    missing: tuple[str, ...]
    assumptions: tuple[str, ...] = ()

    @property
    def known(self) -> bool:
        """Whether the total is known."""
        return self.total_usd is not None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the evidence fragment)."""
        return {
            "runner_class": self.runner_class,
            "backend": self.backend,
            "runtime_hours": self.runtime_hours,
            "compute_usd": self.compute_usd,
            "storage_usd": self.storage_usd,
            "transfer_usd": self.transfer_usd,
            "total_usd": self.total_usd,
            "currency": self.currency,
            "price_table": dict(self.price_table),
            "basis": self.basis,
            "formula": self.formula,
            "inputs": dict(self.inputs),
            "missing": list(self.missing),
            "assumptions": list(self.assumptions),
        }


# ------------------------------------------------------------------------------------------------ formatting


def fmt_number(value: float) -> str:
    """A number as a person writes it: ``0.125``, ``1.2``, ``60``, ``0.00001`` (no exponent)."""
    text = format(value, ".10g")
    if "e" in text:
        text = f"{value:.15f}".rstrip("0").rstrip(".")
    return text


def fmt_usd(value: float) -> str:
    """``$0.20``, ``$0.0000166667``, ``$0.0000027``: at least two decimals, at most ten."""
    text = f"{round(value, MONEY_DECIMALS):.{MONEY_DECIMALS}f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return f"${whole}.{decimals.ljust(2, '0')}"


def _plural(count: float, word: str) -> str:
    return f"{fmt_number(count)} {word}" + ("" if count == 1 else "s")


def _money(value: float) -> float:
    return round(value, MONEY_DECIMALS) + 0.0  # + 0.0: never -0.0


# ------------------------------------------------------------------------------------------------ the run


class _Run:
    """Read access to a runner_result (a mapping, or an object with ``as_dict()``), with the reasons."""

    def __init__(self, result: Mapping[str, Any] | None) -> None:
        self.result: Mapping[str, Any] = result or {}
        sources = self.result.get("field_sources")
        self.sources: Mapping[str, Any] = sources if is_mapping(sources) else {}

    def has(self, path: str) -> bool:
        section, _, key = path.partition(".")
        values = self.result.get(section)
        return is_mapping(values) and key in values

    def get(self, path: str) -> Any:
        section, _, key = path.partition(".")
        if not key:
            return self.result.get(section)
        values = self.result.get(section)
        return values.get(key) if is_mapping(values) else None

    def why_absent(self, path: str) -> str:
        source = self.sources.get(path)
        if isinstance(source, str) and source and self.get(path) is None:
            return f"{path} {source}" if source.startswith("not reported") else f"{path} is empty ({source})"
        return f"{path} is not in the runner_result"

    def number(self, path: str) -> tuple[float | None, str]:
        """(value, why it is None): a number >= 0 at ``path``."""
        value = self.get(path)
        if value is None:
            return None, self.why_absent(path)
        if not is_number(value) or value < 0:
            return None, f"{path}: {value!r} is not a number >= 0"
        return float(value), ""

    def text(self, path: str) -> str | None:
        value = self.get(path)
        return value.strip() if isinstance(value, str) and value.strip() else None


class _Estimate:
    """The accumulator one model fills in."""

    def __init__(self, runner_class: str, backend: str | None, table: PriceTable) -> None:
        self.runner_class, self.backend, self.table = runner_class, backend, table
        self.inputs: dict[str, Any] = {}
        self.missing: list[str] = []
        self.assumptions: list[str] = []
        self.terms: list[str] = []
        self.usd: dict[str, float | None] = {COMPUTE: 0.0, STORAGE: 0.0, TRANSFER: 0.0}
        self.bases: list[str] = []
        self.runtime_s: float | None = None

    def price(self, *keys: str) -> float | None:
        """A price of the table, noting its basis; None: the table has none."""
        value = self.table.price(*keys)
        if value is not None:
            basis = self.table.basis_of(*keys)
            if basis not in self.bases:
                self.bases.append(basis)
        return value

    def amount(self, *keys: str) -> float:
        """A non-price value of the table (minimum, included storage): always set in a valid table."""
        value = self.table.price(*keys)
        assert value is not None, keys
        return value

    def no_price(self, what: str, *keys: str) -> str:
        path = "prices"
        for key in keys:
            path = join_quoted(path, key)
        return f"no price for {what} in price table {self.table.label} ({path})"

    def add(self, part: str, usd: float, term: str) -> None:
        current = self.usd[part]
        if current is not None:
            self.usd[part] = current + usd
        self.terms.append(term)

    def unknown(self, part: str, reason: str) -> None:
        self.usd[part] = None
        self.missing.append(f"{part} cost unknown: {reason}")

    def not_costed(self, reason: str) -> None:
        self.missing.append(reason)

    def assume(self, text: str) -> None:
        self.assumptions.append(text)

    def result(self, runtime_s: float | None) -> CostEstimate:
        runtime = self.runtime_s
        if runtime is None and runtime_s is not None and self.backend != LOCAL:
            runtime = runtime_s
            self.assume(
                "runtime_hours from the task try's duration (runtime_s): the run reports no billed runtime"
            )
        compute = self.usd[COMPUTE]
        storage = self.usd[STORAGE] or 0.0
        transfer = self.usd[TRANSFER] or 0.0
        total = None if compute is None else _money(compute + storage + transfer)
        terms = " + ".join(self.terms) if self.terms else "nothing priced"
        formula = f"{terms} = {fmt_usd(total)}" if total is not None else f"{terms} = unknown (see missing)"
        return CostEstimate(
            runner_class=self.runner_class,
            backend=self.backend,
            runtime_hours=None if runtime is None else round(runtime / 3600.0, MONEY_DECIMALS),
            compute_usd=None if compute is None else _money(compute),
            storage_usd=_money(storage),
            transfer_usd=_money(transfer),
            total_usd=total,
            currency=CURRENCY,
            price_table=self.table.identity(),
            basis=_basis(self.bases),
            formula=formula,
            inputs=dict(self.inputs),
            missing=tuple(self.missing),
            assumptions=tuple(self.assumptions),
        )


def _basis(bases: list[str]) -> str:
    """The bases of the prices used; configured rates are named together: ``configured rates ([barecount] a, b)``."""
    options = [
        basis[len(CONFIGURED_RATE_BASIS) : -1] for basis in bases if basis.startswith(CONFIGURED_RATE_BASIS)
    ]
    others = [basis for basis in bases if not basis.startswith(CONFIGURED_RATE_BASIS)]
    if options:
        word = "configured rate" if len(options) == 1 else "configured rates"
        others.append(f"{word} ([barecount] {', '.join(options)})")
    return "; ".join(others) if others else LIST_PRICE_BASIS


def _architecture(est: _Estimate, run: _Run, path: str, default: str, service: str) -> str | None:
    raw = run.text(path)
    if raw is None:
        est.assume(f"architecture {default} ({path} not reported; {service}'s default)")
        return default
    normalised = {
        "x86_64": "x86_64",
        "x86": "x86_64",
        "amd64": "x86_64",
        "arm64": "arm64",
        "arm": "arm64",
    }.get(raw.lower())
    if normalised not in ARCHITECTURES:
        est.unknown(
            COMPUTE,
            f"{path}: {raw!r} is not an architecture with a price (one of {', '.join(ARCHITECTURES)})",
        )
        return None
    return normalised


# ---------------------------------------------------------------------------------------------------- models


def _lambda(est: _Estimate, run: _Run) -> None:
    """requests x price per 1M + GB (MemorySize/1024) x billed seconds x price per GB-second (architecture)."""
    requests, _ = run.number("billing_inputs.requests")
    if requests is None:
        requests = 1.0
        est.assume("1 request (billing_inputs.requests not reported: one runner_result is one Invoke)")
    billed_ms, why_billed = run.number("billing_inputs.billed_duration_ms")
    memory_mb, why_memory = run.number("billing_inputs.memory_size_mb")
    if memory_mb is None:
        memory_mb, _ = run.number("resources_used.memory_size_mb")
    architecture = _architecture(est, run, "billing_inputs.architecture", "x86_64", "Lambda")
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


def _lambda_storage(est: _Estimate, run: _Run, seconds: float) -> None:
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


def _ecs(est: _Estimate, run: _Run) -> None:
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
    architecture = _architecture(est, run, "billing_inputs.architecture", "x86_64", "Fargate")
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


def _fargate_storage(est: _Estimate, run: _Run, billed_s: float) -> None:
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


def _glue_version(raw: str | None) -> str | None:
    if raw is None:
        return None
    match = re.fullmatch(r"(\d+)(?:\.(\d+))?", raw.strip())
    return f"{match.group(1)}.{match.group(2) or 0}" if match else raw.strip()


def _glue(est: _Estimate, run: _Run) -> None:
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


def _emr_serverless(est: _Estimate, run: _Run) -> None:
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


def _ec2(est: _Estimate, run: _Run) -> None:
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
                f"max({fmt_number(host_seconds)} s, {_plural(host_count, 'host')} x {fmt_number(minimum)} s)"
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


def _kubernetes(est: _Estimate, run: _Run) -> None:
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


def _local(est: _Estimate, runtime_s: float | None) -> None:
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
    est.add(COMPUTE, runtime_s / 3600.0 * rate, _local_term(runtime_s, rate))


def _local_term(runtime_s: float, rate: float) -> str:
    return f"1 slot x {fmt_number(runtime_s)} s/3600 x {fmt_usd(rate)}/slot-h"


_STORAGE_AND_TRANSFER = (
    (STORAGE, "billing_inputs.stored_bytes", ("s3", "standard_gb_month"), "GB-month", "S3 storage"),
    (TRANSFER, "billing_inputs.transfer_out_bytes", ("transfer", "internet_out_gb"), "GB", "data transfer out"),
)
# What a try without a runner_result (every local task) notes: the same two lines each time.
_NOTHING_REPORTED = tuple(
    f"{what}: not reported (no runner_result); counted as 0" for *_, what in _STORAGE_AND_TRANSFER
)


def _storage_and_transfer(est: _Estimate, run: _Run, has_result: bool) -> None:
    """S3 storage the run reports leaving behind (one month) and bytes it reports sending to the internet."""
    if not has_result:
        est.missing.extend(_NOTHING_REPORTED)
        return
    for part, path, keys, unit, what in _STORAGE_AND_TRANSFER:
        value, why = run.number(path)
        if value is None:
            est.not_costed(f"{what}: not reported ({why}); counted as 0")
            continue
        est.inputs[path.split(".", 1)[1]] = value
        price = est.price(*keys)
        if price is None:
            est.not_costed(f"{what}: not costed, " + est.no_price(what, *keys))
            continue
        gb = value / GIB
        est.add(part, gb * price, f"{fmt_number(gb)} {unit} x {fmt_usd(price)}/{unit} ({what})")


# -------------------------------------------------------------------------------------------------- public


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
    run = _Run(runner_result)
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


_MODELS = {
    LAMBDA: _lambda,
    ECS: _ecs,
    KUBERNETES: _kubernetes,
    GLUE: _glue,
    EMR_SERVERLESS: _emr_serverless,
    EC2: _ec2,
}


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
    est = _Estimate(runner_class, backend, table)
    run = _Run(result)
    if backend == LOCAL:
        _local(est, runtime)
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
        _MODELS[backend](est, run)
    _storage_and_transfer(est, run, result is not None)
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
    if rate is not None:  # as _local's one term and _Estimate.result's total (storage and transfer are 0)
        compute = _money(runtime / 3600.0 * rate)
        formula = f"{_local_term(runtime, rate)} = {fmt_usd(compute)}"
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
