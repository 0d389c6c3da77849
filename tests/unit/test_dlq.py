"""The dead-letter queue hook (hooks/dlq.py): its one-call send, failed runner events, metrics, the backend the
location picks. The letters and the local segment backend: test_letters.py and test_segments.py; SQS against
moto: tests/integration/test_dlq_sqs.py."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest

from barecount_provider.hooks.dlq import DeadLetterQueueHook, backend_kind


class _Recorder:
    def __init__(self) -> None:
        self.points: list[tuple[str, str, float, dict[str, Any]]] = []

    def emit(self, points: list[Any]) -> None:
        self.points.extend((n, k, v, dict(t)) for n, k, v, t in points)


@pytest.fixture
def emitted(monkeypatch):
    from barecount_provider.telemetry import metrics

    recorder = _Recorder()
    monkeypatch.setattr(metrics, "get_emitter", lambda: recorder)
    return recorder.points


def test_send_is_one_call_from_task_code_and_counts_growth(tmp_path, emitted):
    hook = DeadLetterQueueHook("local", str(tmp_path / "dlq"), tenant="acme", pipeline="orders")
    keys = hook.send([{"id": 1}, {"id": 2}], error=ValueError("schema"))
    assert len(set(keys)) == 2
    assert hook.send({"id": 3}, error="no customer", idempotency_key="order-3") == ["order-3"]
    with pytest.raises(ValueError, match="one idempotency_key for several"):
        hook.send([{"id": 4}, {"id": 5}], error="x", idempotency_key="same")
    assert sorted(ltr.payload["id"] for ltr in hook.scan()) == [1, 2, 3]
    growth = [(v, t["error_class"]) for n, _, v, t in emitted if n == "barecount.dlq.entries"]
    assert growth == [(2.0, "ValueError"), (1.0, "error")]
    assert all(t["tenant"] == "acme" and t["pipeline"] == "orders" and t["backend"] == "local"
               for n, _, _, t in emitted)


def test_send_inside_a_task_takes_tenant_pipeline_and_source_from_the_task(tmp_path, emitted):
    dag = SimpleNamespace(dag_id="orders_dag", params={}, default_args={}, tags=["tenant:acme", "pipeline:orders"])
    task = SimpleNamespace(dag=dag, params={}, task_id="load")
    ti = SimpleNamespace(task=task, dag_id="orders_dag", run_id="manual__1", task_id="load", try_number=2, map_index=-1)
    hook = DeadLetterQueueHook("local", str(tmp_path / "dlq"))
    hook.send([{"id": 1}], error=RuntimeError("boom"), context={"ti": ti})
    (letter,) = list(hook.scan())
    assert (letter.tenant, letter.pipeline, letter.attempts) == ("acme", "orders", 2)
    assert letter.source["dag_id"] == "orders_dag" and letter.source["task_id"] == "load"
    assert letter.source["run_id"] == "manual__1" and letter.source["try_number"] == 2


def test_a_runner_failed_event_goes_to_the_queue_with_one_key_across_retries(tmp_path, emitted):
    from barecount_provider.operators.base import RunnerResult

    dag = SimpleNamespace(dag_id="d", params={}, default_args={}, tags=[])
    result = RunnerResult(runner_class="serverless", size="m", tenant="acme", pipeline="orders", network_profile="public")
    result.fail("Unhandled", "division by zero")
    event = {"request": {"order": 1}, "response": '{"errorMessage": "division by zero"}'}
    hook = DeadLetterQueueHook("local", str(tmp_path / "dlq"))
    keys = []
    for try_number in (1, 2):
        ti = SimpleNamespace(task=SimpleNamespace(dag=dag, params={}), dag_id="d", run_id="r", task_id="invoke",
                             try_number=try_number, map_index=-1)
        keys.append(hook.send_runner_failure({"ti": ti}, result, event))
    assert keys[0] == keys[1] and keys[0]
    letters = list(hook.scan())
    assert [ltr.attempts for ltr in letters] == [1, 2]
    assert letters[0].error_class == "Unhandled" and letters[0].source["kind"] == "runner:serverless"
    assert letters[0].payload == event and letters[0].pipeline == "orders"


def test_a_runner_failed_event_is_kept_locally_when_the_queue_refuses(tmp_path, emitted, monkeypatch):
    from barecount_provider.recovery.sqs import SqsBackend
    from barecount_provider.telemetry.metrics import EMIT_FAILURES

    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(tmp_path / "evidence"))
    from barecount_provider import config

    config.cache_clear()
    hook = DeadLetterQueueHook("sqs", "http://127.0.0.1:9/000000000000/dlq")

    class Refusing(SqsBackend):
        def put(self, letters):
            raise ConnectionError("SQS is down")

    hook.__dict__["backend"] = Refusing(None, "http://127.0.0.1:9/000000000000/dlq")
    ti = SimpleNamespace(task=None, dag_id="d", run_id="r", task_id="t", try_number=1, map_index=-1)
    before = EMIT_FAILURES.counts[("dlq", "send")]
    key = hook.send_runner_failure({"ti": ti}, {"error": {"error_class": "E", "message": "m"}}, {"x": 1})
    assert key is not None
    assert EMIT_FAILURES.counts[("dlq", "send")] == before + 1
    kept = list(DeadLetterQueueHook("local", os.path.join(str(tmp_path / "evidence"), "dlq")).scan())
    assert [ltr.idempotency_key for ltr in kept] == [key]


def test_depth_and_oldest_age_metrics_are_tagged_tenant_and_pipeline(tmp_path, emitted):
    hook = DeadLetterQueueHook("local", str(tmp_path / "dlq"), tenant="acme", pipeline="orders")
    hook.send([{"id": i} for i in range(3)], error="x")
    emitted.clear()
    hook.emit_metrics()
    names = {(n, t["tenant"], t["pipeline"]): v for n, _, v, t in emitted}
    assert names[("barecount.dlq.depth", "acme", "orders")] == 3.0
    assert 0 <= names[("barecount.dlq.oldest_age", "acme", "orders")] < 60


def test_the_backend_follows_the_location():
    assert backend_kind(None) == "local" and backend_kind("/var/dlq") == "local"
    assert backend_kind("s3://bucket/dlq") == "s3"
    assert backend_kind("https://sqs.us-east-1.amazonaws.com/1/dlq") == "sqs"
    with pytest.raises(ValueError, match="queue URL"):
        DeadLetterQueueHook("sqs")


def test_a_hook_given_no_queue_uses_the_configured_dlq_location_and_its_connection(tmp_path, monkeypatch):
    """``[barecount] dlq_location`` is the deployment's queue: task code (``DeadLetterQueueHook().send``), the
    ReplayOperator and ``barecount dlq`` given no queue use it, not the local queue of the machine they run on
    (on Celery, each worker's own disk: the replay on one worker found none of what a task had sent on another)."""
    from barecount_provider import config

    shared = tmp_path / "shared-dlq"
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(tmp_path / "evidence"))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__DLQ_LOCATION", str(shared))
    config.cache_clear()
    DeadLetterQueueHook(tenant="acme", pipeline="orders", emit_metrics=False).send([{"id": 1}], error="x")
    assert [letter.payload for letter in DeadLetterQueueHook("local", str(shared)).scan()] == [{"id": 1}]
    assert not (tmp_path / "evidence" / "dlq").exists()

    monkeypatch.setenv("AIRFLOW__BARECOUNT__DLQ_LOCATION", "s3://acme-dlq/orders")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__DLQ_AWS_CONN_ID", "aws_dlq")
    config.cache_clear()
    hook = DeadLetterQueueHook()
    assert (hook.backend_kind, hook.location, hook.aws_conn_id) == ("s3", "s3://acme-dlq/orders", "aws_dlq")
    # a queue or a connection given by the caller wins
    assert DeadLetterQueueHook(aws_conn_id="aws_other").aws_conn_id == "aws_other"
    assert DeadLetterQueueHook("local").location is None
    assert DeadLetterQueueHook(location=str(shared)).location == str(shared)
