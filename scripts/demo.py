#!/usr/bin/env python3
"""`make demo`: run every example DAG on a real Airflow on loopback, then show what BareCount recorded.

1. wipes and prepares ``<repo>/.airflow-demo`` as AIRFLOW_HOME (SQLite, LocalExecutor);
2. starts the api-server, scheduler and dag-processor, all bound to 127.0.0.1 (see tests/system/stack.py);
3. waits until every DAG file of ``<repo>/dags`` is parsed, triggers each DAG once and waits for the runs
   (failed runs are fine: some examples fail on purpose);
4. stops the components by their process id;
5. prints, per task try, what BareCount's file sink wrote to
   ``<AIRFLOW_HOME>/barecount/telemetry/events.jsonl`` and where each sink sent its data.

Exit status: 0 when the stack ran and BareCount recorded task tries; 1 when nothing was recorded or a DAG
file failed to import; 2 when Airflow itself failed (start-up, a component died, a run timed out).

``--events FILE`` only prints the table of an existing events file (no Airflow started).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_HOME = REPO / ".airflow-demo"
DAGS = REPO / "dags"
EVENTS_RELATIVE = Path("barecount") / "telemetry" / "events.jsonl"


# DAGs that need an external runner (AWS, a Kubernetes cluster) run against emulators in the tests.
SKIP_TAGS = ("needs-aws", "needs-k8s")


def _load_stack() -> ModuleType:
    """tests/system/stack.py, loaded by path (``tests`` is not an installed package)."""
    path = REPO / "tests" / "system" / "stack.py"
    spec = importlib.util.spec_from_file_location("barecount_demo_stack", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def say(message: str = "") -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- reading and printing events


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every JSON object of a JSON-lines file; blank and torn lines are skipped."""
    events = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                events.append(obj)
    return events


def _text(value: Any, width: int = 28) -> str:
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
    on = [name for name, where in sinks.items() if str(where).strip().lower() != "off"]
    return ",".join(on) if on else "none"


def _task_label(event: dict[str, Any]) -> str:
    task = str(event.get("task_id", "?"))
    try:
        map_index = int(event.get("map_index", -1))
    except (TypeError, ValueError):
        map_index = -1
    return f"{task}[{map_index}]" if map_index >= 0 else task


def format_table(tries: list[dict[str, Any]]) -> str:
    header = [
        "dag",
        "task",
        "try",
        "tenant",
        "pipeline",
        "runner class",
        "state",
        "duration",
        "trace id",
        "sinks",
    ]
    rows = [
        [
            _text(e.get("dag_id"), 30),
            _text(_task_label(e), 24),
            _text(e.get("try_number"), 4),
            _text(e.get("tenant"), 16),
            _text(e.get("pipeline"), 16),
            _text(e.get("runner_class"), 14),
            _text(e.get("state"), 16),
            _duration(e.get("duration_s")),
            (str(e["trace_id"])[:12] + "…") if e.get("trace_id") else "-",
            _active_sinks(e.get("sinks")),
        ]
        for e in tries
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def format_sinks(tries: list[dict[str, Any]]) -> str:
    """Each sink and every place its data went (in order of first appearance)."""
    where: dict[str, list[str]] = {}
    for event in tries:
        sinks = event.get("sinks")
        if not isinstance(sinks, dict):
            continue
        for name, destination in sinks.items():
            places = where.setdefault(str(name), [])
            if str(destination) not in places:
                places.append(str(destination))
    if not where:
        return "  (the records name no sinks)"
    width = max(len(name) for name in where)
    return "\n".join(f"  {name.ljust(width)}  {', '.join(places)}" for name, places in where.items())


def report(events_file: Path) -> int:
    """Print what BareCount recorded; 0 if there were task tries, 1 otherwise."""
    if not events_file.is_file():
        say(f"BareCount recorded NOTHING: {events_file} does not exist.")
        say("Is the provider installed and its file sink on ([barecount] file_sink_on)? See the task logs.")
        return 1
    events = read_events(events_file)
    tries = [e for e in events if e.get("kind") == "task_try"]
    if not tries:
        kinds = Counter(str(e.get("kind")) for e in events)
        found = ", ".join(f"{kind} ({n})" for kind, n in sorted(kinds.items())) or "none"
        say(f"BareCount recorded NO task tries in {events_file}: {len(events)} record(s); kinds: {found}.")
        return 1
    tries.sort(key=lambda e: (str(e.get("dag_id")), str(e.get("run_id"))))  # stable: file order within a run
    other = Counter(str(e.get("kind")) for e in events if e.get("kind") != "task_try")

    say(f"What BareCount recorded ({len(tries)} task tries, from {events_file}):")
    say()
    say(format_table(tries))
    say()
    sources = Counter(str(e.get("source", "?")) for e in tries)
    say("Recorded by: " + ", ".join(f"{src} ({n})" for src, n in sorted(sources.items())))
    if other:
        say("Other records: " + ", ".join(f"{kind} ({n})" for kind, n in sorted(other.items())))
    say()
    say("Where the telemetry went:")
    say(format_sinks(tries))
    return 0


# --------------------------------------------------------------------------- running the DAGs


def _wait_for_quiet_file(path: Path, quiet: float = 3.0, limit: float = 20.0) -> None:
    """Listeners may finish after Airflow marks a run done: wait until the events file stops growing."""
    deadline = time.monotonic() + limit
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        size = path.stat().st_size if path.exists() else 0
        if size != last:
            last, since = size, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.5)


def run_dags(home: Path, timeout: float) -> tuple[int, str]:
    """Start Airflow, run every DAG once, stop it. Returns (exit status so far, message)."""
    stack_mod = _load_stack()
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    stack = stack_mod.AirflowStack(home=home, dags_folder=DAGS)
    status = 0
    say(f"Starting Airflow (api-server, scheduler, dag-processor; LocalExecutor; SQLite) in {home} ...")
    try:
        stack.start()
        say(
            f"Ready in {stack.startup_seconds:.0f}s: {stack.base_url} "
            f"(user {stack_mod.ADMIN_USER} / password {stack_mod.ADMIN_PASSWORD})."
        )
        listeners = stack.listening_sockets()
        exposed = [
            f"{s['ip']}:{s['port']} (pid {s['pid']})" for s in listeners if s["ip"] != stack_mod.LOOPBACK
        ]
        if exposed:
            say("WARNING: listening beyond loopback: " + ", ".join(exposed))
            status = 1
        else:
            say(f"Listening sockets: {', '.join(str(s['port']) for s in listeners)}, all on 127.0.0.1.")
        deadline = time.monotonic() + timeout
        dag_ids, import_errors = stack.wait_for_dags_folder(timeout=min(180.0, timeout))
        for error in import_errors:
            say(f"IMPORT ERROR in dags/{error.get('filename')}:\n{error.get('stack_trace')}")
            status = 1
        if not dag_ids:
            return 1, f"no DAG found in {DAGS}"
        say(f"DAGs in dags/: {', '.join(dag_ids)}")

        runs = {}
        for dag_id in dag_ids:
            tags = {tag.get("name") for tag in stack.api("GET", f"dags/{dag_id}").json().get("tags", [])}
            skip = sorted(tags & set(SKIP_TAGS))
            if skip:
                say(f"  skipped {dag_id}: tagged {skip[0]!r} (it runs against an emulator in the tests)")
                continue
            stack.unpause(dag_id)
            runs[dag_id] = stack.trigger(dag_id)
            say(f"  triggered {dag_id}: {runs[dag_id]}")
        say("Waiting for the runs to finish (some examples fail and retry on purpose) ...")
        for dag_id, run_id in runs.items():
            state = stack.wait_for_run(dag_id, run_id, timeout=max(1.0, deadline - time.monotonic()))
            tasks = ", ".join(
                _task_label(ti)
                + f"={ti['state']}"
                + (f" (try {ti['try_number']})" if (ti.get("try_number") or 0) > 1 else "")
                for ti in stack.task_instances(dag_id, run_id)
            )
            say(f"  {dag_id}: {state}  [{tasks}]")
        stack.wait_until_idle(timeout=max(1.0, deadline - time.monotonic()))
        _wait_for_quiet_file(home / EVENTS_RELATIVE)
    except stack_mod.StackError as exc:
        return 2, f"Airflow failed: {exc}"
    finally:
        say("Stopping Airflow ...")
        stack.stop()
        say(f"Stopped. Task logs: {home / 'logs'}; component logs: {home}/logs-*.log")
    return status, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help="AIRFLOW_HOME (wiped at start)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for all runs to finish")
    parser.add_argument("--events", type=Path, help="only print the table of this events.jsonl file")
    args = parser.parse_args(argv)

    if args.events is not None:
        return report(args.events)

    home = args.home.resolve()
    if home in (REPO, *REPO.parents) or home == Path.home():
        parser.error(f"refusing to wipe {home}")
    status, message = run_dags(home, args.timeout)
    if message:
        say(message)
    say()
    return max(status, report(home / EVENTS_RELATIVE))


if __name__ == "__main__":
    sys.exit(main())
