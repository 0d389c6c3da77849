"""Replays in forked processes: killed at random points nothing is lost and each record is applied once; two
replays of one queue at once split it."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import time
from types import SimpleNamespace
from typing import Any

import pytest

from barecount_provider.recovery.ledger import ReplayLedger
from barecount_provider.recovery.letters import Scope
from barecount_provider.recovery.replay import (
    CallableTarget,
    Replayer,
)

from ..unit.test_replay import fill, local_queue

pytestmark = pytest.mark.integration


class IdempotentTarget:
    """A target in its own SQLite file that applies each key once and counts every delivery."""

    def __init__(self, path: str, delay_s: float = 0.0) -> None:
        self.path, self.delay_s = path, delay_s
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=OFF")
            self._db.execute("CREATE TABLE IF NOT EXISTS applied (key TEXT PRIMARY KEY, payload TEXT, deliveries INTEGER)")
        return self._db

    def __call__(self, payload: Any, key: str) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        self.db.execute(
            "INSERT INTO applied VALUES (?, ?, 1) ON CONFLICT(key) DO UPDATE SET deliveries = deliveries + 1",
            (key, json.dumps(payload)),
        )

    def deliveries(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT key, deliveries FROM applied").fetchall())


def replay_in_child(dlq_dir: str, ledger_url: str, target_path: str, batch_size: int, result_path: str | None = None,
                    delay_s: float = 0.0, scope_id: str = "kill-test", go_path: str | None = None) -> int:
    """Fork a process that replays the queue (its own ledger engine and target connection); its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        ledger = ReplayLedger(ledger_url)
        while go_path and not os.path.exists(go_path):  # start together
            time.sleep(0.001)
        replayer = Replayer(
            local_queue(dlq_dir), CallableTarget(IdempotentTarget(target_path, delay_s), name="idempotent"), ledger,
            scope_id=scope_id, batch_size=batch_size, progress_interval_s=3600,
        )
        outcome = replayer.run()
        if result_path:
            with open(result_path, "w") as file:
                json.dump(outcome.as_dict(), file)
        code = 0 if outcome.status == "complete" and not outcome.failed else 3
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 4
    finally:
        os._exit(code)


def check_round(target: IdempotentTarget, ledger: ReplayLedger, keys: list[str], kills: int, batch: int, dlq_dir: str,
                scope_id: str = "kill-test") -> int:
    deliveries = target.deliveries()
    assert sorted(deliveries) == sorted(keys), "a record was lost (or an unknown one applied)"
    rows = {row["key"]: row for row in ledger.rows(scope_id)}
    assert all(rows[k]["state"] == "delivered" for k in keys)
    repeated = {k: n - 1 for k, n in deliveries.items() if n > 1}
    for key, extra in repeated.items():  # repeats only for records taken over from a crashed run, counted
        assert rows[key]["redeliveries"] >= extra, (key, extra, rows[key])
    redelivered = sum(row["redeliveries"] for row in rows.values())
    assert redelivered <= kills * batch, (redelivered, kills, batch)  # at most one batch per crash
    assert sum(repeated.values()) <= redelivered
    assert list(local_queue(dlq_dir).scan(Scope())) == []  # delivered letters left the queue
    return sum(repeated.values())


def kill_test(tmp_path, ledger_url_for_round, *, kills_wanted: int, n: int = 120, batch: int = 8,
              kills_per_round: int = 10, seed: int | None = None):
    """SIGKILL the replay at random points, re-run each time; check every round's invariants.

    A round fills a fresh queue, then starts the replay again and again, each time killing it after a
    random time within how long an uninterrupted replay takes (measured first), until ``kills_per_round``
    kills; then lets it finish and checks the round."""
    seed = seed if seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    kills = rounds = repeated_total = 0
    full = None
    while kills < kills_wanted:
        rounds += 1
        base = tmp_path / f"round{rounds}"
        base.mkdir()
        dlq_dir, target_path = str(base / "dlq"), str(base / "target.db")
        keys = fill(local_queue(dlq_dir), n)
        ledger_url = ledger_url_for_round(base, rounds)
        round_kills = 0
        while True:
            started = time.monotonic()
            pid = replay_in_child(dlq_dir, ledger_url, target_path, batch)
            status = None
            if full is not None and round_kills < kills_per_round:
                deadline = started + rng.uniform(0, full)
                while time.monotonic() < deadline:
                    done_pid, done_status = os.waitpid(pid, os.WNOHANG)
                    if done_pid:
                        status = done_status
                        break
                    time.sleep(0.0005)
                if status is None:
                    os.kill(pid, signal.SIGKILL)
                    status = os.waitpid(pid, 0)[1]
                    if os.WIFSIGNALED(status):
                        kills += 1
                        round_kills += 1
                        continue
            if status is None:
                status = os.waitpid(pid, 0)[1]
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"replay failed (seed {seed})"
            if full is None:  # the first round's uninterrupted run measures the kill window
                full = time.monotonic() - started
            break
        ledger = ReplayLedger(ledger_url)
        try:
            repeated_total += check_round(IdempotentTarget(target_path), ledger, keys, round_kills, batch, dlq_dir)
        finally:
            ledger.dispose()
    return SimpleNamespace(kills=kills, rounds=rounds, repeated=repeated_total, seed=seed)


def test_kill_the_replay_at_100_random_points_nothing_lost_applied_once_repeats_bounded(tmp_path):
    result = kill_test(tmp_path, lambda base, _round: f"sqlite:///{base}/ledger.db", kills_wanted=100)
    print(f"kill test: {result.kills} kills over {result.rounds} rounds, {result.repeated} repeated deliveries (seed {result.seed})")
    assert result.kills >= 100


def two_replays_at_once(tmp_path, ledger_url: str, n: int = 300, batch: int = 10) -> tuple[dict[str, Any], dict[str, Any]]:
    dlq_dir, target_path = str(tmp_path / "dlq"), str(tmp_path / "target.db")
    keys = fill(local_queue(dlq_dir, segment_bytes=1 << 20), n)
    results = [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    go = str(tmp_path / "go")
    pids = [replay_in_child(dlq_dir, ledger_url, target_path, batch, result, delay_s=0.001, scope_id="twice", go_path=go)
            for result in results]
    time.sleep(0.3)
    open(go, "w").close()
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    first, second = (json.load(open(path)) for path in results)
    deliveries = IdempotentTarget(target_path).deliveries()
    assert sorted(deliveries) == sorted(keys) and set(deliveries.values()) == {1}  # every record applied once
    assert first["delivered"] + second["delivered"] == n  # split, never both
    for one in (first, second):  # each skipped what the other held or delivered
        assert one["skipped_delivered"] + one["skipped_busy"] + one["delivered"] == one["scanned"]
    assert first["skipped_delivered"] + first["skipped_busy"] + second["skipped_delivered"] + second["skipped_busy"] >= min(
        first["delivered"], second["delivered"]
    )
    third = Replayer(local_queue(dlq_dir), CallableTarget(IdempotentTarget(target_path)), ReplayLedger(ledger_url),
                     scope_id="twice").run()
    assert third.delivered == 0
    return first, second


def test_two_replays_of_one_queue_at_once_apply_every_record_once(tmp_path):
    first, second = two_replays_at_once(tmp_path, f"sqlite:///{tmp_path}/ledger.db")
    assert first["delivered"] > 0 and second["delivered"] > 0
