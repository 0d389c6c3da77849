"""Validation of a policy document: its sections (:mod:`.sections`), the rules across keys, and every copy of
a key given more than once. Every mistake is collected before :class:`PolicyError` is raised."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from barecount_provider.policy.model import BUILT_IN_SOURCE, SIZES, SUPPORTED_VERSIONS, TENANT_NAME
from barecount_provider.policy.quantities import parse_cpu_quantity, parse_memory_quantity
from barecount_provider.policy.sections import SETTINGS, TOP_LEVEL_KEYS
from barecount_provider.schema import (
    MISSING,
    Copy,
    Problem,
    ProblemsError,
    Report,
    Unreadable,
    check_value,
    is_number,
    join_dotted,
    merge,
    parse_yaml,
)


class PolicyError(ProblemsError):
    """An invalid policy. ``problems`` holds every mistake found; the message lists them, one per line."""


def _get(mapping: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def _sets(mapping: object, *keys: str) -> bool:
    """Whether ``mapping`` (a tenant's raw overrides) sets the key path itself."""
    *parents, last = keys
    parent = _get(mapping, *parents) if parents else mapping
    return isinstance(parent, dict) and last in parent


def _check_order(
    merged: dict[str, Any],
    own: object,
    path: str,
    report: Report,
    keys: tuple[str, ...],
    low: str,
    high: str,
    amount: Callable[[object], float | None],
) -> None:
    """``high`` must be >= ``low`` (both under ``keys``) in the effective settings ``merged``.

    The mistake is reported at the key that ``own`` (the raw mapping being checked) sets, ``high`` when it
    sets both; when it sets neither, the mistake belongs to the level it was inherited from.
    """
    low_value, high_value = _get(merged, *keys, low), _get(merged, *keys, high)
    low_amount, high_amount = amount(low_value), amount(high_value)
    if low_amount is None or high_amount is None or high_amount >= low_amount:
        return
    where = ".".join((path, *keys))
    if _sets(own, *keys, high):
        report.add(f"{where}.{high}", high_value, f"a value >= {low} ({low_value!r})")
    elif _sets(own, *keys, low):
        report.add(f"{where}.{low}", low_value, f"a value <= {high} ({high_value!r})")


def _number_or_none(value: object) -> float | None:
    return float(value) if is_number(value) else None


def _check_consistency(merged: dict[str, Any], own: object, path: str, report: Report) -> None:
    """Rules across keys, checked on the effective settings of ``defaults`` or of one tenant."""
    _check_order(
        merged,
        own,
        path,
        report,
        ("retry_budget",),
        "backoff_base_seconds",
        "backoff_max_seconds",
        _number_or_none,
    )
    for size in SIZES:
        pod = ("size_tables", "container", size, "pod")
        _check_order(merged, own, path, report, pod, "cpu_request", "cpu_limit", parse_cpu_quantity)
        _check_order(merged, own, path, report, pod, "memory_request", "memory_limit", parse_memory_quantity)


def _check_document(document: object, report: Report, base: Mapping[str, Any]) -> None:
    """Every mistake of a parsed policy document, checked against the base defaults it will merge over."""
    if not isinstance(document, dict):
        report.add("", document, f"a mapping with the keys {', '.join(TOP_LEVEL_KEYS)}")
        return
    for key in document:
        if key not in TOP_LEVEL_KEYS:
            report.add(str(key), key, f"a known key (allowed: {', '.join(TOP_LEVEL_KEYS)})")

    if "version" not in document:
        report.add("version", MISSING, "version: 1")
    else:
        version = document["version"]
        supported = ", ".join(str(number) for number in SUPPORTED_VERSIONS)
        if not (isinstance(version, int) and not isinstance(version, bool)):
            report.add("version", version, f"an integer policy version (supported: {supported})")
        elif version not in SUPPORTED_VERSIONS:
            report.add("version", version, f"a supported policy version (supported: {supported})")

    defaults = document.get("defaults")
    check_value(SETTINGS, defaults, "defaults", report, null_sets_nothing=True)
    merged_defaults = merge(base, defaults if isinstance(defaults, dict) else None)
    # Rules are reported where the file sets one of their keys; the built-in (no base) sets them all.
    _check_consistency(merged_defaults, defaults if base else merged_defaults, "defaults", report)

    tenants = document.get("tenants")
    if tenants is None:
        return
    if not isinstance(tenants, dict):
        report.add("tenants", tenants, "a mapping of tenant name -> settings")
        return
    for name, overrides in tenants.items():
        path = join_dotted("tenants", name)
        if not (isinstance(name, str) and TENANT_NAME.fullmatch(name)):
            report.add(path, name, f"a tenant name matching {TENANT_NAME.pattern}")
        check_value(SETTINGS, overrides, path, report, null_sets_nothing=True)
        if isinstance(overrides, dict):
            _check_consistency(merge(merged_defaults, overrides), overrides, path, report)


def _under(key_path: str, path: str) -> bool:
    return key_path == path or key_path.startswith((f"{path}.", f"{path}["))


def _with_value(document: object, keys: tuple[Any, ...], value: object) -> object:
    """A copy of ``document`` with ``value`` at ``keys`` (the rest shared, not changed)."""
    if not keys:
        return value
    head, rest = keys[0], keys[1:]
    if isinstance(document, dict) and head in document:
        return {**document, head: _with_value(document[head], rest, value)}
    if isinstance(document, list) and isinstance(head, int) and head < len(document):
        return [*document[:head], _with_value(document[head], rest, value), *document[head + 1 :]]
    return document


def _check_copies(
    document: object, copies: list[tuple[Copy, object]], report: Report, base: Mapping[str, Any]
) -> None:
    """Check every copy of each key given more than once, not only the one YAML keeps: a mistake inside a
    copy is reported with that copy's line (the kept copy's mistakes, found by the normal check, get its
    line too)."""
    kept = {copy.path: copy.line for copy, _ in copies if copy.last}
    for index, problem in enumerate(report.problems):
        paths = [path for path in kept if _under(problem.key_path, path)]
        if paths and problem.line is None and not isinstance(problem.value, Unreadable):
            report.problems[index] = replace(problem, line=kept[max(paths, key=len)])  # the innermost copy
    for copy, value in copies:
        if copy.last:
            continue
        scratch = Report(report.file)
        _check_document(_with_value(document, copy.keys, value), scratch, base)
        for problem in scratch.problems:
            if _under(problem.key_path, copy.path) and not isinstance(problem.value, Unreadable):
                report.problems.append(replace(problem, line=copy.line))


def validated(text: str, source: str, base: Mapping[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    report = Report(source)
    parsed, document, copies = parse_yaml(text, report, "a policy with at least `version: 1`")
    if parsed:
        _check_document(document, report, base)
        if copies:
            _check_copies(document, copies, report, base)
    if report.problems:
        return {}, report.problems
    assert isinstance(document, dict)
    return document, []


def incomplete_problems(defaults: Mapping[str, Any]) -> list[Problem]:
    """The keys the built-in ``defaults`` lack (they must set every key but the optional sections')."""
    report = Report(BUILT_IN_SOURCE)
    check_value(SETTINGS, defaults, "defaults", report, null_sets_nothing=True,
                missing="every key set in the built-in defaults")
    return report.problems
