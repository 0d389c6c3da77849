"""Kubernetes resource quantities, as pods write them: ``"250m"`` or ``"2"`` CPUs, ``"512Mi"`` or ``"4Gi"`` of
memory (the policy's pod size tables, and the cost of a pod)."""

from __future__ import annotations

import re

from barecount_provider.schema import is_number

_CPU_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEMORY_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|k|K|M|G|T|P)?$")
_MEMORY_UNITS = {
    "": 1,
    **{unit: 1000**power for power, unit in enumerate(("k", "M", "G", "T", "P"), start=1)},
    "K": 1000,
    **{unit: 1024**power for power, unit in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi"), start=1)},
}


def parse_cpu_quantity(value: object) -> float | None:
    """CPUs in a Kubernetes CPU quantity (``"250m"`` -> 0.25, ``"2"`` or 2 -> 2.0); None if it is not one."""
    if is_number(value):
        return float(value) if value >= 0 else None
    match = _CPU_QUANTITY.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    return float(match.group(1)) / (1000 if match.group(2) else 1)


def parse_memory_quantity(value: object) -> float | None:
    """Bytes in a Kubernetes memory quantity (``"512Mi"`` -> 536870912.0); None if it is not one."""
    match = _MEMORY_QUANTITY.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    return float(match.group(1)) * _MEMORY_UNITS[match.group(2) or ""]
