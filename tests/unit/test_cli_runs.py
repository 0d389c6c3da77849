"""`barecount runs`: the same table as `make demo` prints, sorted, runner classes never cut."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from barecount_provider import cli
from barecount_provider.telemetry.filesink import events_path

REPO = Path(__file__).resolve().parents[2]


def _event(dag_id: str, run_id: str, task_id: str, runner_class: str, state: str = "success") -> dict[str, object]:
    return {
        "kind": "task_try",
        "dag_id": dag_id,
        "run_id": run_id,
        "task_id": task_id,
        "map_index": -1,
        "try_number": 1,
        "tenant": "acme",
        "pipeline": "orders",
        "runner_class": runner_class,
        "state": state,
        "duration_s": 1.5,
        "trace_id": "0123456789abcdef0123456789abcdef",
        "sinks": {"file": "events.jsonl", "statsd": "off"},
    }


@pytest.fixture
def events(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(tmp_path))
    written = [
        _event("example_zero_code", "run2", "load", "local"),
        _event("example_all_runners", "run1", "lambda_step", "serverless"),
        _event("example_all_runners", "run1", "hosts", "dedicated"),
        _event("example_all_runners", "run1", "glue", "managed_etl", state="failed"),
    ]
    Path(events_path()).write_text("".join(json.dumps(e) + "\n" for e in written), encoding="utf-8")
    return written


def _demo_module():
    spec = importlib.util.spec_from_file_location("barecount_demo_script", REPO / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runs_prints_the_demo_s_table_sorted_with_whole_runner_classes(events, capsys):
    assert cli.main(["runs"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["dag", "task", "try", "tenant", "pipeline", "runner", "class", "state", "duration", "trace", "id", "sinks"]
    rows = [line.split() for line in out[2:]]
    assert [(row[0], row[5]) for row in rows] == [
        ("example_all_runners", "serverless"),
        ("example_all_runners", "dedicated"),
        ("example_all_runners", "managed_etl"),
        ("example_zero_code", "local"),
    ]  # sorted by DAG and run, file order within a run; no class cut to 8 characters
    assert "\n".join(out) == _demo_module().format_table(events)


def test_runs_last_keeps_the_newest_tries(events, capsys):
    assert cli.main(["runs", "--last", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[2].split()[:2] == ["example_all_runners", "glue"]
