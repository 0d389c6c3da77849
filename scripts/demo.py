#!/usr/bin/env python3
"""`make demo`: run every example DAG on a real Airflow on loopback, then show what BareCount recorded.

1. wipes and prepares ``<repo>/.airflow-demo`` as AIRFLOW_HOME (SQLite, LocalExecutor);
2. starts an AWS emulator in this process: moto on 127.0.0.1, seeded with the resources the ``needs-aws``
   example DAGs name by default (tests/system/aws_emulator.py), behind the connection ``aws_default``
   (``AIRFLOW_CONN_AWS_DEFAULT``, given to the Airflow processes only);
3. starts the api-server, scheduler and dag-processor, all bound to 127.0.0.1 (see tests/system/stack.py);
4. waits until every DAG file of ``<repo>/dags`` is parsed, triggers each DAG once and waits for the runs
   (failed runs are fine: some examples fail on purpose). DAGs tagged ``needs-k8s`` are skipped (no
   Kubernetes emulator in the demo); ``--no-aws`` skips the ``needs-aws`` ones too;
5. saves the ``runner_result`` XCom of every runner task to ``<AIRFLOW_HOME>/runner_results/``;
6. stops the components by their process id, then the emulator;
7. prints, per task try, what BareCount's file sink wrote to
   ``<AIRFLOW_HOME>/barecount/telemetry/events.jsonl`` and where each sink sent its data, then, per runner
   task, its runner class, external run id and where its runner_result is; the evidence records, the cost
   roll-up and the chains' verification; what ``example_recovery`` did (the dead letters, the planned
   replay, the governance decision, the replay's outcome, from its XComs); and the ``export AIRFLOW_HOME=``
   line that points the ``barecount`` command at this data.

``--keep-running`` (``make up``) leaves Airflow and the emulator running after the runs until Ctrl-C.

Exit status: 0 when the stack ran and BareCount recorded task tries; 1 when nothing was recorded, a DAG
file failed to import, a runner DAG against the emulator did not succeed or the recovery example's replay
did not complete; 2 when Airflow itself failed
(start-up, a component died, a run timed out).

``--events FILE`` only prints the table of an existing events file (no Airflow started).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[1]
DEFAULT_HOME = REPO / ".airflow-demo"
DAGS = REPO / "dags"
EVENTS_RELATIVE = Path("barecount") / "telemetry" / "events.jsonl"


# DAGs that need AWS run against the in-process emulator; those that need Kubernetes only in the tests
# (kmock: it is not started here).
NEEDS_AWS_TAG = "needs-aws"
NEEDS_K8S_TAG = "needs-k8s"
OPT_OUT_TAG = "barecount:off"  # [barecount] opt_out_tag's default, which the demo's Airflow keeps
RUNNER_RESULTS_RELATIVE = Path("runner_results")
RECOVERY_RELATIVE = Path("recovery.json")  # the recovery example's XComs, saved for the report
AWS_CONN_ID = "aws_default"  # the example DAGs' default connection


def _load(name: str) -> ModuleType:
    """tests/system/<name>.py, loaded by path (``tests`` is not an installed package)."""
    path = REPO / "tests" / "system" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"barecount_demo_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _load_stack() -> ModuleType:
    return _load("stack")


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


def _task_label(event: dict[str, Any]) -> str:
    from barecount_provider.cli.runs import task_label

    return task_label(event)


def format_table(tries: list[dict[str, Any]]) -> str:
    """The same table as ``barecount runs`` (one layout for both)."""
    from barecount_provider.cli.runs import tries_table

    return tries_table(tries)


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


def _wait_for_evidence(evidence_dir: Path, expected: int, limit: float = 60.0) -> int:
    """The scheduler assembles a run's evidence record after the run ends, once its tries' entries have been
    forwarded: wait (at most ``limit`` seconds) until the store holds ``expected`` records; how many it holds."""
    deadline = time.monotonic() + limit
    while True:
        held = len(list((evidence_dir / "records").glob("*/*.json")))
        if held >= expected or time.monotonic() >= deadline:
            return held
        time.sleep(0.5)


def _start_emulator() -> Any:
    """The AWS emulator (tests/system/aws_emulator.py), started; None when moto is not installed."""
    if importlib.util.find_spec("moto") is None:
        say("moto is not installed (pip install -e '.[test]'): the needs-aws DAGs are skipped.")
        return None
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    emulator = _load("aws_emulator").AwsEmulator()
    emulator.start()
    return emulator


def api_retrying(stack: Any, method: str, path: str, **kwargs: Any) -> Any:
    """A REST call, tried again when SQLite's lock made the api-server's write time out (HTTP 500) while
    the scheduler and the tasks write."""
    for attempt in range(5):
        resp = stack.api(method, path, check=False, **kwargs)
        if resp.status_code < 500 or attempt == 4:
            break
        time.sleep(1 + attempt)
    if resp.status_code >= 400:
        raise stack.error(f"{method} {path} -> {resp.status_code}: {resp.text[:1000]}")
    return resp.json()


def trigger_now(stack: Any, dag_id: str) -> str:
    """A manual run with logical date = now, as the UI's trigger form makes it: the examples template
    ``{{ ds }}``, which a run without a logical date does not have. Returns the run id."""
    body = {"logical_date": datetime.now(UTC).isoformat(), "conf": {}}
    return str(api_retrying(stack, "POST", f"dags/{quote(dag_id, safe='')}/dagRuns", json=body)["dag_run_id"])


def _task_summary(stack: Any, dag_id: str, run_id: str) -> str:
    return ", ".join(
        _task_label(ti)
        + f"={ti['state']}"
        + (f" (try {ti['try_number']})" if (ti.get("try_number") or 0) > 1 else "")
        for ti in stack.task_instances(dag_id, run_id)
    )


def save_runner_results(stack: Any, runs: dict[str, str], folder: Path) -> int:
    """Fetch the runner_result XCom of every task of ``runs`` that has one; write each to
    ``<folder>/<dag_id>/<task_id>.json``. Returns how many were saved."""
    saved = 0
    for dag_id, run_id in runs.items():
        for ti in stack.task_instances(dag_id, run_id):
            path = (
                f"dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
                f"{quote(ti['task_id'], safe='')}/xcomEntries/runner_result"
            )
            params = {"map_index": ti.get("map_index", -1), "deserialize": True, "stringify": False}
            resp = stack.api("GET", path, params=params, check=False)
            if resp.status_code != 200:
                continue
            value = resp.json().get("value")
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    pass
            target = folder / dag_id / f"{_task_label(ti)}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            record = {
                "dag_id": dag_id,
                "run_id": run_id,
                "task_id": ti["task_id"],
                "start_date": ti.get("start_date"),
                "runner_result": value,
            }
            target.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
            saved += 1
    return saved


RECOVERY_DAG = "example_recovery"
RECOVERY_XCOMS = (("plan", "replay_plan"), ("approve", "replay_approval"), ("replay", "replay_outcome"))


def _xcom(stack: Any, dag_id: str, run_id: str, task_id: str, key: str) -> Any:
    path = (
        f"dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
        f"{quote(task_id, safe='')}/xcomEntries/{quote(key, safe='')}"
    )
    resp = stack.api("GET", path, params={"deserialize": True, "stringify": False}, check=False)
    if resp.status_code != 200:
        return None
    value = resp.json().get("value")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def save_recovery(stack: Any, runs: dict[str, str], target: Path) -> None:
    """The recovery example's plan, governance decision and replay outcome (its XComs), for the report."""
    if RECOVERY_DAG not in runs:
        return
    found = {key: _xcom(stack, RECOVERY_DAG, runs[RECOVERY_DAG], task_id, key) for task_id, key in RECOVERY_XCOMS}
    target.write_text(json.dumps({"run_id": runs[RECOVERY_DAG], **found}, indent=2, default=str) + "\n", encoding="utf-8")


def report_recovery(saved: Path) -> int:
    """What example_recovery did: the dead letters, the planned replay, the governance decision, the replay."""
    if not saved.is_file():
        return 0
    found = json.loads(saved.read_text(encoding="utf-8"))
    plan, decision, outcome = (found.get(key) or {} for _, key in RECOVERY_XCOMS)
    say()
    say(f"Recovery ({RECOVERY_DAG}, run {found.get('run_id')}; docs/recovery.md):")
    if not plan:
        say("  ERROR: the run left no replay plan (XCom replay_plan of task 'plan'): see its task logs.")
        return 1
    errors = ", ".join(f"{name} {count}" for name, count in sorted((plan.get("by_error_class") or {}).items()))
    say(
        f"  dead-letter queue: {plan.get('records')} failed record(s) sent by task 'ingest' ({errors or 'no class'}), "
        f"{plan.get('bytes')} bytes, in {plan.get('dlq')}"
    )
    say(
        f"  planned replay (dry run, task 'plan'): {plan.get('records')} record(s) to {plan.get('target')}, "
        f"estimated {float(plan.get('estimated_cost_usd') or 0):.6f} USD ({plan.get('cost_basis')}); "
        f"needs approval: {plan.get('needs_approval')} (thresholds {plan.get('approval_thresholds')})"
    )
    if decision:
        say(
            f"  governance decision (task 'approve'): {decision.get('decision')}"
            + (f" by {decision['approver']}" if decision.get("approver") else "")
            + f" at {decision.get('decided_at')}"
        )
    else:
        say("  governance decision: none recorded (task 'approve' left no replay_approval XCom)")
    if not outcome:
        say("  ERROR: the replay left no outcome (XCom replay_outcome of task 'replay'): see its task logs.")
        return 1
    say(
        f"  replay (task 'replay', idempotent through the ledger): {outcome.get('status')}; delivered "
        f"{outcome.get('delivered')}, already delivered before {outcome.get('skipped_delivered')}, failed "
        f"{outcome.get('failed')}, removed from the queue {outcome.get('removed_from_queue')}; scope {outcome.get('scope_id')}"
    )
    say("  Again from a terminal: `barecount dlq stats`, `barecount replay status`.")
    return 0 if outcome.get("status") == "complete" and not outcome.get("failed") else 1


def report_runner_results(folder: Path) -> None:
    """Per runner task: runner class, size, external run id, error and where its runner_result is."""
    files = sorted(folder.glob("*/*.json")) if folder.is_dir() else []
    if not files:
        return
    records = [(path, json.loads(path.read_text(encoding="utf-8"))) for path in files]
    records.sort(key=lambda item: (str(item[1].get("dag_id")), str(item[1].get("start_date") or "")))
    header = ["dag", "task", "runner class", "size", "external run id", "error", "runner_result"]
    rows = []
    for path, record in records:
        result = record.get("runner_result") if isinstance(record.get("runner_result"), dict) else {}
        error = result.get("error")
        rows.append(
            [
                _text(record.get("dag_id"), 30),
                _text(record.get("task_id"), 24),
                _text(result.get("runner_class"), 14),
                _text(result.get("size"), 4),
                _text(result.get("external_run_id"), 40),
                _text(error.get("error_class") if isinstance(error, dict) else error, 24),
                str(path.relative_to(folder.parent)),
            ]
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    say()
    say(f"Where each runner task's runner_result is ({len(rows)} runner tasks):")
    say("  the XCom key 'runner_result' of the task instance (Airflow UI: the task instance's XCom tab;")
    say("  REST: GET /api/v2/dags/<dag>/dagRuns/<run>/taskInstances/<task>/xcomEntries/runner_result),")
    say(f"  copied by the demo to {folder}/<dag>/<task>.json:")
    say()
    say("\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]))


def keep_serving(stack: Any, home: Path, stack_mod: ModuleType) -> None:
    """``--keep-running``: leave Airflow up to explore the UI and the REST API until Ctrl-C (or SIGTERM)."""
    import signal

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    say()
    say(f"Airflow keeps running: {stack.base_url} (user {stack_mod.ADMIN_USER} / password {stack_mod.ADMIN_PASSWORD});")
    say(f"  BareCount's REST API under {stack.base_url}/barecount (docs/api.md); in another terminal:")
    say(f"  export AIRFLOW_HOME={home}")
    say("Press Ctrl-C to stop it (the report follows).")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        say()
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_dags(home: Path, timeout: float, with_aws: bool = True, keep_running: bool = False) -> tuple[int, str]:
    """Start the AWS emulator and Airflow, run every DAG once, stop both. Returns (exit status so far,
    message)."""
    stack_mod = _load_stack()
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    status = 0
    emulator = None
    if with_aws:
        say("Starting the AWS emulator (moto on 127.0.0.1, in this process) ...")
        try:
            emulator = _start_emulator()
        except Exception as exc:  # the rest of the demo does not need it
            say(
                f"The AWS emulator failed to start ({type(exc).__name__}: {exc}): "
                "the needs-aws DAGs are skipped."
            )
            emulator = None
        if emulator is not None:
            say(
                f"AWS emulator on {emulator.endpoint}, behind the connection {AWS_CONN_ID!r}; seeded: "
                "Lambda function, Glue job, EMR Serverless application, ECS cluster and task definition, "
                "EC2 AMI and instance profile."
            )
    extra_env = emulator.connection_env(AWS_CONN_ID) if emulator is not None else {}
    stack = stack_mod.AirflowStack(home=home, dags_folder=DAGS, extra_env=extra_env)
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

        runs: dict[str, str] = {}
        aws_dags: set[str] = set()
        opted_out: set[str] = set()
        for dag_id in dag_ids:
            tags = {tag.get("name") for tag in stack.api("GET", f"dags/{dag_id}").json().get("tags", [])}
            if OPT_OUT_TAG in tags:
                opted_out.add(dag_id)  # runs, and BareCount records nothing of it
            if NEEDS_K8S_TAG in tags:
                say(
                    f"  skipped {dag_id}: tagged {NEEDS_K8S_TAG!r} "
                    "(it runs against a Kubernetes emulator in the tests)"
                )
                continue
            if NEEDS_AWS_TAG in tags:
                if emulator is None:
                    say(f"  skipped {dag_id}: tagged {NEEDS_AWS_TAG!r} and no AWS emulator")
                    continue
                aws_dags.add(dag_id)
            api_retrying(stack, "PATCH", f"dags/{quote(dag_id, safe='')}", json={"is_paused": False})
            runs[dag_id] = trigger_now(stack, dag_id)
            say(
                f"  triggered {dag_id}: {runs[dag_id]}"
                + (" (against the AWS emulator)" if dag_id in aws_dags else "")
            )
        say("Waiting for the runs to finish (some examples fail and retry on purpose) ...")
        for dag_id, run_id in runs.items():
            state = stack.wait_for_run(dag_id, run_id, timeout=max(1.0, deadline - time.monotonic()))
            say(f"  {dag_id}: {state}  [{_task_summary(stack, dag_id, run_id)}]")
            if dag_id in aws_dags and state != "success":
                say(
                    f"  ERROR: {dag_id} ran against the AWS emulator and should have succeeded; "
                    "see its task logs."
                )
                status = 1
        stack.wait_until_idle(timeout=max(1.0, deadline - time.monotonic()))
        saved = save_runner_results(stack, runs, home / RUNNER_RESULTS_RELATIVE)
        say(f"Saved {saved} runner_result XCom(s) to {home / RUNNER_RESULTS_RELATIVE}.")
        save_recovery(stack, runs, home / RECOVERY_RELATIVE)
        if emulator is not None:
            hosts = emulator.instances(**{"barecount:managed": "true"})
            left = sorted(
                h["InstanceId"] for h in hosts if h["State"]["Name"] not in ("terminated", "shutting-down")
            )
            say(
                f"EC2 hosts the dedicated runs launched on the emulator: {len(hosts)}, "
                + (f"STILL RUNNING: {', '.join(left)}" if left else "all terminated.")
            )
            if left:
                status = 1
        _wait_for_quiet_file(home / EVENTS_RELATIVE)
        expected = len(set(runs) - opted_out)
        held = _wait_for_evidence(home / "barecount" / "evidence", expected)
        if held < expected:
            say(f"  ERROR: the evidence store holds {held} record(s) after 60 s, {expected} runs were observed.")
            status = 1
        if keep_running:
            keep_serving(stack, home, stack_mod)
    except stack_mod.StackError as exc:
        return 2, f"Airflow failed: {exc}"
    finally:
        say("Stopping Airflow ...")
        stack.stop()
        say(f"Stopped. Task logs: {home / 'logs'}; component logs: {home}/logs-*.log")
        if emulator is not None:
            emulator.stop()
            say("Stopped the AWS emulator.")
    return status, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help="AIRFLOW_HOME (wiped at start)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for all runs to finish")
    parser.add_argument("--events", type=Path, help="only print the table of this events.jsonl file")
    parser.add_argument("--no-aws", action="store_true", help="skip the needs-aws DAGs (no AWS emulator)")
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after the runs, keep Airflow (and the AWS emulator) running to explore the UI and REST API; Ctrl-C stops",
    )
    args = parser.parse_args(argv)

    if args.events is not None:
        return report(args.events)

    home = args.home.resolve()
    if home in (REPO, *REPO.parents) or home == Path.home():
        parser.error(f"refusing to wipe {home}")
    os.environ["AIRFLOW_HOME"] = str(home)  # whatever this process imports uses the demo's home, never ~/airflow
    status, message = run_dags(home, args.timeout, with_aws=not args.no_aws, keep_running=args.keep_running)
    if message:
        say(message)
    say()
    status = max(status, report(home / EVENTS_RELATIVE))
    report_runner_results(home / RUNNER_RESULTS_RELATIVE)
    status = max(status, report_evidence(home))
    status = max(status, report_recovery(home / RECOVERY_RELATIVE))
    report_health()
    say()
    say("To look at this data with the `barecount` command (evidence list|show|verify, cost report, runs, dlq, replay):")
    say(f"  export AIRFLOW_HOME={home}")
    say(f"  {Path(sys.executable).with_name('barecount')} evidence list")
    return status


def report_evidence(home: Path) -> int:
    """What the evidence store holds: one record per run, the cost roll-up, and the chain's verification."""
    import subprocess

    barecount = str(Path(sys.executable).with_name("barecount"))
    env = {**os.environ, "AIRFLOW_HOME": str(home)}
    status = 0
    for title, args in (
        ("Evidence records (one per DAG run; `barecount evidence list`)", ["evidence", "list", "--limit", "50"]),
        ("Cost by tenant, pipeline and runner class (`barecount cost report`)", ["cost", "report", "--by", "tenant", "--by", "pipeline", "--by", "runner_class", "--since", "1d"]),
        ("Hash chains (`barecount evidence verify`)", ["evidence", "verify"]),
    ):
        say()
        say(title)
        done = subprocess.run([barecount, *args], env=env, capture_output=True, text=True, timeout=120)
        say(done.stdout.rstrip() or done.stderr.rstrip())
        if done.returncode != 0:
            status = 1
    say()
    say(f"Evidence files: {home / 'barecount' / 'evidence'} (records/, entries/, index.db)")
    return status


def report_health() -> None:
    """The last result of every dependency checked during the runs (``example_health``, the sensors and the
    runners' readiness checks), as ``GET /barecount/health`` lists them."""
    from barecount_provider.health import records

    say()
    say("Health: the last result of every dependency checked (GET /barecount/health; `barecount health check` checks again)")
    results = records.latest_results()
    if not results:
        say("  none: no example checked a dependency (the needs-aws example_health_runner checks a Lambda function)")
        return
    for result in results:
        dependency = result["dependency"]
        say(
            f"  {dependency['tenant'] or '-'} / {dependency['network_profile'] or '-'}: {dependency['kind']} "
            f"{dependency['id']}: {result['status']}"
            + (f" ({result['error_code']})" if result["error_code"] else "")
            + f", {result['latency_ms']:.0f} ms: {result['detail']}"
        )


if __name__ == "__main__":
    sys.exit(main())
