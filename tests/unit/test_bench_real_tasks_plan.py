"""The real-task benchmark's plan (benchmarks/bench_real_tasks.py): which DAG runs run at the same time with
``--together``, and a report that leaves their unsplittable whole-Airflow CPU out. No Airflow is started."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.perf

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("bench_real_tasks")
    finally:
        sys.path.remove(str(BENCHMARKS))


def _envs(bench, together):
    return bench.airflow_envs(Path("/nonexistent"), None, 1, control=True, together=together)


def test_alone_every_kind_is_a_step_of_its_own(bench):
    kinds = bench.kinds_of(_envs(bench, False))
    assert bench.steps_of(kinds) == [[kind] for kind in kinds]
    assert f"disabled {bench.AGAIN}" not in kinds


def test_together_pairs_observed_with_opted_out_and_the_disabled_airflow_with_itself(bench):
    envs = _envs(bench, True)
    kinds = bench.kinds_of(envs, together=True)
    steps = bench.steps_of(kinds, together=True)
    assert ["default observed", "default opted out"] in steps
    assert ["disabled observed", f"disabled {bench.AGAIN}"] in steps
    assert ["default failing"] in steps and ["control observed"] in steps
    assert sorted(kind for step in steps for kind in step) == sorted(kinds)  # each kind once
    assert kinds[f"disabled {bench.AGAIN}"] == ("disabled", "bench_many_observed_again")
    assert envs["default"]["AIRFLOW__CORE__PARALLELISM"] == "4"  # two runs of one task at a time, doubled


def _rows(kind_cpu, rounds=4, tasks=3):
    rows = []
    for number in range(rounds):
        for index in range(tasks):
            life = {"cpu_ms": kind_cpu + index, "wall_ms": 200.0 + kind_cpu, "tail_ms": 0.0, "minflt": 7000}
            rows.append({"round": number, "life": {**life, "wall_net_ms": life["wall_ms"]},
                         "try": {"hooks": {"running": {"wall_ms": 0.5}}}})
    return rows


def test_the_report_leaves_out_the_whole_airflow_cpu_of_runs_that_ran_together(bench, monkeypatch):
    monkeypatch.setattr(bench, "machine", lambda: {"cpus": 2, "cpu_model": "x", "os": "y", "python": "3.11",
                                                   "airflow": "3.3", "opentelemetry_sdk": "1"})
    cpu = {"default observed": 92.0, "default opted out": 90.0, "default failing": 95.0,
           "disabled observed": 88.0, f"disabled {bench.AGAIN}": 88.5}
    together = {"default observed", "default opted out", "disabled observed", f"disabled {bench.AGAIN}"}
    runs = {kind: [{"round": n, "run_ms": 1000.0, "airflow_cpu_ms": None if kind in together else 3000.0,
                    "airflow_cpu_by_role_ms": None if kind in together else {"scheduler": 3000.0}}
                   for n in range(4)] for kind in cpu}
    result = {"rows": {kind: _rows(value) for kind, value in cpu.items()}, "runs": runs,
              "kinds": {kind: (kind.split()[0], "dag") for kind in cpu}, "elapsed_s": 1.0, "sinks_received": {}}
    args = argparse.Namespace(runs=4, warmup=1, tasks_per_run=3, max_active=1, sinks=False, control=False,
                              together=True)
    markdown, verdict = bench.report(result, args)
    assert verdict["overheads"]["default"]["cpu"]["delta"] == pytest.approx(2.0)
    assert verdict["control_together"]["delta"] == pytest.approx(0.5)
    assert "--together" in markdown and "A/A control of the same estimator" in markdown
    assert "| default failing | 1000 |" in markdown  # ran alone: its whole-Airflow CPU per task (3000 / 3)
    assert "| default observed | 1000 |" not in markdown
    assert "runs that ran together are left out" in markdown
    assert "| comparison |" not in markdown  # no two kinds that ran alone to compare


def test_pooled_runs_keep_their_rounds_apart_and_pair_within_them(bench):
    pool = importlib.import_module("pool_real_tasks")

    def run(offset):
        return {"rows": {"default observed": _rows(92.0 + offset), "default opted out": _rows(90.0 + offset),
                         "disabled observed": _rows(88.0), f"disabled {bench.AGAIN}": _rows(88.0)}}

    markdown, verdict = pool.pool([run(0.0), run(30.0)])  # the second run 30 ms slower throughout: paired away
    default = verdict["overheads"]["default"]
    assert default["rounds"] == 8 and default["delta"] == pytest.approx(2.0)
    assert default["low"] == pytest.approx(2.0) and default["high"] == pytest.approx(2.0)
    assert verdict["control_together"]["delta"] == pytest.approx(0.0)
    assert "| default | 8 | +2.00" in markdown and "met" in markdown
