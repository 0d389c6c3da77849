"""Pool runs of ``bench_real_tasks.py`` (their ``--json`` files) into one paired estimate per Airflow.

Each run's rounds stay rounds of their own (numbered apart), so the estimate is still observed − opted out
paired by round, with its 95% bootstrap interval over all the rounds of all the runs: the same statistics
as one run of that many rounds. Pool only runs made with the same options (``--together`` or not) on the
same code, or say what differs.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_real_tasks.py ... --no-docs --json F.json
    .venv/bin/python benchmarks/bench_real_tasks.py ... --no-docs --json G.json
    .venv/bin/python benchmarks/pool_real_tasks.py F.json G.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_overhead import median
from bench_real_tasks import AGAIN, TARGET_END_TO_END, _values, overhead

ROUND_OFFSET = 1000  # the rounds of the n-th file are numbered from n * ROUND_OFFSET


def pooled_rows(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {}
    for index, result in enumerate(results):
        for kind, data in result["rows"].items():
            for row in data:
                rows.setdefault(kind, []).append({**row, "round": row["round"] + index * ROUND_OFFSET})
    return rows


def pool(results: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    rows = pooled_rows(results)
    disabled = rows["disabled observed"]
    net = all("wall_net_ms" in r["life"] for r in disabled)
    end_to_end = median(_values(disabled, "wall_net_ms" if net else "wall_ms"))
    verdict: dict[str, Any] = {"end_to_end_ms": end_to_end, "overheads": {}}
    lines = [
        f"Pooled: {len(results)} runs, end to end of a task with BareCount disabled {end_to_end:.1f} ms.",
        "",
        "| Airflow | rounds | CPU, ms (interval) | share of end to end (interval) | page faults | target < 2% (CPU) |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("default", "sinks_up", "sinks_down"):
        if f"{name} observed" not in rows or f"{name} opted out" not in rows:
            continue
        obs, opt = rows[f"{name} observed"], rows[f"{name} opted out"]
        cpu = overhead(obs, opt, "cpu_ms")
        faults = median(_values(obs, "minflt")) - median(_values(opt, "minflt"))
        share, low, high = (cpu[key] / end_to_end for key in ("delta", "low", "high"))
        met = "met" if high < TARGET_END_TO_END else "missed" if low >= TARGET_END_TO_END else "not resolved"
        verdict["overheads"][name] = {**cpu, "share": share, "share_low": low, "share_high": high}
        lines.append(
            f"| {name} | {cpu['rounds']} | {cpu['delta']:+.2f} ({cpu['low']:+.2f} to {cpu['high']:+.2f}) | "
            f"**{100 * share:.2f}%** ({100 * low:+.2f}% to {100 * high:+.2f}%) | {faults:+.0f} | {met} |"
        )
    if f"disabled {AGAIN}" in rows:
        aa = overhead(rows[f"disabled {AGAIN}"], disabled, "cpu_ms")
        verdict["control_together"] = aa
        lines += ["", f"A/A (`--together`), over {aa['rounds']} rounds: {aa['delta']:+.2f} ms of CPU "
                      f"({aa['low']:+.2f} to {aa['high']:+.2f})."]
    return "\n".join(lines), verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="--json files of bench_real_tasks.py")
    args = parser.parse_args(argv)
    markdown, _ = pool([json.loads(path.read_text()) for path in args.files])
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
