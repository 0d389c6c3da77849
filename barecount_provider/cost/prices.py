"""The dated price table of the cost models, and a deployment's override of it.

The provider ships ``prices_us_east_1.yaml``: public us-east-1 on-demand list prices, with the date they were
gathered, their source and a caveat. A deployment overrides it with a YAML or JSON file (``[barecount]
cost_price_table_path``) that sets its own ``name`` and ``version`` and only the prices that differ (its
negotiated rates, another region's prices); the file is merged over the shipped table key by key (mappings
merge, plain values replace). The rates of Kubernetes pods and ``local`` tasks have no list price: they come
from the override file or from ``[barecount]`` options (:func:`configured_price_table`).

Validation collects every mistake before raising, and each one names the file, the key path, the bad value
and what was expected, in the words of the policy's errors::

    prices.yaml: prices.glue.dpu_hour.FLX: 'FLX' is not a known key (allowed: STANDARD, FLEX)

The reference of every key is docs/cost.md.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

# The schema layer the governance policy uses too: both files read alike.
from barecount_provider.schema import (
    MISSING,
    MapOf,
    Problem,
    ProblemsError,
    Report,
    Section,
    Unreadable,
    check_value,
    frozen,
    integer,
    is_mapping,
    is_number,
    join_quoted,
    merge,
    number,
    parse_yaml,
    problems_of,
    read_text_file,
)

SHIPPED_FILE = "prices_us_east_1.yaml"
SHIPPED_SOURCE = "<shipped price table>"
LIST_PRICE_BASIS = "list-price estimate"
CONFIGURED_RATE_BASIS = "configured rate ([barecount] "
CURRENCY = "USD"
ARCHITECTURES = ("x86_64", "arm64")
EXECUTION_CLASSES = ("STANDARD", "FLEX")

# [barecount] options read by configured_price_table() (declared in barecount_provider/config.py).
PATH_OPTION = "cost_price_table_path"
RATE_OPTIONS = {
    "cost_kubernetes_vcpu_hour_usd": ("kubernetes", "vcpu_hour"),
    "cost_kubernetes_gb_hour_usd": ("kubernetes", "gb_hour"),
    "cost_local_worker_slot_hour_usd": ("local", "worker_slot_hour"),
}

# --------------------------------------------------------------------------------------------------- problems


class PriceTableError(ProblemsError):
    """An invalid price table. ``problems`` holds every mistake; the message lists them, one per line."""


# ----------------------------------------------------------------------------------------------------- schema

PRICE_EXPECTED = "a price in USD (a number >= 0), or null for no price"
PRICE = number(0, nullable=True, expected=PRICE_EXPECTED)  # null: no price (what needs it is not costed)
AMOUNT = number(0)
SECONDS = integer(0, expected="a whole number of seconds >= 0")

_PER_ARCHITECTURE = Section(dict.fromkeys(ARCHITECTURES, PRICE))

SCHEMA = Section(
    {
        "lambda": Section(
            {
                "request_per_million": PRICE,
                "gb_second": _PER_ARCHITECTURE,
                "ephemeral_storage_gb_second": PRICE,
                "included_ephemeral_storage_mb": AMOUNT,
            }
        ),
        "fargate": Section(
            {
                "vcpu_hour": _PER_ARCHITECTURE,
                "gb_hour": _PER_ARCHITECTURE,
                "ephemeral_storage_gb_hour": PRICE,
                "included_ephemeral_storage_gb": AMOUNT,
                "minimum_s": SECONDS,
            }
        ),
        "glue": Section(
            {
                "dpu_hour": Section(dict.fromkeys(EXECUTION_CLASSES, PRICE)),
                "minimum_s": SECONDS,
                "minimum_s_by_version": MapOf(r"\d+\.\d+", "a Glue version such as '1.0' (quoted)", SECONDS),
            }
        ),
        "emr_serverless": Section({"vcpu_hour": PRICE, "gb_hour": PRICE, "storage_gb_hour": PRICE}),
        "ec2": Section(
            {
                "minimum_s": SECONDS,
                "instance_hour": MapOf(
                    r"[a-z][a-z0-9-]*\.[a-z0-9]+", "an EC2 instance type such as 'm5.large'", PRICE
                ),
            }
        ),
        "kubernetes": Section({"vcpu_hour": PRICE, "gb_hour": PRICE}),
        "local": Section({"worker_slot_hour": PRICE}),
        "s3": Section({"standard_gb_month": PRICE}),
        "transfer": Section({"internet_out_gb": PRICE}),
    }
)

_TEXT_KEYS = ("date", "region", "basis", "source", "caveat")
TOP_LEVEL_KEYS = ("name", "version", *_TEXT_KEYS, "currency", "prices")


def _as_version(value: object) -> str | None:
    """A version or date as text: YAML reads ``2027-01-15`` as a date, and ``3`` as a number."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, str):
        return value.strip() or None
    if is_number(value):
        return str(value)
    return None


def _check_document(document: object, report: Report, *, complete: bool) -> None:
    if not isinstance(document, dict):
        report.add(
            "",
            Unreadable(f"holds a {type(document).__name__}"),
            f"a mapping with the keys {', '.join(TOP_LEVEL_KEYS)}",
        )
        return
    for key in document:
        if key not in TOP_LEVEL_KEYS:
            report.add(report.join("", key), key, f"a known key (allowed: {', '.join(TOP_LEVEL_KEYS)})")
    for key in ("name", "version"):
        if key not in document:
            whose = "the table's" if complete else "the override's own"
            what = "name (a non-empty string)" if key == "name" else "version, such as '2027-01'"
            report.add(key, MISSING, f"{whose} {what}")
    if "name" in document and not (isinstance(document["name"], str) and document["name"].strip()):
        report.add("name", document["name"], "the table's name (a non-empty string)")
    if "version" in document and _as_version(document["version"]) is None:
        report.add("version", document["version"], "the table's version (a string such as '2027-01')")
    for key in _TEXT_KEYS:
        if key == "date" and key in document and _as_version(document[key]) is not None:
            continue
        if key in document and not (isinstance(document[key], str) and document[key].strip()):
            report.add(key, document[key], "a non-empty string")
        elif complete and key not in document:
            report.add(key, MISSING, "a non-empty string")
    if "currency" in document and document["currency"] != CURRENCY:
        report.add("currency", document["currency"], f"{CURRENCY!r} (the only currency of the cost models)")
    if "prices" in document:
        missing = "every key set in the shipped price table" if complete else ""
        check_value(SCHEMA, document["prices"], "prices", report, missing=missing)
    elif complete:
        report.add("prices", MISSING, "the prices")


# -------------------------------------------------------------------------------------------------- parsing


def _parse(text: str, source: str, report: Report) -> tuple[bool, object]:
    """(parsed, document): JSON for a ``.json`` source, else YAML; errors with their line and column."""
    if source.lower().endswith(".json"):
        try:
            return True, json.loads(text, object_pairs_hook=_json_object(report))
        except json.JSONDecodeError as err:
            reason = f"JSON syntax error at line {err.lineno}, column {err.colno}: {err.msg}"
            report.add("", Unreadable(reason), "valid JSON")
            return False, None
    expected = "a price table with at least `name` and `version`"
    parsed, document, _ = parse_yaml(text, report, expected, syntax_context=False)
    return parsed, document


def _json_object(report: Report) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                report.add(report.join("", key), Unreadable("given again"), "each key once in an object")
            result[key] = value
        return result

    return hook


# ----------------------------------------------------------------------------------------------- the table


def _leaf_paths(value: Mapping[str, Any], path: str) -> Iterator[str]:
    for key, item in value.items():
        if isinstance(item, Mapping):
            yield from _leaf_paths(item, join_quoted(path, key))
        else:
            yield join_quoted(path, key)


@dataclass(frozen=True)
class PriceTable:
    """A validated price table: its identity (name, version, date, region, source, caveat), how its prices
    are to be read (``basis``), and the prices. ``price_basis`` gives the basis of each price that does not
    come from the shipped list prices (``prices.ec2.instance_hour['m5.large']`` -> ``negotiated rates (x)``)."""

    name: str
    version: str
    date: str
    region: str
    currency: str
    basis: str
    source: str
    caveat: str
    prices: Mapping[str, Any] = field(hash=False, repr=False)
    origin: str = SHIPPED_SOURCE
    price_basis: Mapping[str, str] = field(hash=False, repr=False, default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    def identity(self) -> dict[str, str]:
        """What a cost estimate records of its table."""
        return {"name": self.name, "version": self.version, "date": self.date, "region": self.region}

    def price(self, *keys: str) -> float | None:
        """The price at ``prices.<keys...>`` (None: the table has none)."""
        value: Any = self.prices
        for key in keys:
            if not is_mapping(value) or key not in value:
                return None
            value = value[key]
        return float(value) if is_number(value) else None

    def basis_of(self, *keys: str) -> str:
        path = "prices"
        for key in keys:
            path = join_quoted(path, key)
        return self.price_basis.get(path, LIST_PRICE_BASIS)

    def with_rates(self, rates: Mapping[tuple[str, str], float], basis: str) -> PriceTable:
        """This table with ``(section, key) -> rate`` set (the ``[barecount]`` options), each with ``basis``."""
        if not rates:
            return self
        for (section, key), rate in rates.items():
            entry = SCHEMA.fields.get(section)
            if not (isinstance(entry, Section) and entry.fields.get(key) is PRICE) or any(PRICE(rate)):
                raise ValueError(f"rate prices.{section}.{key}: {rate!r} is not {PRICE_EXPECTED}")
        override: dict[str, Any] = {}
        for (section, key), rate in rates.items():
            override.setdefault(section, {})[key] = float(rate)
        price_basis = dict(self.price_basis)
        price_basis.update({f"prices.{section}.{key}": basis for section, key in rates})
        return PriceTable(
            name=self.name,
            version=self.version,
            date=self.date,
            region=self.region,
            currency=self.currency,
            basis=self.basis,
            source=self.source,
            caveat=self.caveat,
            prices=frozen(merge(self.prices, override)),
            origin=self.origin,
            price_basis=types.MappingProxyType(price_basis),
        )


def _table(document: Mapping[str, Any], origin: str, price_basis: Mapping[str, str]) -> PriceTable:
    version = _as_version(document["version"]) or ""
    return PriceTable(
        name=str(document["name"]).strip(),
        version=version,
        date=_as_version(document.get("date")) or version,
        region=str(document.get("region", "")),
        currency=CURRENCY,
        basis=str(document["basis"]),
        source=str(document.get("source", "")),
        caveat=str(document.get("caveat", "")),
        prices=frozen(dict(document["prices"])),
        origin=origin,
        price_basis=types.MappingProxyType(dict(price_basis)),
    )


@functools.cache
def shipped_price_table() -> PriceTable:
    """The price table shipped with the provider (read and validated once per process)."""
    text = resources.files("barecount_provider.cost").joinpath(SHIPPED_FILE).read_text(encoding="utf-8")
    report = Report(SHIPPED_SOURCE, join_quoted)
    parsed, document = _parse(text, SHIPPED_SOURCE, report)
    if parsed:
        _check_document(document, report, complete=True)
    if report.problems:  # a packaging mistake
        raise PriceTableError(report.problems)
    assert isinstance(document, dict)
    return _table(document, SHIPPED_SOURCE, {})


def parse_price_table(text: str, source: str = "<string>", base: PriceTable | None = None) -> PriceTable:
    """An override (YAML, or JSON when ``source`` ends in ``.json``) merged over ``base`` (default: the
    shipped table). Raises :class:`PriceTableError` listing every mistake."""
    base = base if base is not None else shipped_price_table()
    report = Report(source, join_quoted)
    parsed, document = _parse(text, source, report)
    if parsed:
        _check_document(document, report, complete=False)
    if report.problems:
        raise PriceTableError(report.problems)
    assert isinstance(document, dict)
    name = str(document["name"]).strip()
    basis = str(document.get("basis") or f"negotiated rates ({name})").strip()
    overridden = dict(base.price_basis)
    overridden.update(dict.fromkeys(_leaf_paths(document.get("prices") or {}, "prices"), basis))
    merged = {
        "name": name,
        "version": document["version"],
        "date": document.get("date") or document["version"],
        "region": document.get("region", base.region),
        "basis": basis,
        "source": document.get("source") or f"{source}, over {base.label} ({base.source})",
        "caveat": document.get("caveat", base.caveat),
        "prices": merge(base.prices, document.get("prices") or {}),
    }
    return _table(merged, source, overridden)


def load_price_table(path: str | None = None) -> PriceTable:
    """The shipped table (``path`` None or empty), or the override file at ``path`` merged over it."""
    if not path:
        return shipped_price_table()
    return parse_price_table(read_text_file(path, "price table file", PriceTableError), source=path)


def validate_price_file(path: str) -> list[Problem]:
    """Every mistake of the override file at ``path``, instead of raising; empty when it is valid."""
    return problems_of(lambda: load_price_table(path), PriceTableError)


# ------------------------------------------------------------------------------------------ configuration


def _option(name: str) -> Any:
    """``barecount_provider.config.<name>()``; None while the option is not declared there."""
    from barecount_provider import config

    getter = getattr(config, name, None)
    return getter() if callable(getter) else None


def _rate(name: str, value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = math.nan
    if not math.isfinite(rate) or rate < 0 or isinstance(value, bool):
        raise ValueError(
            f"[barecount] {name}: {value!r} is not a rate in USD (a number >= 0, or empty: not set)"
        )
    return rate


def apply_configured_rates(
    table: PriceTable,
    *,
    kubernetes_vcpu_hour_usd: float | None = None,
    kubernetes_gb_hour_usd: float | None = None,
    local_worker_slot_hour_usd: float | None = None,
) -> PriceTable:
    """``table`` with the Kubernetes and local rates of the ``[barecount]`` options (None: keep the table's);
    each price used then has the basis ``configured rate ([barecount] <option>)``."""
    given = {
        "cost_kubernetes_vcpu_hour_usd": kubernetes_vcpu_hour_usd,
        "cost_kubernetes_gb_hour_usd": kubernetes_gb_hour_usd,
        "cost_local_worker_slot_hour_usd": local_worker_slot_hour_usd,
    }
    for name, rate in given.items():
        if rate is not None:
            table = table.with_rates({RATE_OPTIONS[name]: rate}, f"{CONFIGURED_RATE_BASIS}{name})")
    return table


@functools.cache
def configured_price_table() -> PriceTable:
    """The deployment's price table, read once per process: the shipped table, the override file of
    ``[barecount] cost_price_table_path`` merged over it, then the Kubernetes and local rates of the
    ``[barecount] cost_*_usd`` options (an option that is set wins). ``configured_price_table.cache_clear()``
    forgets it."""
    path = _option(PATH_OPTION)
    table = load_price_table(str(path).strip() if path else None)
    rates = {name: _rate(name, _option(name)) for name in RATE_OPTIONS}
    return apply_configured_rates(
        table,
        kubernetes_vcpu_hour_usd=rates["cost_kubernetes_vcpu_hour_usd"],
        kubernetes_gb_hour_usd=rates["cost_kubernetes_gb_hour_usd"],
        local_worker_slot_hour_usd=rates["cost_local_worker_slot_hour_usd"],
    )
