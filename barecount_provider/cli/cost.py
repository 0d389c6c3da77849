"""``barecount cost report``: cost per day and group (tenant, pipeline, runner class, size, DAG) from the
evidence index; tries whose cost is unknown are named, never counted as 0."""

from __future__ import annotations

import argparse
from typing import Any

from barecount_provider.cli.common import TIMES, print_json, print_table, time_arg, time_value


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``barecount cost report``."""
    cost = sub.add_parser("cost", help="cost attribution from the evidence index")
    cost_sub = cost.add_subparsers(dest="cost_command", metavar="SUBCOMMAND", required=True)
    report = cost_sub.add_parser(
        "report",
        help="cost per day and group (tenant, pipeline, runner_class, size, dag_id)",
        description="Sums the cost lines of the runs that ended in the range, per UTC day and group.",
    )
    report.add_argument(
        "--by",
        action="append",
        metavar="GROUP",
        help="tenant, pipeline, runner_class, size or dag_id; repeat or comma-separate for several (default tenant)",
    )
    report.add_argument("--since", type=time_value, default="30d", help=f"from this day on: {TIMES} (default 30d)")
    report.add_argument("--until", type=time_value, help=f"before this day: {TIMES} (default: no end)")
    report.add_argument("--tenant", help="only this tenant")
    report.add_argument("--no-per-day", action="store_true", help="one row per group over the whole range")
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    report.set_defaults(func=cmd_cost_report)


def cmd_cost_report(args: argparse.Namespace) -> int:
    from barecount_provider.api import queries
    from barecount_provider.evidence.store import open_store

    groups = queries.validate_groups(args.by or ["tenant"])
    rows, totals = queries.cost_report(
        open_store(),
        groups,
        since=time_arg(args.since),
        until=time_arg(args.until),
        tenant=args.tenant,
        per_day=not args.no_per_day,
    )
    if args.json:
        document = {"by": groups, "per_day": not args.no_per_day, "rows": rows, "total_entries": len(rows)}
        print_json({**document, "totals": totals})
        return 0
    if not rows:
        print("no cost recorded in this range")
        return 0
    keys = ([] if args.no_per_day else ["day"]) + groups

    def sums(values: dict[str, Any], known: bool) -> list[str]:
        if not known:  # only tries of unknown cost: no number is shown as 0
            return ["unknown"] * 5
        return [f"{values['runtime_hours']:.3f}"] + [
            f"{values[name]:.4f}" + (" +?" if name == "total_usd" and values["unknown_tries"] else "")
            for name in ("compute_usd", "storage_usd", "transfer_usd", "total_usd")
        ]

    table = [[str(row[k]) for k in keys] + sums(row, row["runs"] > 0) + [str(row["runs"]), str(row["unknown_tries"])] for row in rows]
    known_runs = sum(row["runs"] for row in rows)
    table.append(["total"] + [""] * (len(keys) - 1) + sums(totals, known_runs > 0) + [str(known_runs), str(totals["unknown_tries"])])
    print_table(
        table,
        keys + ["hours", "compute usd", "storage usd", "transfer usd", "total usd", "runs", "unknown tries"],
        right=tuple(range(len(keys), len(keys) + 7)),
    )
    print("\nestimates from list prices (the records' price tables), USD")
    if totals["unknown_tries"]:
        reasons = sorted({reason for row in rows for reason in row["unknown_reasons"]})
        print(
            f"+?: {totals['unknown_tries']} tries' cost is unknown and is not in the sums (never counted as 0); "
            "`barecount evidence show RECORD` names each. Why:"
        )
        for reason in reasons:
            print(f"  - {reason}")
    return 0
