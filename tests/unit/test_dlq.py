"""Dead-letter queues: the local segment backend, the hook's one-call send, failed runner events, metrics."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import Any

import pytest

from barecount_provider.hooks.dlq import DeadLetterQueueHook, backend_kind
from barecount_provider.recovery.letters import DeadLetter, Scope, derive_key, make_letter
from barecount_provider.recovery.segments import CURRENT, LocalSegments, SegmentBackend


def _letters(n: int, *, pipeline: str = "orders", error: Any = None, start: int = 0) -> list[DeadLetter]:
    return [
        make_letter({"n": i}, tenant="acme", pipeline=pipeline, error=error or ValueError(f"bad {i}"))
        for i in range(start, start + n)
    ]


def _queue(tmp_path, segment_bytes: int = 1 << 20) -> SegmentBackend:
    return SegmentBackend(LocalSegments(str(tmp_path / "dlq"), segment_bytes=segment_bytes, durable=False), "local")


def test_a_letter_carries_payload_error_source_attempts_key_and_timestamps(tmp_path):
    queue = _queue(tmp_path)
    sent = make_letter(
        {"order": 7},
        tenant="acme",
        pipeline="orders",
        error=KeyError("customer"),
        source={"dag_id": "d", "task_id": "t", "run_id": "r", "try_number": 3},
        attempts=3,
    )
    queue.put([sent])
    (got,) = list(queue.scan(Scope()))
    assert got.payload == {"order": 7}
    assert (got.error_class, got.error_message) == ("KeyError", "'customer'")
    assert got.source == {"dag_id": "d", "task_id": "t", "run_id": "r", "try_number": 3}
    assert got.attempts == 3 and got.idempotency_key == derive_key("acme", "orders", {"order": 7})
    assert got.first_failed_at and got.last_failed_at and got.enqueued_at.endswith("+00:00")
    assert got.letter_id == sent.letter_id


def test_the_same_record_gets_the_same_key_and_another_record_another():
    assert derive_key("acme", "orders", {"a": 1, "b": 2}) == derive_key("acme", "orders", {"b": 2, "a": 1})
    assert derive_key("acme", "orders", {"a": 1}) != derive_key("acme", "orders", {"a": 2})
    assert derive_key("acme", "orders", {"a": 1}) != derive_key("acme", "payments", {"a": 1})


def test_segments_rotate_atomically_and_a_scan_seals_the_current_one(tmp_path):
    queue = _queue(tmp_path, segment_bytes=2000)
    for start in range(0, 50, 5):
        queue.put(_letters(5, start=start))
    directory = tmp_path / "dlq" / "acme" / "orders"
    sealed = sorted(p.name for p in directory.iterdir() if p.name.startswith("seg-"))
    assert len(sealed) >= 3
    assert [json.loads(line)["payload"]["n"] for line in (directory / sealed[0]).read_text().splitlines()][:5] == [0, 1, 2, 3, 4]
    got = [letter.payload["n"] for letter in queue.scan(Scope())]
    queue.finish(None)
    assert got == list(range(50))  # oldest segment first, nothing twice
    assert not (directory / CURRENT).exists()


def test_a_torn_tail_left_by_a_killed_writer_is_closed_and_never_parsed(tmp_path):
    queue = _queue(tmp_path)
    queue.put(_letters(2))
    current = tmp_path / "dlq" / "acme" / "orders" / CURRENT
    with open(current, "ab") as file:
        file.write(b'{"v":1,"idempotency_key":"torn","pay')  # killed mid-write
    queue.put(_letters(1, start=2))
    got = [letter.payload["n"] for letter in queue.scan(Scope())]
    assert got == [0, 1, 2]
    assert queue.unreadable == 1


def test_scope_filters_pipeline_error_class_and_time_window(tmp_path):
    queue = _queue(tmp_path)
    queue.put(_letters(3, pipeline="orders", error=ValueError("v")))
    queue.put(_letters(2, pipeline="payments", error=TimeoutError("t")))
    assert len(list(queue.scan(Scope.of(pipeline="payments")))) == 2
    assert len(list(queue.scan(Scope.of(error_classes="ValueError")))) == 3
    letters = list(queue.scan(Scope()))
    middle = sorted(letter.enqueued_at for letter in letters)[2]
    assert len(list(queue.scan(Scope.of(since=middle)))) == 3
    assert len(list(queue.scan(Scope.of(until=middle)))) == 2


def test_settled_segments_go_and_partial_ones_keep_every_undelivered_line(tmp_path):
    queue = _queue(tmp_path, segment_bytes=600)
    for start in range(0, 20, 2):
        queue.put(_letters(2, start=start))
    letters = list(queue.scan(Scope()))
    delivered = {ltr.idempotency_key for ltr in letters if ltr.payload["n"] % 3 == 0 or ltr.payload["n"] < 8}
    queue.settle([ltr for ltr in letters if ltr.idempotency_key in delivered])
    removed = queue.finish(lambda keys: {k for k in keys if k in delivered})
    assert removed == len(delivered)
    left = sorted(ltr.payload["n"] for ltr in queue.scan(Scope()))
    assert left == sorted(ltr.payload["n"] for ltr in letters if ltr.idempotency_key not in delivered)


def test_stats_give_depth_and_oldest_per_tenant_and_pipeline(tmp_path):
    queue = _queue(tmp_path)
    queue.put(_letters(4, pipeline="orders"))
    queue.put(_letters(1, pipeline="payments"))
    stats = {s.pipeline: s for s in queue.stats(Scope())}
    assert stats["orders"].depth == 4 and stats["payments"].depth == 1
    assert stats["orders"].oldest_enqueued_at <= stats["payments"].oldest_enqueued_at
    assert 0 <= stats["orders"].oldest_age_s() < 60


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
