"""Each fast path of the task side, on and off, side by side: time inside the hooks per event in forked
task processes.

One supervisor per variant, each forked from this script, applies its variant, runs the pre-fork preload
(``runtime/preload.py``) as the scheduler does when it loads the plugin, freezes its heap (``gc.freeze()``,
as LocalExecutor does) and then forks one task process per task. Every task process runs
``on_try_running`` and ``on_try_finished`` on a stand-in task instance (every other one fails with a
``ValueError`` raised through three generated modules that stand in for the task runner, the operator
base and the PythonOperator, plus a DAG file), reading the process's CPU time (``time.process_time_ns``:
a shared, loaded machine preempts the task processes, which a wall clock would count) and its minor page
faults around each hook. Variants are
interleaved (task i of every variant before task i + 1 of any, in a rotating order).

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_fast_paths.py --tasks 300

Prints a markdown table: per variant and hook, the median and the difference to ``on`` (every fast path
on). Nothing is written outside a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent

VARIANTS = {
    "on": "every fast path on (`[barecount] fast_paths = True`, the default)",
    "stdlib formatter": "the failure's text by traceback.TracebackException (colno dropped), not the lean formatter",
    "no frame sources": "the task-frame modules' source not read into linecache before the fork",
    "no warm-up": "the preload without its run of the try's path on a stand-in task",
    "off": "`fast_paths = False`: nothing preloaded, the failure's text by traceback",
}

FRAME_MODULE_LINES = {"bench_runner": 2000, "bench_operator": 1500, "bench_python": 1200}


def _write_modules(directory: Path) -> None:
    """Modules whose frames a failing try's traceback shows: long files, the call near their end."""
    calls = {"bench_runner": "bench_operator.execute(fn)", "bench_operator": "bench_python.execute(fn)",
             "bench_python": "fn()"}
    imports = {"bench_runner": "import bench_operator", "bench_operator": "import bench_python", "bench_python": ""}
    for name, lines in FRAME_MODULE_LINES.items():
        body = [imports[name]] + [f"CONSTANT_{i} = {i}  # filler line of a long module" for i in range(lines - 4)]
        body += ["def execute(fn):", f"    return {calls[name]}", ""]
        (directory / f"{name}.py").write_text("\n".join(body))
    (directory / "bench_dag.py").write_text(
        "def extract():\n    rows = {'a': 1}\n    return rows['b']  # a KeyError\n\n"
        "def load():\n    try:\n        return extract()\n    except KeyError as err:\n"
        "        raise ValueError('load failed') from err\n"
    )


def _stdlib_format(error: BaseException) -> str:
    exception = traceback.TracebackException(type(error), error, error.__traceback__, compact=True)
    todo, seen = [exception], set()
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        for frame in current.stack:
            frame.colno = frame.end_colno = None
        todo.extend((current.__cause__, current.__context__))  # type: ignore[list-item]
    return "".join(exception.format())


def _apply(variant: str) -> None:
    from barecount_provider import config
    from barecount_provider.runtime import preload, task_side
    from barecount_provider.telemetry import exceptions

    os.environ["AIRFLOW__BARECOUNT__FAST_PATHS"] = "False" if variant == "off" else "True"
    config.cache_clear()
    if variant == "stdlib formatter":
        exceptions.format_exception_text = _stdlib_format  # type: ignore[assignment]
        task_side.format_exception_text = _stdlib_format  # type: ignore[attr-defined]
    elif variant == "no frame sources":
        preload.TASK_FRAME_MODULES = ()
    elif variant == "no warm-up":
        preload._warm_try_path = lambda: None  # type: ignore[assignment]


def _task(index: int, write: int) -> None:
    """One task process: the two hooks, timed."""
    from datetime import UTC, datetime

    from barecount_provider.runtime import task_side

    dag = SimpleNamespace(dag_id="bench_fast", tags=["pipeline:bench"], params={}, default_args={}, tasks=[])
    task = SimpleNamespace(task_id="t", dag=dag, upstream_task_ids={"up"}, params={}, pool="default_pool",
                           retries=1, retry_policy=None, partial_kwargs={})
    dag.tasks.append(task)
    ti = SimpleNamespace(dag_id=dag.dag_id, run_id=f"r{index}", task_id="t", map_index=-1, try_number=1,
                         max_tries=1, task=task, start_date=datetime.now(UTC), _ti_context_from_server=None)
    failing = index % 2 == 1
    error = None
    if failing:
        import bench_dag
        import bench_runner

        try:
            bench_runner.execute(bench_dag.load)
        except ValueError as err:
            error = err
    faults, cpu = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time_ns()
    task_side.on_try_running(ti)
    running = (time.process_time_ns() - cpu, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
    faults, cpu = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time_ns()
    task_side.on_try_finished(ti, "up_for_retry" if failing else "success", error)
    finished = (time.process_time_ns() - cpu, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
    os.write(write, json.dumps({"running": running, "failed" if failing else "success": finished}).encode())


def _supervise(variant: str, commands: int, results: int) -> None:
    _apply(variant)
    from barecount_provider.runtime import preload

    preload.preload()
    gc.freeze()
    while os.read(commands, 16):
        index = int(os.read(commands, 16) or b"0")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                _task(index, write)
            finally:
                os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        data = b""
        while chunk := os.read(read, 4096):
            data += chunk
        os.close(read)
        os.write(results, data.ljust(256)[:256])
    os._exit(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=300, help="task processes per variant (default 300)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated (default: all)")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    workdir = Path(tempfile.mkdtemp(prefix="bench-fast-"))
    try:
        modules = workdir / "modules"
        modules.mkdir()
        _write_modules(modules)
        sys.path.insert(0, str(modules))
        os.environ.update({
            "AIRFLOW_HOME": str(workdir / "airflow"),
            "AIRFLOW__BARECOUNT__TELEMETRY_DIR": str(workdir / "telemetry"),
            "AIRFLOW__BARECOUNT__EVIDENCE_DIR": str(workdir / "evidence"),
            "AIRFLOW__BARECOUNT__TASK_OUTPUTS": "task",
        })
        import airflow.sdk  # noqa: F401  (what the supervisor has imported before it forks)

        from barecount_provider.runtime import preload

        preload.TASK_FRAME_MODULES = tuple(FRAME_MODULE_LINES)  # the generated stand-ins for Airflow's modules
        import bench_runner  # noqa: F401

        supervisors: dict[str, tuple[int, int, int]] = {}
        for variant in variants:
            command_read, command_write = os.pipe()
            result_read, result_write = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(command_write)
                os.close(result_read)
                for _, other_commands, other_results in supervisors.values():  # their ends of the pipes
                    os.close(other_commands)
                    os.close(other_results)
                _supervise(variant, command_read, result_write)
            os.close(command_read)
            os.close(result_write)
            supervisors[variant] = (pid, command_write, result_read)
        timings: dict[str, dict[str, list[list[int]]]] = {v: {"running": [], "success": [], "failed": []} for v in variants}
        for index in range(args.tasks):
            order = variants[index % len(variants):] + variants[: index % len(variants)]
            for variant in order:
                _, command_write, result_read = supervisors[variant]
                os.write(command_write, b"go".ljust(16))
                os.write(command_write, str(index).encode().ljust(16))
                got = json.loads(os.read(result_read, 256).decode().strip())
                for hook, value in got.items():
                    timings[variant][hook].append(value)
        for pid, command_write, _ in supervisors.values():
            os.write(command_write, b"")
            os.close(command_write)
            os.waitpid(pid, 0)
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)

    hooks = ("running", "success", "failed")

    def median_ms(variant: str, hook: str) -> float:
        values = [cpu for cpu, _ in timings[variant][hook]]
        return statistics.median(values) / 1e6 if values else float("nan")

    def median_faults(variant: str, hook: str) -> float:
        values = [faults for _, faults in timings[variant][hook]]
        return statistics.median(values) if values else float("nan")

    print(f"python {sys.version.split()[0]}, {args.tasks} task processes per variant, interleaved; CPU time "
          "inside the hook, median (minor page faults, median); difference to `on`\n")
    print("| variant | running | success | failed | running − on | success − on | failed − on |")
    print("|---|---|---|---|---|---|---|")
    for variant in variants:
        cells = [f"{median_ms(variant, hook):.3f} ms ({median_faults(variant, hook):.0f})" for hook in hooks]
        deltas = [f"{median_ms(variant, hook) - median_ms('on', hook):+.3f} ms" if "on" in timings else ""
                  for hook in hooks]
        print(f"| {variant} | " + " | ".join(cells + deltas) + " |")
    print()
    for variant in variants:
        print(f"- {variant}: {VARIANTS.get(variant, '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
