"""Dead letters (recovery/letters.py): what a letter carries, and its idempotency key."""

from __future__ import annotations

from barecount_provider.recovery.letters import Scope, derive_key, make_letter

from .test_segments import _queue


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
