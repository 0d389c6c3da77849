"""The dead-letter queue's local segment backend (recovery/segments.py): segments rotate atomically, a torn tail
is closed, scopes filter, settled segments go, and the stats give depth and oldest age."""

from __future__ import annotations

import json
from typing import Any

from barecount_provider.recovery.letters import DeadLetter, Scope, make_letter
from barecount_provider.recovery.segments import CURRENT, LocalSegments, SegmentBackend


def _letters(n: int, *, pipeline: str = "orders", error: Any = None, start: int = 0) -> list[DeadLetter]:
    return [
        make_letter({"n": i}, tenant="acme", pipeline=pipeline, error=error or ValueError(f"bad {i}"))
        for i in range(start, start + n)
    ]


def _queue(tmp_path, segment_bytes: int = 1 << 20) -> SegmentBackend:
    return SegmentBackend(LocalSegments(str(tmp_path / "dlq"), segment_bytes=segment_bytes, durable=False), "local")


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
