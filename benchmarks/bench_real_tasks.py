"""BareCount's overhead measured on real Airflow task processes only, thousands of them, in one run.

Real Airflows side by side (api-server, scheduler and dag-processor on 127.0.0.1, LocalExecutor, SQLite;
``tests/system/stack.py``), each with the benchmark's own listener and executor wrapper in its plugins folder
(``REAL_RUSAGE_PLUGIN`` of ``bench_overhead.py``):

* ``default``: BareCount enabled with the embedded default sinks (file sink, local evidence store);
* ``sinks_up``: BareCount enabled and sending to StatsD (UDP) and OTLP (HTTP), both up (``--sinks``);
* ``sinks_down``: the same, with nothing listening on either port (``--sinks``);
* ``disabled``: BareCount installed and ``[barecount] enabled = False``.

Each enabled Airflow runs three DAGs of ``--tasks-per-run`` independent trivial ``PythonOperator`` tasks:
observed, opted out (the ``barecount:off`` tag: same Airflow, same plugin, BareCount's hooks return at their
opt-out check) and failing (every task raises, no retries); the disabled Airflow runs the observed DAG. One
DAG run at a time, the kinds in a rotating order, ``--runs`` timed runs of each after ``--warmup`` untimed.

Per task process the benchmark reads:

* **its supervisor's CPU time**: the worker's ``RUSAGE_SELF`` around the workload (the worker runs the
  supervisor, which relays the task's API calls and masks and writes its log events);
* **its whole life** from its LocalExecutor worker (``BaseExecutor.run_workload`` wrapped): the worker's
  ``RUSAGE_CHILDREN`` grows by exactly that task process's CPU time and page faults, fork to exit (its
  imports, the DAG file's parse, every hook, the flush at exit and the exit itself), and the clock around
  the whole workload (the supervisor's fork, the task, its reports to the API server, the exit): the task's
  end-to-end time as the executor sees it;
* **each of BareCount's hooks** as Airflow calls it (a pluggy wrapper around every other implementation);
* **Airflow's tail**: how long the supervisor slept between the task's last socket closing and its seeing
  the process's exit (a ``select`` with nothing left to wake it, up to ``[workers] min_heartbeat_interval``);
  the end to end is the workload's clock without it.

Per DAG run it reads **the whole Airflow's CPU** (every process of it, from the trigger until the run's last
task process has been reaped), which includes the Airflow's idle loop for the run's duration.

The end-to-end overhead is observed − opted out on the same Airflow (CPU time of the whole process and the
workload's clock), with 95% bootstrap intervals, as a share of the end-to-end time of a task with BareCount
disabled. Flatness: the overhead in the first and the last quarter of the runs.

With ``--together`` the observed and the opted-out run of each Airflow are triggered at the same time (one
task of each at a time with ``--max-active 1``: the machine's load of one DAG run of two), so that their task
processes interleave on the same minutes of the machine, and the disabled Airflow runs two identical observed
DAGs the same way: an A/A control of that very estimator. Run one after the other, a DAG run's median CPU per
task moved by several ms from one run to the next, more than the 4 ms that 2% of a task is.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_real_tasks.py --runs 24 --tasks-per-run 20 --max-active 2 --warmup 1 --sinks --control
    .venv/bin/python benchmarks/bench_real_tasks.py --runs 12 --tasks-per-run 20 --max-active 1 --warmup 1 --sinks --together

The results are printed as markdown and written into docs/benchmarks.md between
``<!-- bench-real-tasks:start -->`` and ``<!-- bench-real-tasks:end -->`` (``--no-docs`` to skip).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_overhead import (  # the benchmarks' shared helpers
    REAL_RUSAGE_PLUGIN,
    REPO,
    SINK_KEYS,
    Sinks,
    bootstrap_median,
    config_env,
    f2,
    machine,
    median,
    pct,
)

DOCS = REPO / "docs" / "benchmarks.md"
MARK_START = "<!-- bench-real-tasks:start -->"
MARK_END = "<!-- bench-real-tasks:end -->"
HOOKS = ("on_starting", "running", "success", "failed", "before_stopping")
TARGET_HOOK_MS = 1.0
TARGET_END_TO_END = 0.02

DAG_FILE = '''"""Written by benchmarks/bench_real_tasks.py: {tasks} independent trivial tasks per DAG run."""
import datetime

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG


def _body():
    return sum(range(10_000))


def _fail():
    raise ValueError("bench: a failing task")


for dag_id, extra, body in (
    ("bench_many_observed", [], _body),
    ("bench_many_observed_again", [], _body),
    ("bench_many_optout", ["barecount:off"], _body),
    ("bench_many_failing", [], _fail),
):
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc),
        catchup=False,
        tags=["tenant:acme", "pipeline:orders", *extra],
        default_args={{"retries": 0}},
        max_active_tasks={max_active},
    ) as dag:
        for index in range({tasks}):
            PythonOperator(task_id=f"t{{index:03d}}", python_callable=body)
    globals()[dag_id] = dag
'''

DAG_IDS = {"observed": "bench_many_observed", "opted out": "bench_many_optout", "failing": "bench_many_failing"}
AGAIN = "observed again"  # --together: the disabled Airflow's second observed DAG, run with the first (A/A)


def airflow_envs(
    workdir: Path, sinks: Sinks | None, max_active: int, control: bool = False, together: bool = False
) -> dict[str, dict[str, str]]:
    """The environment of each Airflow: its BareCount configuration and its records file (LocalExecutor's
    workers: twice the tasks its DAG runs run at a time, so that a worker its supervisor still holds is no
    limit)."""
    base = {
        "AIRFLOW__BARECOUNT__SECRET_KEY": "bench-real-tasks-secret-key-not-for-production",
        "AIRFLOW__CORE__PARALLELISM": str(2 * max_active * (2 if together else 1)),
        # Each DAG processor parses the DAG file once, at its start: a re-parse every 15 s in each of 3–5
        # Airflows competed with the task processes for the two cores.
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "86400",
    }
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):  # as an installed Airflow: byte-code cached (privately)
        base["PYTHONDONTWRITEBYTECODE"] = ""
        base["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    names = ["default", "disabled"] + (["control"] if control else []) + (
        ["sinks_up", "sinks_down"] if sinks is not None else []
    )
    envs = {}
    for name in names:
        env = {
            **base,
            "BENCH_RUSAGE_FILE": str(workdir / f"records-{name}.jsonl"),
            "AIRFLOW__BARECOUNT__TELEMETRY_DIR": str(workdir / f"telemetry-{name}"),
        }
        if name in ("disabled", "control"):  # control: a second disabled Airflow (A/A), for the noise
            env["AIRFLOW__BARECOUNT__ENABLED"] = "False"
        elif name.startswith("sinks") and sinks is not None:
            cfg = "on_sinks_up" if name == "sinks_up" else "on_sinks_down"
            sink_env = config_env(cfg, sinks.ports, workdir / "unused", 250)
            env.update({key: value for key, value in sink_env.items() if key.startswith(SINK_KEYS)})
        envs[name] = env
    return envs


def kinds_of(envs: dict[str, dict[str, str]], together: bool = False) -> dict[str, tuple[str, str]]:
    """kind -> (Airflow, DAG id), in the rotation's order."""
    kinds: dict[str, tuple[str, str]] = {}
    for name in envs:
        for label, dag_id in DAG_IDS.items():
            if name in ("disabled", "control") and label != "observed":
                continue
            if name == "sinks_down" and label == "failing":
                continue
            kinds[f"{name} {label}"] = (name, dag_id)
        if together and name == "disabled":
            kinds[f"{name} {AGAIN}"] = (name, "bench_many_observed_again")
    return kinds


def steps_of(kinds: dict[str, tuple[str, str]], together: bool = False) -> list[list[str]]:
    """The rotation's steps: the kinds of DAG run that run at the same time. One each, or with ``together``
    the observed and the opted-out run of one Airflow at once (and the disabled Airflow's two observed
    runs), so that their task processes interleave on the machine's same minutes."""
    steps: list[list[str]] = []
    placed: set[str] = set()
    for kind, (name, _) in kinds.items():
        if kind in placed:
            continue
        partner = None
        if together and kind == f"{name} observed":
            partner = next((k for k in (f"{name} opted out", f"{name} {AGAIN}") if k in kinds), None)
        step = [kind] + ([partner] if partner else [])
        placed.update(step)
        steps.append(step)
    return steps


def _parse(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


ROLES = (("telemetry forward", "forwarder"), ("scheduler", "scheduler"), ("dag-processor", "dag processor"),
         ("api_server", "api server"), ("api-server", "api server"), ("serve-logs", "log server"),
         ("LocalExecutor", "workers and task processes"))


def _role(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    return next((role for needle, role in ROLES if needle in text), "other")


def airflow_cpu_ms(stack: Any) -> dict[str, float]:
    """CPU time spent so far by every process of one Airflow, by role (api-server, scheduler, its LocalExecutor
    workers with their supervisors and task processes, DAG processor, BareCount's forwarder): each live
    process's own time plus that of its reaped children. A task process is reaped by its worker, so it is
    counted once, in the worker (a task process alive at the reading counts under its own title: "other")."""
    import psutil

    by_role: dict[str, float] = {}
    for pid in stack.pids():
        try:
            proc = psutil.Process(pid)
            times, role = proc.cpu_times(), _role(proc.cmdline())
        except psutil.Error:
            continue
        spent = (times.user + times.system + times.children_user + times.children_system) * 1000.0
        by_role[role] = by_role.get(role, 0.0) + spent
    return by_role


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _lives_of(path: Path, dag_id: str, run_id: str, since: int) -> int:
    """Whole-life records of the run's task processes appended to ``path`` after byte ``since``."""
    if not path.exists():
        return 0
    with path.open("rb") as records:
        records.seek(since)
        text = records.read().decode()
    needles = ('"life": true', f'"dag_id": "{dag_id}"', f'"run_id": "{run_id}"')
    return sum(1 for line in text.splitlines() if all(needle in line for needle in needles))


def run_once(stack: Any, dag_id: str, expected: str, tasks: int, records: Path) -> dict[str, Any]:
    """One DAG run to its end, and then until every one of its task processes has been reaped (a try's
    success reaches Airflow before its success listeners run), with the whole Airflow's CPU around it."""
    return run_together(stack, [(dag_id, expected)], tasks, records)[0]


def run_together(stack: Any, dags: list[tuple[str, str]], tasks: int, records: Path) -> list[dict[str, Any]]:
    """DAG runs of one Airflow triggered at once (``(dag_id, expected state)`` each), each to its end and
    until every one of its task processes has been reaped. The whole Airflow's CPU around them is a run's
    own only when it ran alone (``None`` for runs that ran together: it cannot be split between them)."""
    cpu = airflow_cpu_ms(stack)
    since = _size(records)  # the runs' records come after this
    started = time.monotonic()
    run_ids = [stack.trigger(dag_id) for dag_id, _ in dags]
    results = []
    for (dag_id, expected), run_id in zip(dags, run_ids, strict=True):
        state = stack.wait_for_run(dag_id, run_id, timeout=600)
        tis = stack.task_instances(dag_id, run_id)
        if state != expected or len(tis) != tasks:
            raise RuntimeError(f"run {dag_id} {run_id} ended {state} with {len(tis)} task instances")
        deadline = time.monotonic() + 60
        while _lives_of(records, dag_id, run_id, since) < tasks:
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {dag_id} {run_id}: not every task process was reaped within 60 s")
            time.sleep(0.05)
        spans = []
        for ti in tis:
            start, end = _parse(ti.get("start_date")), _parse(ti.get("end_date"))
            if start and end:
                spans.append((end - start).total_seconds() * 1000.0)
        results.append({"run_id": run_id, "durations": spans})
    after = airflow_cpu_ms(stack)
    by_role = {role: after.get(role, 0.0) - cpu.get(role, 0.0) for role in {*after, *cpu}}
    elapsed = (time.monotonic() - started) * 1000.0
    alone = len(dags) == 1
    for result in results:
        result.update({"airflow_cpu_ms": sum(by_role.values()) if alone else None,
                       "airflow_cpu_by_role_ms": by_role if alone else None, "run_ms": elapsed,
                       "together": not alone})
    return results


def read_records(path: Path) -> tuple[dict[tuple[str, str, str], dict[str, Any]], dict[tuple[str, str, str], dict[str, Any]]]:
    """The plugin's records of one Airflow: (whole lives, per-try hooks), keyed by (dag, run, task)."""
    lives: dict[tuple[str, str, str], dict[str, Any]] = {}
    tries: dict[tuple[str, str, str], dict[str, Any]] = {}
    if not path.exists():
        return lives, tries
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("life") and record.get("tail_ms") is not None:
            record["wall_net_ms"] = record["wall_ms"] - record["tail_ms"]  # the clock without Airflow's tail
        key = (record["dag_id"], record["run_id"], record.get("task_id", ""))
        (lives if record.get("life") else tries)[key] = record
    return lives, tries


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from tests.system.stack import AirflowStack

    dags = workdir / "dags"
    dags.mkdir(parents=True)
    (dags / "bench_many.py").write_text(DAG_FILE.format(tasks=args.tasks_per_run, max_active=args.max_active))
    started = time.monotonic()
    with contextlib.ExitStack() as running:
        sinks = Sinks() if args.sinks else None
        received: dict[str, int] = {}
        if sinks is not None:
            running.callback(lambda: received.update(sinks.stop()))
        envs = airflow_envs(workdir, sinks, args.max_active, args.control, args.together)
        kinds = kinds_of(envs, args.together)
        stacks = {}
        for name, env in envs.items():
            home = workdir / f"home-{name}"
            (home / "plugins").mkdir(parents=True)
            (home / "plugins" / "bench_rusage.py").write_text(REAL_RUSAGE_PLUGIN)
            stacks[name] = running.enter_context(AirflowStack(home=home, dags_folder=dags, extra_env=env))
        for name, dag_id in kinds.values():
            stacks[name].wait_for_dag(dag_id, timeout=240)
            stacks[name].unpause(dag_id)
        order = steps_of(kinds, args.together)
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
        for i in range(-args.warmup, args.runs):  # negative i: untimed warm-up runs
            shift = i % len(order)
            for step in order[shift:] + order[:shift]:
                name = kinds[step[0]][0]
                dags = [(kinds[kind][1], "failed" if kind.endswith("failing") else "success") for kind in step]
                results = run_together(stacks[name], dags, args.tasks_per_run, Path(envs[name]["BENCH_RUSAGE_FILE"]))
                if i >= 0:
                    for kind, result in zip(step, results, strict=True):
                        result["round"] = i
                        runs[kind].append(result)
            print(f"round {i + 1}/{args.runs} done, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - started
    records = {name: read_records(Path(env["BENCH_RUSAGE_FILE"])) for name, env in envs.items()}
    per_kind: dict[str, list[dict[str, Any]]] = {}
    for kind, (name, dag_id) in kinds.items():
        lives, tries = records[name]
        rows = []
        for run in runs[kind]:
            for key, life in lives.items():
                if key[0] == dag_id and key[1] == run["run_id"]:
                    rows.append({"round": run["round"], "life": life, "try": tries.get(key)})
        per_kind[kind] = rows
    return {"kinds": kinds, "runs": runs, "rows": per_kind, "elapsed_s": elapsed, "sinks_received": received}


def _values(rows: list[dict[str, Any]], key: str, rounds: range | None = None) -> list[float]:
    return [r["life"][key] for r in rows if rounds is None or r["round"] in rounds]


def _hook(rows: list[dict[str, Any]], hook: str) -> list[float]:
    return [r["try"]["hooks"][hook]["wall_ms"] for r in rows if r["try"] and hook in r["try"].get("hooks", {})]


def overhead(observed: list[dict[str, Any]], reference: list[dict[str, Any]], key: str) -> dict[str, float]:
    """observed − reference, paired by round: in each round of the rotation, the median of the observed run's
    task processes minus the reference run's; then the median of those differences and its 95% bootstrap
    interval over the rounds. The run, not the task process, is the unit: the task processes of one DAG run
    share its minutes of the machine (a run's median CPU time moved by up to 30 ms from one run to the next
    in a first version of this benchmark), so treating them as independent gives intervals far too narrow."""

    def per_round(rows: list[dict[str, Any]]) -> dict[int, float]:
        by_round: dict[int, list[float]] = {}
        for row in rows:
            by_round.setdefault(row["round"], []).append(row["life"][key])
        return {number: median(values) for number, values in by_round.items()}

    pooled = median(_values(observed, key)) - median(_values(reference, key))
    return {**_paired(per_round(observed), per_round(reference)), "pooled": pooled}


def _paired(a: dict[int, float], b: dict[int, float]) -> dict[str, float]:
    """The median of a − b over the rounds both have, with its 95% bootstrap interval over the rounds."""
    differences = [a[number] - b[number] for number in sorted(a) if number in b]
    low, high = bootstrap_median(differences)
    return {"delta": median(differences), "low": low, "high": high, "rounds": len(differences)}


def airflow_overhead(observed: list[dict[str, Any]], reference: list[dict[str, Any]], tasks: int) -> dict[str, float]:
    """observed − reference of the whole Airflow's CPU per task, paired by round as :func:`overhead`."""
    return _paired({run["round"]: run["airflow_cpu_ms"] / tasks for run in observed},
                   {run["round"]: run["airflow_cpu_ms"] / tasks for run in reference})


def recorded_overhead(
    observed: list[dict[str, Any]], reference: list[dict[str, Any]], key: str
) -> dict[str, float] | None:
    """:func:`overhead` of a figure that records of an older plugin lack (``supervisor_cpu_ms``): None then."""
    if not all(key in row["life"] for row in observed + reference):
        return None
    return overhead(observed, reference, key)


TAIL_MS = 1000.0  # a workload whose supervisor slept this long after the task's sockets closed: Airflow's tail


def _tail_share(rows: list[dict[str, Any]]) -> float | None:
    tails = [r["life"]["tail_ms"] for r in rows if r["life"].get("tail_ms") is not None]
    return sum(t >= TAIL_MS for t in tails) / len(tails) if tails else None


def report(result: dict[str, Any], args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    rows = result["rows"]
    info = machine()
    disabled = rows["disabled observed"]
    net = all("wall_net_ms" in r["life"] for data in rows.values() for r in data)
    clock = "wall_net_ms" if net else "wall_ms"  # the end to end: the clock without Airflow's tail when recorded
    end_to_end = median(_values(disabled, clock))
    total = sum(len(r) for r in rows.values())
    md = [
        f"Run of {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {info['cpus']} CPUs ({info['cpu_model']}), "
        f"{info['os']}, Python {info['python']}, Airflow {info['airflow']}, OpenTelemetry SDK "
        f"{info['opentelemetry_sdk']}: {len({name for name, _ in result['kinds'].values()})} real "
        f"Airflows side by side, {len(result['kinds'])} kinds of DAG run interleaved, {args.runs} timed runs of "
        f"each after {args.warmup} untimed, {args.tasks_per_run} tasks per run (at most {args.max_active} at a "
        f"time): **{total} timed task processes** in {result['elapsed_s']:.0f} s."
        + (" `--together`: each Airflow's observed and opted-out runs (the disabled Airflow's two observed runs) "
           "were triggered at the same time, their task processes interleaved." if args.together else ""),
        "",
        "Command:",
        "",
        "```",
        f".venv/bin/python benchmarks/bench_real_tasks.py --runs {args.runs} --tasks-per-run "
        f"{args.tasks_per_run} --max-active {args.max_active} --warmup {args.warmup}"
        + (" --sinks" if args.sinks else "") + (" --control" if args.control else "")
        + (" --together" if args.together else ""),
        "```",
        "",
        "**Whole task processes** (medians; CPU and page faults fork to exit from the worker's "
        "`RUSAGE_CHILDREN`; workload clock: the clock around the worker's whole workload; Airflow's tail: the "
        "workloads whose supervisor slept at least 1 s between the task's last socket closing and its seeing "
        "the process's exit; end to end: the workload clock without that sleep):",
        "",
        "| kind | task processes | workload clock, median ms | p90 ms | Airflow's tail | end to end, median ms | "
        "CPU, median ms | page faults, median | supervisor's CPU, median ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, data in rows.items():
        walls = _values(data, "wall_ms")
        supervisor = [r["life"]["supervisor_cpu_ms"] for r in data if "supervisor_cpu_ms" in r["life"]]
        tail = _tail_share(data)
        md.append(
            f"| {kind} | {len(data)} | {f2(median(walls))} | {f2(pct(walls, 90))} | "
            f"{f'{100 * tail:.0f}%' if tail is not None else '–'} | "
            f"{f2(median(_values(data, 'wall_net_ms'))) if net else '–'} | "
            f"{f2(median(_values(data, 'cpu_ms')))} | {median(_values(data, 'minflt')):.0f} | "
            f"{f2(median(supervisor)) if supervisor else '–'} |"
        )
    verdict: dict[str, Any] = {"end_to_end_ms": end_to_end, "overheads": {}, "hooks": {}}
    md += [
        "",
        f"**Overhead per task, observed − opted out on the same Airflow** (paired by round: the median over the "
        f"rounds of the observed run's median minus the opted-out run's, with its 95% bootstrap interval over "
        f"the rounds{'; the two runs of a round ran at the same time' if args.together else ''}), "
        f"as a share of the end-to-end time of a task with BareCount disabled ({f2(end_to_end)} ms"
        + (", the workload clock without Airflow's tail). " if net else ", the workload clock). ")
        + "The CPU figure is the robust one: BareCount's work in a task process is CPU work, and the whole "
        "process's CPU time has far less noise than its clock. Flat: the same CPU overhead over the first and "
        "the last quarter of the rounds.",
        "",
        "| Airflow | CPU, ms (interval) | share of end to end | end to end, ms (interval) | its share | page faults | "
        "supervisor's CPU, ms (interval) | first quarter, CPU ms | last quarter, CPU ms | target < 2% (CPU) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    quarter = max(1, args.runs // 4)
    first, last = range(0, quarter), range(args.runs - quarter, args.runs)
    for name in [n for n in ("default", "sinks_up", "sinks_down") if f"{n} observed" in rows]:
        obs, opt = rows[f"{name} observed"], rows[f"{name} opted out"]
        cpu, wall = overhead(obs, opt, "cpu_ms"), overhead(obs, opt, clock)
        sup = recorded_overhead(obs, opt, "supervisor_cpu_ms")
        sup_text = f"{sup['delta']:+.2f} ({sup['low']:+.2f} to {sup['high']:+.2f})" if sup else "–"
        faults = median(_values(obs, "minflt")) - median(_values(opt, "minflt"))
        early = median(_values(obs, "cpu_ms", first)) - median(_values(opt, "cpu_ms", first))
        late = median(_values(obs, "cpu_ms", last)) - median(_values(opt, "cpu_ms", last))
        share, share_high = cpu["delta"] / end_to_end, cpu["high"] / end_to_end
        low_share = cpu["low"] / end_to_end
        met = (
            "met" if share_high < TARGET_END_TO_END
            else "missed" if low_share >= TARGET_END_TO_END
            else "not resolved: the interval spans 2%"
        )
        verdict["overheads"][name] = {"cpu": cpu, "wall": wall, "supervisor": sup, "share": share,
                                      "share_high": share_high, "first": early, "last": late}
        md.append(
            f"| {name} | {cpu['delta']:+.2f} ({cpu['low']:+.2f} to {cpu['high']:+.2f}) | "
            f"**{100 * share:.2f}%** (at most {100 * share_high:.2f}%) | {wall['delta']:+.2f} "
            f"({wall['low']:+.2f} to {wall['high']:+.2f}) | {100 * wall['delta'] / end_to_end:.2f}% "
            f"({100 * wall['low'] / end_to_end:+.2f}% to {100 * wall['high'] / end_to_end:+.2f}%) | {faults:+.0f} | {sup_text} | {early:+.2f} | {late:+.2f} | "
            f"{met} |"
        )
    control: list[str] = []
    if "control observed" in rows:
        aa = overhead(rows["control observed"], disabled, "cpu_ms")
        aa_clock = overhead(rows["control observed"], disabled, clock)
        aa_faults = median(_values(rows["control observed"], "minflt")) - median(_values(disabled, "minflt"))
        verdict["control"] = aa
        verdict["control_clock"] = aa_clock
        control = [
            "",
            f"A/A control, two Airflows both with BareCount disabled (`--control`): {aa['delta']:+.2f} ms of CPU "
            f"({aa['low']:+.2f} to {aa['high']:+.2f}), {aa_clock['delta']:+.2f} ms end to end "
            f"({aa_clock['low']:+.2f} to {aa_clock['high']:+.2f}), {aa_faults:+.0f} page faults: what two Airflow "
            "instances differ by when they run the same code, the noise floor of any comparison across Airflows.",
        ]
    if f"disabled {AGAIN}" in rows:
        again = rows[f"disabled {AGAIN}"]
        aa_t, aa_t_clock = overhead(again, disabled, "cpu_ms"), overhead(again, disabled, clock)
        aa_t_faults = median(_values(again, "minflt")) - median(_values(disabled, "minflt"))
        verdict["control_together"], verdict["control_together_clock"] = aa_t, aa_t_clock
        control += [
            "",
            f"A/A control of the same estimator (`--together`): the disabled Airflow's two observed DAGs, run at "
            f"the same time, the second − the first: {aa_t['delta']:+.2f} ms of CPU ({aa_t['low']:+.2f} to "
            f"{aa_t['high']:+.2f}), {aa_t_clock['delta']:+.2f} ms end to end ({aa_t_clock['low']:+.2f} to "
            f"{aa_t_clock['high']:+.2f}), {aa_t_faults:+.0f} page faults: the noise floor of observed − opted out.",
        ]
    obs_d = rows["default observed"]
    across = overhead(obs_d, disabled, "cpu_ms")
    across_clock = overhead(obs_d, disabled, clock)
    verdict["across"], verdict["across_clock"] = across, across_clock
    sup_across = recorded_overhead(obs_d, disabled, "supervisor_cpu_ms")
    md += [
        "",
        f"Enabled − disabled across two Airflows (observed): {across['delta']:+.2f} ms of CPU "
        f"({across['low']:+.2f} to {across['high']:+.2f}) = {100 * across['delta'] / end_to_end:.2f}% of the end "
        f"to end; {across_clock['delta']:+.2f} ms end to end ({across_clock['low']:+.2f} to "
        f"{across_clock['high']:+.2f}) = {100 * across_clock['delta'] / end_to_end:.2f}%; opted out − disabled: "
        f"{overhead(rows['default opted out'], disabled, 'cpu_ms')['delta']:+.2f} ms (what an opted-out DAG and "
        "an installed, idle BareCount cost)"
        + (
            f"; the supervisor's CPU, enabled − disabled: {sup_across['delta']:+.2f} ms ({sup_across['low']:+.2f} "
            f"to {sup_across['high']:+.2f})."
            if sup_across else "."
        ),
        *control,
        "",
        "**BareCount's hooks as Airflow calls them** (a pluggy wrapper around every implementation; "
        "opted out: the same call returning at the opt-out check):",
        "",
        "| Airflow | hook | n | median ms | p99 ms | opted out, median ms | target ≤ 1 ms median |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in [n for n in ("default", "sinks_up", "sinks_down") if f"{n} observed" in rows]:
        ok_rows = rows[f"{name} observed"] + rows.get(f"{name} failing", [])
        for hook in HOOKS:
            values = _hook(ok_rows, hook)
            if not values:
                continue
            opted = _hook(rows[f"{name} opted out"], hook)
            verdict["hooks"][f"{name} {hook}"] = median(values)
            md.append(
                f"| {name} | `{hook}` | {len(values)} | {f2(median(values))} | {f2(pct(values, 99))} | "
                f"{f2(median(opted)) if opted else '–'} | {'met' if median(values) <= TARGET_HOOK_MS else 'missed'} |"
            )
    # The whole Airflow's CPU is a run's own only when it ran alone (run_together).
    runs = {kind: data for kind, data in result["runs"].items()
            if data and all(run.get("airflow_cpu_ms") is not None for run in data)}
    if runs:
        tasks = args.tasks_per_run
        md += [
            "",
            "**The whole Airflow's CPU per task** (every process of the Airflow, the scheduler with its forwarder "
            "and evidence assembler, the API server, the DAG processor, the workers with their supervisors and the "
            "task processes, from the DAG run's trigger until its last task process was reaped, idle loops "
            "included, divided by the tasks of the run; medians over the runs, differences paired by round): "
            "everything BareCount makes the machine do, not only inside the task process"
            + ("; runs that ran together are left out (their Airflow's CPU cannot be split between them)."
               if len(runs) < len(result["runs"]) else "."),
            "",
            "| kind | CPU per task, median ms | DAG run, median s |",
            "|---|---|---|",
        ]
        for kind, data in runs.items():
            md.append(
                f"| {kind} | {f2(median([run['airflow_cpu_ms'] / tasks for run in data]))} | "
                f"{median([run['run_ms'] for run in data]) / 1000.0:.1f} |"
            )
        roles = sorted({role for data in runs.values() for run in data for role in run.get("airflow_cpu_by_role_ms", {})})
        if roles:
            md += ["", "By process (medians over the runs, ms per task):", "",
                   "| kind | " + " | ".join(roles) + " |", "|---|" + "---|" * len(roles)]
            for kind, data in runs.items():
                md.append(f"| {kind} | " + " | ".join(
                    f2(median([run.get("airflow_cpu_by_role_ms", {}).get(role, 0.0) / tasks for run in data]))
                    for role in roles) + " |")
        pairs = [(f"{n}: observed − opted out", f"{n} observed", f"{n} opted out")
                 for n in ("default", "sinks_up", "sinks_down") if f"{n} observed" in runs and f"{n} opted out" in runs]
        pairs += [("enabled (default) − disabled, observed", "default observed", "disabled observed"),
                  ("opted out (default) − disabled", "default opted out", "disabled observed")]
        if "control observed" in runs:
            pairs.append(("A/A: control − disabled", "control observed", "disabled observed"))
        pairs = [(label, obs_kind, ref_kind) for label, obs_kind, ref_kind in pairs if obs_kind in runs and ref_kind in runs]
        if pairs:
            md += ["", "| comparison | ms per task (interval) | share of end to end (interval) |", "|---|---|---|"]
        verdict["airflow_cpu"] = {}
        for label, obs_kind, ref_kind in pairs:
            d = airflow_overhead(runs[obs_kind], runs[ref_kind], tasks)
            verdict["airflow_cpu"][label] = d
            md.append(
                f"| {label} | {d['delta']:+.2f} ({d['low']:+.2f} to {d['high']:+.2f}) | "
                f"{100 * d['delta'] / end_to_end:+.2f}% ({100 * d['low'] / end_to_end:+.2f}% to "
                f"{100 * d['high'] / end_to_end:+.2f}%) |"
            )
    if result["sinks_received"]:
        md += ["", "What the live sinks received: " + ", ".join(
            f"{key}: {value}" for key, value in sorted(result["sinks_received"].items())) + "."]
    return "\n".join(md), verdict


def write_docs(markdown: str) -> None:
    text = DOCS.read_text()
    block = f"{MARK_START}\n{markdown}\n{MARK_END}"
    if MARK_START in text:
        head, rest = text.split(MARK_START, 1)
        text = head + block + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOCS.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=12, help="timed DAG runs of each kind (default 12)")
    parser.add_argument("--tasks-per-run", type=int, default=25, help="tasks in each DAG (default 25)")
    parser.add_argument("--max-active", type=int, default=2, help="the DAGs' max_active_tasks (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each kind first (default 1)")
    parser.add_argument("--sinks", action="store_true", help="also Airflows sending to StatsD + OTLP, up and down")
    parser.add_argument("--control", action="store_true", help="also a second disabled Airflow (an A/A control)")
    parser.add_argument(
        "--together", action="store_true",
        help="run each Airflow's observed and opted-out DAG runs at the same time (and the disabled Airflow's two "
        "observed DAGs, an A/A of that estimator): their task processes interleave on the same minutes of the "
        "machine; set --max-active 1 to keep the load of --max-active 2 without it",
    )
    parser.add_argument("--json", type=Path, help="keep the raw records here")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    if args.runs < 4 or args.tasks_per_run < 1 or args.max_active < 1 or args.warmup < 0:
        parser.error("--runs must be at least 4 (quarters), --tasks-per-run and --max-active at least 1")
    workdir = Path(tempfile.mkdtemp(prefix="bench-real-tasks-"))
    try:
        result = measure(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:  # the raw records first: a report that fails loses nothing
        args.json.write_text(json.dumps({"rows": result["rows"], "runs": result["runs"]}, default=str))
    markdown, verdict = report(result, args)
    print(markdown)
    if args.json:
        args.json.write_text(
            json.dumps({"rows": result["rows"], "runs": result["runs"], "verdict": verdict}, default=str)
        )
    if not args.no_docs:
        write_docs(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
