"""Replay: idempotent, resumable, throttled, scoped; the operator and the CLI. The kill test and two replays at
once (forked processes) are in tests/integration/test_replay.py."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import pytest

from barecount_provider.recovery.ledger import ReplayLedger
from barecount_provider.recovery.letters import Scope, make_letter
from barecount_provider.recovery.replay import (
    CallableTarget,
    LambdaTarget,
    Replayer,
    SqlTableTarget,
    SqsTarget,
)
from barecount_provider.recovery.segments import LocalSegments, SegmentBackend


def fill(queue: SegmentBackend, n: int, pipeline: str = "orders", start: int = 0, chunk: int = 50) -> list[str]:
    keys = []
    for first in range(start, start + n, chunk):
        letters = [
            make_letter({"n": i}, tenant="acme", pipeline=pipeline, error=ValueError("v"), idempotency_key=f"k{i:06d}")
            for i in range(first, min(start + n, first + chunk))
        ]
        queue.put(letters)
        keys.extend(ltr.idempotency_key for ltr in letters)
    return keys


def local_queue(path: str, segment_bytes: int = 4096) -> SegmentBackend:
    return SegmentBackend(LocalSegments(path, segment_bytes=segment_bytes, durable=False), "local")


@pytest.fixture
def setup(tmp_path):
    queue = local_queue(str(tmp_path / "dlq"))
    ledger = ReplayLedger(f"sqlite:///{tmp_path}/ledger.db")
    yield queue, ledger
    ledger.dispose()


def test_a_rerun_skips_what_was_delivered_and_delivers_what_came_since(setup):
    queue, ledger = setup
    fill(queue, 30)
    got: list[str] = []
    target = CallableTarget(lambda payload, key: got.append(key), name="list")
    first = Replayer(queue, target, ledger, batch_size=7).run()
    assert (first.status, first.delivered, first.removed_from_queue) == ("complete", 30, 30)
    fill(queue, 30)  # the same records fail again, and five new ones
    fill(queue, 5, start=30)
    second = Replayer(queue, target, ledger, batch_size=7).run()
    assert (second.delivered, second.skipped_delivered) == (5, 30)
    assert sorted(got) == sorted(set(got)) and len(got) == 35


def test_failed_records_stay_queued_and_the_next_run_retries_them(setup):
    queue, ledger = setup
    fill(queue, 20)
    flaky = {"fail": True}

    def deliver(payload: Any, key: str) -> None:
        if flaky["fail"] and payload["n"] % 4 == 0:
            raise ConnectionError("target down for this record")

    first = Replayer(queue, CallableTarget(deliver), ledger).run()
    assert (first.delivered, first.failed) == (15, 5) and first.errors_by_class == {"ConnectionError": 5}
    assert sorted(ltr.payload["n"] for ltr in queue.scan(Scope())) == [0, 4, 8, 12, 16]
    queue.finish(None)
    flaky["fail"] = False
    second = Replayer(queue, CallableTarget(deliver), ledger).run()
    assert (second.delivered, second.retried, second.failed) == (5, 5, 0)
    assert list(queue.scan(Scope())) == []


def test_the_replay_is_throttled_scoped_and_capped(setup):
    queue, ledger = setup
    fill(queue, 40, pipeline="orders")
    fill(queue, 10, pipeline="payments", start=100)
    got: list[Any] = []
    target = CallableTarget(lambda payload, key: got.append(payload["n"]))
    started = time.monotonic()
    outcome = Replayer(queue, target, ledger, scope=Scope.of(pipeline="orders"), rate=200, max_records=25).run()
    elapsed = time.monotonic() - started
    assert outcome.status == "stopped" and outcome.delivered == 25 and len(got) == 25
    assert elapsed >= 25 / 200 * 0.9
    assert all(n < 100 for n in got)
    assert len(list(queue.scan(Scope.of(pipeline="payments")))) == 10


def test_the_plan_counts_what_a_run_would_deliver_and_estimates_cost(setup):
    queue, ledger = setup
    fill(queue, 10)
    from barecount_provider.cost import configured_price_table

    unpriced = LambdaTarget("fn", hook=object())
    assert unpriced.estimate_cost_usd(10, 100) == (0.0, "unknown: no price table given to the Lambda target")
    target = LambdaTarget("fn", memory_mb=1024, estimated_duration_ms=1000, hook=object(), prices=configured_price_table())
    plan = Replayer(queue, target, ledger).plan()
    assert plan.records == 10 and plan.bytes > 0 and plan.by_error_class == {"ValueError": 10}
    assert plan.estimated_cost_usd == pytest.approx(10 * (0.20 / 1e6 + 0.0000166667), rel=1e-3)
    Replayer(queue, CallableTarget(lambda p, k: None), ledger, scope_id=plan.scope_id).run()
    assert queue.stats(Scope())[0].depth == 0
    sqs = SqsTarget("https://sqs.us-east-1.amazonaws.com/1/q.fifo", client=object())
    assert sqs.estimate_cost_usd(25, 1000)[0] == pytest.approx(3 * 0.50 / 1e6)


def test_a_sql_table_target_upserts_by_key(setup, tmp_path):
    import sqlalchemy as sa

    queue, ledger = setup
    engine = sa.create_engine(f"sqlite:///{tmp_path}/target.db")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE orders (idempotency_key TEXT PRIMARY KEY, n INTEGER)")
        connection.exec_driver_sql("INSERT INTO orders VALUES ('k000003', -1)")
    fill(queue, 6)
    outcome = Replayer(queue, SqlTableTarget("orders", engine=engine, columns=["n"]), ledger).run()
    assert outcome.delivered == 6
    with engine.connect() as connection:
        rows = dict(connection.exec_driver_sql("SELECT idempotency_key, n FROM orders").fetchall())
    assert rows == {f"k{i:06d}": i for i in range(6)}


def test_progress_is_reported_as_metrics(setup):
    queue, ledger = setup
    fill(queue, 12)
    points: list[Any] = []
    Replayer(queue, CallableTarget(lambda p, k: None), ledger, emit=points.extend,
             metric_tags={"tenant": "acme", "pipeline": "orders"}, progress_interval_s=0).run()
    delivered = sum(v for n, _, v, t in points if n == "barecount.replay.records" and t["outcome"] == "delivered")
    assert delivered == 12
    assert {t["tenant"] for _, _, _, t in points} == {"acme"}
    assert any(n == "barecount.replay.throughput" for n, *_ in points)


class FakeTI:
    def __init__(self) -> None:
        self.task, self.dag_id, self.run_id, self.task_id, self.try_number, self.map_index = None, "d", "r", "replay", 1, -1
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[(self.task_id, key)] = json.loads(json.dumps(value))

    def xcom_pull(self, task_ids: str, key: str) -> Any:
        return self.xcom.get((task_ids, key))


def test_the_operator_pushes_its_plan_and_outcome_for_approval_and_evidence(tmp_path):
    from barecount_provider.operators.recovery import ReplayOperator

    dlq_dir = str(tmp_path / "dlq")
    fill(local_queue(dlq_dir), 12)
    got: list[str] = []
    ti = FakeTI()
    common = {"target": lambda payload, key: got.append(key), "dlq_backend": "local", "dlq_location": dlq_dir,
              "ledger_url": f"sqlite:///{tmp_path}/ledger.db", "tenant": "acme"}
    ti.task_id = "plan"
    plan = ReplayOperator(task_id="plan", plan_only=True, **common).execute({"ti": ti})
    assert ti.xcom[("plan", "replay_plan")]["records"] == 12 and plan["needs_approval"] is False
    assert "estimated_cost_usd" in plan and plan["approval_thresholds"]["threshold_records"] == 1000000
    ti.xcom[("plan", "replay_plan")]["records"] = 10  # what was approved
    ti.task_id = "replay"
    operator = ReplayOperator(task_id="replay", approved_plan_task_id="plan", **common)
    outcome = operator.execute({"ti": ti})
    assert outcome["status"] == "stopped" and outcome["delivered"] == 10 and len(got) == 10
    pushed = ti.xcom[("replay", "replay_outcome")]
    assert pushed["delivered"] == 10 and operator.barecount_replay_outcome == pushed


def cli_target(payload: Any, key: str) -> None:
    CLI_DELIVERED.append(key)


CLI_DELIVERED: list[str] = []


def test_barecount_replay_plan_run_status(tmp_path, capsys):
    from barecount_provider.cli import main

    dlq_dir = str(tmp_path / "dlq")
    fill(local_queue(dlq_dir), 9)
    common = ["--dlq", dlq_dir, "--target", f"callable:{__name__}:cli_target", "--ledger-url", f"sqlite:///{tmp_path}/l.db"]
    assert main(["replay", "plan", *common, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 9
    assert main(["replay", "run", *common, "--rate", "1000"]) == 0
    assert "delivered 9" in capsys.readouterr().out and len(CLI_DELIVERED) == 9
    assert main(["replay", "status", "--ledger-url", f"sqlite:///{tmp_path}/l.db"]) == 0
    assert "delivered 9, in flight 0, failed 0" in capsys.readouterr().out
    assert main(["dlq", "stats", "--dlq", dlq_dir, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["queues"][0]["depth"] == 0


# ------------------------------------------------------------------------ the approval gate in the operator

GATED_POLICY = """
version: 1
tenants:
  acme:
    replay_approval: {threshold_records: 10, threshold_cost_usd: null, approvers: [alice], timeout_seconds: 60, default: reject}
"""


@pytest.fixture
def gated(tmp_path, monkeypatch):
    """A queue of 12 letters of tenant acme, whose policy asks an approval from 10 records; a plan of them."""
    from barecount_provider import config, policy
    from barecount_provider.operators.recovery import ReplayOperator

    (tmp_path / "policy.yaml").write_text(GATED_POLICY, encoding="utf-8")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__POLICY_PATH", str(tmp_path / "policy.yaml"))
    config.cache_clear()
    policy.get_policy.cache_clear()
    dlq_dir = str(tmp_path / "dlq")
    fill(local_queue(dlq_dir), 12)
    got: list[str] = []
    common = {"target": lambda payload, key: got.append(key), "dlq_backend": "local", "dlq_location": dlq_dir,
              "ledger_url": f"sqlite:///{tmp_path}/ledger.db", "tenant": "acme"}
    ti = FakeTI()
    ti.task_id = "plan"
    plan = ReplayOperator(task_id="plan", plan_only=True, **common).execute({"ti": ti})
    assert plan["needs_approval"] is True
    ti.task_id = "replay"
    yield SimpleNamespace(ti=ti, plan=plan, got=got, common=common, operator=ReplayOperator)
    policy.get_policy.cache_clear()
    config.cache_clear()


def _decide(gated: SimpleNamespace, decision: str = "Approve", **request_changes: Any) -> None:
    """ReplayApprovalSensor's answer on the gated plan, as Airflow delivers it (execute_complete)."""
    from datetime import UTC, datetime

    from barecount_provider.sensors.approval import ReplayApprovalSensor

    sensor = ReplayApprovalSensor(task_id="approve", plan_task_id="plan", tenant="acme",
                                  ledger_url=gated.common["ledger_url"])
    ti = gated.ti
    ti.task_id = "approve"
    try:
        plan = ti.xcom[("plan", "replay_plan")]
        request = {"tenant": "acme", "records": plan["records"], "estimated_cost_usd": plan["estimated_cost_usd"],
                   "scope": plan["scope"], "plan_id": plan["plan_id"], "scope_id": plan["scope_id"], **request_changes}
        ti.xcom_push("replay_approval_request", request)
        event = {"chosen_options": [decision], "params_input": {},
                 "responded_at": datetime(2026, 12, 7, 12, 0, tzinfo=UTC), "responded_by_user": {"id": "alice", "name": "alice"}}
        try:
            sensor.execute_complete({"ti": ti, "task": sensor}, event)
        except Exception as err:  # Reject skips the downstream tasks (Airflow's own exception)
            if decision == "Approve":
                raise
            assert "Skip" in type(err).__name__ or "reject" in str(err).lower()
    finally:
        ti.task_id = "replay"


def test_a_replay_over_the_threshold_without_the_sensor_is_refused_and_delivers_nothing(gated):
    from airflow.sdk.exceptions import AirflowException

    with pytest.raises(AirflowException, match=r"reaches the approval threshold of tenant 'acme' \(10 records in .*policy.yaml\), and no approved plan was given"):
        gated.operator(task_id="replay", **gated.common).execute({"ti": gated.ti})
    with pytest.raises(AirflowException, match=r"no approval of plan [0-9a-f]+ for tenant 'acme' and at least 12 record"):
        gated.operator(task_id="replay", approved_plan_task_id="plan", **gated.common).execute({"ti": gated.ti})
    assert gated.got == []
    assert ("replay", "replay_outcome") not in gated.ti.xcom


def test_a_replay_with_an_approval_of_its_plan_on_record_delivers_and_says_who_approved(gated):
    _decide(gated)
    operator = gated.operator(task_id="replay", approved_plan_task_id="plan", **gated.common)
    outcome = operator.execute({"ti": gated.ti})
    assert outcome["delivered"] == 12 and len(gated.got) == 12
    assert outcome["approval"]["approver"] == "alice" and outcome["approval"]["plan_id"] == gated.plan["plan_id"]
    assert outcome["approval"]["decided_at"] == "2026-12-07T12:00:00+00:00"


@pytest.mark.parametrize(
    "how",
    ["rejected", "another plan id", "fewer records approved", "another tenant", "another scope", "plan changed after approval"],
)
def test_a_replay_is_refused_when_the_approval_on_record_is_not_for_this_plan(gated, how):
    from airflow.sdk.exceptions import AirflowException

    if how == "rejected":
        _decide(gated, decision="Reject")
    elif how == "another plan id":
        _decide(gated, plan_id="0" * 32)
    elif how == "fewer records approved":
        _decide(gated, records=11)
    elif how == "another tenant":
        _decide(gated, tenant="globex")
    elif how == "another scope":
        _decide(gated, scope={**gated.plan["scope"], "pipeline": "other"})
    else:
        _decide(gated)
        gated.ti.xcom[("plan", "replay_plan")]["records"] = 100  # the XCom rewritten after the approval
    with pytest.raises(AirflowException, match="nothing was delivered"):
        gated.operator(task_id="replay", approved_plan_task_id="plan", **gated.common).execute({"ti": gated.ti})
    assert gated.got == []
