"""Regenerate the metric table of docs/metrics.md from barecount_provider.telemetry.metrics.CATALOG."""

from __future__ import annotations

import sys
from pathlib import Path

from barecount_provider.telemetry.metrics import CATALOG

BEGIN, END = "<!-- metrics:begin -->", "<!-- metrics:end -->"


def table() -> str:
    rows = [
        "| name | type | unit | tags | when emitted | Prometheus (statsd-exporter) | Prometheus (OTLP) |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in CATALOG.values():
        rows.append(
            f"| `{spec.name}` | {spec.kind} | {spec.unit} | {', '.join(spec.tags)} | {spec.when} | "
            f"`{spec.prometheus_statsd}` | `{spec.prometheus_otlp}` |"
        )
    return "\n".join(rows)


def main() -> int:
    path = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
    text = path.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    new = text[:start] + "\n" + table() + "\n" + text[end:]
    if "--check" in sys.argv:
        return 0 if new == text else 1
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
