"""What every per-backend cost model shares: the backends, the :class:`CostEstimate` a model produces, the
:class:`Run` it reads (a runner_result, with the reasons a field is absent) and the :class:`Estimate` it
fills in (prices used and their basis, terms of the formula, what was not costed, assumptions)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from barecount_provider.cost.format import MONEY_DECIMALS, fmt_usd, money
from barecount_provider.cost.prices import (
    ARCHITECTURES,
    CONFIGURED_RATE_BASIS,
    CURRENCY,
    LIST_PRICE_BASIS,
    PriceTable,
)
from barecount_provider.schema import is_mapping, is_number, join_quoted

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


class Run:
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


class Estimate:
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
        total = None if compute is None else money(compute + storage + transfer)
        terms = " + ".join(self.terms) if self.terms else "nothing priced"
        formula = f"{terms} = {fmt_usd(total)}" if total is not None else f"{terms} = unknown (see missing)"
        return CostEstimate(
            runner_class=self.runner_class,
            backend=self.backend,
            runtime_hours=None if runtime is None else round(runtime / 3600.0, MONEY_DECIMALS),
            compute_usd=None if compute is None else money(compute),
            storage_usd=money(storage),
            transfer_usd=money(transfer),
            total_usd=total,
            currency=CURRENCY,
            price_table=self.table.identity(),
            basis=combined_basis(self.bases),
            formula=formula,
            inputs=dict(self.inputs),
            missing=tuple(self.missing),
            assumptions=tuple(self.assumptions),
        )


def combined_basis(bases: list[str]) -> str:
    """The bases of the prices used; configured rates are named together: ``configured rates ([barecount] a, b)``."""
    options = [
        basis[len(CONFIGURED_RATE_BASIS) : -1] for basis in bases if basis.startswith(CONFIGURED_RATE_BASIS)
    ]
    others = [basis for basis in bases if not basis.startswith(CONFIGURED_RATE_BASIS)]
    if options:
        word = "configured rate" if len(options) == 1 else "configured rates"
        others.append(f"{word} ([barecount] {', '.join(options)})")
    return "; ".join(others) if others else LIST_PRICE_BASIS


def architecture_of(est: Estimate, run: Run, path: str, default: str, service: str) -> str | None:
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
