"""``barecount runs``: what BareCount recorded per task try (the file sink's ``task_try`` events), as a table."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from barecount_provider.cli.common import print_json, table_lines, whole_number


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``barecount runs``."""
    runs = sub.add_parser("runs", help="show what BareCount recorded per task try (the file sink)")
    runs.add_argument("--dag", help="only this DAG id")
    runs.add_argument("--last", type=whole_number(1), default=50, help="how many tries to show (default 50)")
    runs.add_argument("--json", action="store_true", help="print the raw JSON lines")
    runs.set_defaults(func=cmd_runs)


def _cell(value: Any, width: int = 28) -> str:
    if value is None or value == "":
        return "-"
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _duration(value: Any) -> str:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return "-"
    return f"{seconds:.2f}s" if seconds < 60 else f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def _active_sinks(sinks: Any) -> str:
    if not isinstance(sinks, dict) or not sinks:
        return "-"
    on = [  # written_by: who wrote the event (the task process or the forwarder), not a sink
        name for name, where in sinks.items() if name != "written_by" and str(where).strip().lower() != "off"
    ]
    return ",".join(on) if on else "none"


def task_label(event: Mapping[str, Any]) -> str:
    """``task_id``, with ``[map_index]`` for a mapped task's try."""
    task = str(event.get("task_id", "?"))
    try:
        map_index = int(event.get("map_index", -1))
    except (TypeError, ValueError):
        map_index = -1
    return f"{task}[{map_index}]" if map_index >= 0 else task


def tries_table(tries: Sequence[Mapping[str, Any]]) -> str:
    """The table of task tries that ``barecount runs`` and ``make demo`` print: one row per file-sink
    ``task_try`` event, sorted by DAG and run (file order within a run), nothing cut but long ids (…)."""
    ordered = sorted(tries, key=lambda e: (str(e.get("dag_id")), str(e.get("run_id"))))
    header = ["dag", "task", "try", "tenant", "pipeline", "runner class", "state", "duration", "trace id", "sinks"]
    rows = [
        [
            _cell(e.get("dag_id"), 30),
            _cell(task_label(e), 24),
            _cell(e.get("try_number"), 4),
            _cell(e.get("tenant"), 16),
            _cell(e.get("pipeline"), 16),
            _cell(e.get("runner_class"), 14),
            _cell(e.get("state"), 16),
            _duration(e.get("duration_s")),
            (str(e["trace_id"])[:12] + "…") if e.get("trace_id") else "-",
            _active_sinks(e.get("sinks")),
        ]
        for e in ordered
    ]
    return "\n".join(table_lines(rows, header))


def cmd_runs(args: argparse.Namespace) -> int:
    from barecount_provider.telemetry.filesink import events_path, read_events

    events = [e for e in read_events() if e.get("kind") == "task_try" and (not args.dag or e.get("dag_id") == args.dag)]
    if args.json:
        for event in events[-args.last :]:
            print_json(event, indent=None)
        return 0
    if not events:
        print(f"no task tries recorded in {events_path()}")
        return 1
    print(tries_table(events[-args.last :]))
    return 0
