"""What an idle Airflow costs with BareCount enabled and disabled: CPU per second of every process.

Two real Airflows side by side (api-server, scheduler, DAG processor on 127.0.0.1, LocalExecutor, SQLite;
``tests/system/stack.py``), one with BareCount enabled (its scheduler-side thread, its evidence tick and the
spool's forwarder process) and one with it disabled, each with one parsed DAG and no run. After
``--settle`` seconds, the CPU time of every process of each Airflow (its own and its reaped children's, by
role: ``bench_real_tasks.airflow_cpu_ms``) is read twice, ``--window`` seconds apart.

    .venv/bin/python benchmarks/bench_idle.py --window 60

The idle loop matters to the real-task benchmark: every DAG run's whole-Airflow CPU includes it for the
run's duration (``bench_real_tasks.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_real_tasks import REPO, airflow_cpu_ms  # every process of an Airflow, by role

DAG = (
    "from airflow.providers.standard.operators.empty import EmptyOperator\n"
    "from airflow.sdk import DAG\n"
    "with DAG('bench_idle', schedule=None, tags=['tenant:acme']) as dag:\n"
    "    EmptyOperator(task_id='a')\n"
)
SECRET = "bench-idle-secret-key-not-for-production"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured (default 60)")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds after start-up first (default 20)")
    args = parser.parse_args(argv)
    if args.window <= 0 or args.settle < 0:
        parser.error("--window must be positive and --settle not negative")
    sys.path.insert(0, str(REPO))
    from tests.system.stack import AirflowStack

    envs = {
        "enabled": {"AIRFLOW__BARECOUNT__SECRET_KEY": SECRET, "AIRFLOW__BARECOUNT__ENABLED": "True"},
        "disabled": {"AIRFLOW__BARECOUNT__SECRET_KEY": SECRET, "AIRFLOW__BARECOUNT__ENABLED": "False"},
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    try:
        dags = workdir / "dags"
        dags.mkdir()
        (dags / "bench_idle.py").write_text(DAG)
        with contextlib.ExitStack() as running:
            stacks = {
                name: running.enter_context(AirflowStack(home=workdir / name, dags_folder=dags, extra_env=env))
                for name, env in envs.items()
            }
            for stack in stacks.values():
                stack.wait_for_dag("bench_idle", timeout=240)
            time.sleep(args.settle)
            before = {name: airflow_cpu_ms(stack) for name, stack in stacks.items()}
            started = time.monotonic()
            time.sleep(args.window)
            after = {name: airflow_cpu_ms(stack) for name, stack in stacks.items()}
            seconds = time.monotonic() - started
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"Idle Airflows, {seconds:.0f} s measured after {args.settle:.0f} s settling: CPU ms per second\n")
    print("| Airflow | processes | CPU, ms per s |")
    print("|---|---|---|")
    totals = {}
    for name in envs:
        total = 0.0
        for process, cpu in sorted(after[name].items(), key=lambda item: -item[1]):
            spent = (cpu - before[name].get(process, 0.0)) / seconds
            total += spent
            if spent >= 0.05:
                print(f"| {name} | {process} | {spent:.1f} |")
        totals[name] = total
        print(f"| {name} | **all** | **{total:.1f}** |")
    print(f"\nEnabled − disabled: {totals['enabled'] - totals['disabled']:+.1f} ms of CPU per second.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
