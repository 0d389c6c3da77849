"""What BareCount's cluster policies cost a task process's parse of its DAG file.

Airflow runs ``dag_policy`` and each task's ``task_policy`` whenever a process parses a DAG file: the DAG
processor, and every task process, which parses its DAG file once more before it runs the task. The cost
is paid for every task *in the file*, not only for the one that runs, so it grows with the tasks per file.

Each round starts one Airflow process per configuration (BareCount enabled, disabled and, with
``--baseline DIR``, enabled from another checkout), in rotating order. Each of them imports Airflow and its
plugins, freezes its heap (as LocalExecutor does before it forks) and forks ``--forks`` children one after
the other. Every child parses the benchmark's DAG file with Airflow's own ``DagBag`` once, as a task
process does, inside the parsing context that Airflow's task runner sets for its parse (the first task of
the first DAG; ``--unbound``: no parsing context, as in the DAG processor). The
policy calls are timed around Airflow's ``settings.dag_policy`` / ``settings.task_policy``
(what the DagBag calls), so the figure is the whole policy dispatch, pluggy included, with BareCount's
implementations or without them (disabled: they return at the master switch).

    .venv/bin/python benchmarks/bench_policy.py --rounds 10 --forks 20 --tasks 20 --dags 3

Prints medians over the children: the policy time per parse and per task, and the whole parse's CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

DAG_FILE = '''"""Written by benchmarks/bench_policy.py: {dags} DAGs of {tasks} trivial tasks, the last opted out."""
import datetime

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG


def _body():
    return 1


for number in range({dags}):
    extra = ["barecount:off"] if number == {dags} - 1 and {dags} > 1 else []
    with DAG(
        dag_id=f"bench_policy_{{number}}",
        schedule=None,
        start_date=datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc),
        tags=["tenant:acme", "pipeline:orders", *extra],
    ) as dag:
        for index in range({tasks}):
            PythonOperator(task_id=f"t{{index:03d}}", python_callable=_body)
    globals()[dag.dag_id] = dag
'''


def _child_main(dag_file: str, forks: int, bind: bool) -> None:
    """One configuration's parent: Airflow and its plugins imported, then ``forks`` parses in forked children."""
    import gc

    import airflow.settings as settings
    from airflow import plugins_manager
    from airflow.dag_processing.dagbag import DagBag

    plugins_manager.ensure_plugins_loaded()
    gc.freeze()
    results = []
    for _ in range(forks):
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                spent = [0]
                ns = time.perf_counter_ns

                def timed(hook: Any, spent: list[int] = spent, ns: Any = ns) -> Any:
                    def call(*args: Any, **kwargs: Any) -> Any:
                        t = ns()
                        try:
                            return hook(*args, **kwargs)
                        finally:
                            spent[0] += ns() - t

                    return call

                from airflow.sdk.definitions._internal.dag_parsing_context import (
                    _airflow_parsing_context_manager,
                )

                settings.dag_policy = timed(settings.dag_policy)
                settings.task_policy = timed(settings.task_policy)
                # bind: the parsing context airflow.sdk.execution_time.task_runner.startup() sets for its parse
                running = {"dag_id": "bench_policy_0", "task_id": "t000"} if bind else {}
                with _airflow_parsing_context_manager(**running):
                    cpu = time.process_time_ns()
                    bag = DagBag(dag_folder=dag_file, safe_mode=False)
                    cpu = time.process_time_ns() - cpu
                if bag.import_errors or not bag.dags:
                    raise RuntimeError(f"the DAG file did not parse: {bag.import_errors}")
                tasks = sum(len(dag.tasks) for dag in bag.dags.values())
                record = {"policy_ms": spent[0] / 1e6, "parse_cpu_ms": cpu / 1e6, "tasks": tasks}
            except BaseException as err:  # reported to the parent, which fails the run
                record = {"error": repr(err)}
                code = 1
            os.write(wfd, json.dumps(record).encode())
            os._exit(code)
        os.close(wfd)
        data = b""
        while chunk := os.read(rfd, 65536):
            data += chunk
        os.close(rfd)
        os.waitpid(pid, 0)
        results.append(json.loads(data or b'{"error": "no result"}'))
    print(json.dumps(results))


def _configurations(baseline: str | None) -> dict[str, dict[str, str]]:
    common = {
        "AIRFLOW__BARECOUNT__SECRET_KEY": "bench-policy-secret-key-not-for-production",
        "AIRFLOW__BARECOUNT__ENVIRONMENT": "development",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    configs = {
        "enabled": {**common, "AIRFLOW__BARECOUNT__ENABLED": "True"},
        "disabled": {**common, "AIRFLOW__BARECOUNT__ENABLED": "False"},
    }
    if baseline:
        path = os.pathsep.join(p for p in (baseline, os.environ.get("PYTHONPATH", "")) if p)
        configs["baseline"] = {**configs["enabled"], "PYTHONPATH": path}
    return configs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds (one process per configuration each)")
    parser.add_argument("--forks", type=int, default=20, help="parses (forked children) per process")
    parser.add_argument("--tasks", type=int, default=20, help="tasks per DAG")
    parser.add_argument("--dags", type=int, default=3, help="DAGs in the file (the last opted out)")
    parser.add_argument("--baseline", help="another checkout of BareCount, measured side by side as `baseline`")
    parser.add_argument(
        "--unbound", action="store_true", help="no parsing context (a DAG processor's parse, not a task process's)"
    )
    parser.add_argument("--child", nargs=3, metavar=("DAG_FILE", "FORKS", "BIND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child_main(args.child[0], int(args.child[1]), args.child[2] == "bind")
        return 0
    for name in ("rounds", "forks", "tasks", "dags"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.baseline and not (Path(args.baseline) / "barecount_provider").is_dir():
        parser.error(f"--baseline {args.baseline}: no barecount_provider package there")
    configs = _configurations(args.baseline)
    by_config: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory(prefix="bench-policy-") as tmp:
        dag_file = Path(tmp) / "bench_policy.py"
        dag_file.write_text(DAG_FILE.format(dags=args.dags, tasks=args.tasks))
        home = Path(tmp) / "airflow-home"
        home.mkdir()
        names = list(configs)
        for round_number in range(args.rounds):
            for name in names[round_number % len(names) :] + names[: round_number % len(names)]:
                env = {**os.environ, "AIRFLOW_HOME": str(home), **configs[name]}
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(dag_file), str(args.forks), "none" if args.unbound else "bind"],
                    env=env, capture_output=True, text=True, check=False,
                )
                if out.returncode != 0:
                    sys.stderr.write(out.stderr[-4000:])
                    raise SystemExit(f"{name}: the child process failed ({out.returncode})")
                records = json.loads(out.stdout.strip().splitlines()[-1])
                errors = [r["error"] for r in records if "error" in r]
                if errors:
                    raise SystemExit(f"{name}: {errors[0]}")
                by_config[name].extend(records)
    tasks = by_config["enabled"][0]["tasks"]
    print(
        f"{args.rounds} rounds x {args.forks} parses per configuration; a file of {args.dags} DAGs x "
        f"{args.tasks} tasks ({tasks} tasks, the last DAG opted out), parsed "
        + ("with no try bound (as the DAG processor)" if args.unbound else "as a task process of its first task")
        + "\n"
    )
    print("| configuration | parses | policies per parse, median ms | per task, µs | parse CPU, median ms |")
    print("|---|---|---|---|---|")
    medians = {}
    for name, records in by_config.items():
        policy = statistics.median(r["policy_ms"] for r in records)
        parse = statistics.median(r["parse_cpu_ms"] for r in records)
        medians[name] = policy
        print(f"| {name} | {len(records)} | {policy:.3f} | {policy * 1000 / tasks:.1f} | {parse:.2f} |")
    print(
        "\n"
        + textwrap.fill(
            f"BareCount's policies (enabled − disabled): {medians['enabled'] - medians['disabled']:+.3f} ms "
            f"per parse, {(medians['enabled'] - medians['disabled']) * 1000 / tasks:+.1f} µs per task in the file"
            + (
                f"; baseline − disabled: {medians['baseline'] - medians['disabled']:+.3f} ms per parse"
                if "baseline" in medians
                else ""
            )
            + ".",
            width=110,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
