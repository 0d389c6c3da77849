"""`make demo` prints what example_recovery did, from the XComs it saved while Airflow ran."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("barecount_demo_for_recovery", REPO / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PLAN = {
    "records": 4, "bytes": 2560, "dlq": "local:evidence/dlq", "target": "callable:load_order", "by_error_class": {"ValueError": 4},
    "estimated_cost_usd": 0.0, "cost_basis": "a Python callable", "needs_approval": False,
    "approval_thresholds": {"threshold_records": 1000000, "threshold_cost_usd": 100.0},
}  # fmt: skip
DECISION = {"decision": "not required", "approver": None, "decided_at": "2026-12-07T17:00:07+00:00"}
OUTCOME = {"status": "complete", "delivered": 4, "skipped_delivered": 0, "failed": 0, "removed_from_queue": 4, "scope_id": "43ba"}


def _saved(tmp_path: Path, **found: object) -> Path:
    path = tmp_path / "recovery.json"
    path.write_text(json.dumps({"run_id": "manual__1", **found}), encoding="utf-8")
    return path


def test_the_report_names_dead_letters_plan_decision_and_replay(demo, tmp_path, capsys):
    saved = _saved(tmp_path, replay_plan=PLAN, replay_approval=DECISION, replay_outcome=OUTCOME)
    assert demo.report_recovery(saved) == 0
    out = capsys.readouterr().out
    assert "dead-letter queue: 4 failed record(s) sent by task 'ingest' (ValueError 4)" in out
    assert "planned replay (dry run, task 'plan'): 4 record(s) to callable:load_order" in out
    assert "governance decision (task 'approve'): not required at 2026-12-07T17:00:07+00:00" in out
    assert "complete; delivered 4, already delivered before 0, failed 0, removed from the queue 4" in out


def test_a_replay_that_did_not_complete_fails_the_demo(demo, tmp_path, capsys):
    assert demo.report_recovery(_saved(tmp_path, replay_plan=PLAN, replay_approval=DECISION, replay_outcome={**OUTCOME, "failed": 1})) == 1
    assert demo.report_recovery(_saved(tmp_path, replay_plan=PLAN, replay_approval=DECISION)) == 1
    assert "ERROR: the replay left no outcome" in capsys.readouterr().out


def test_no_recovery_run_prints_nothing(demo, tmp_path, capsys):
    assert demo.report_recovery(tmp_path / "absent.json") == 0
    assert capsys.readouterr().out == ""
