"""The replay ledger on a real PostgreSQL server (127.0.0.1): the kill test, two replays at once, the claims."""

from __future__ import annotations

import pytest

from barecount_provider.recovery.ledger import ReplayLedger
from tests import pg_server
from tests.integration.test_replay import kill_test, two_replays_at_once

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not pg_server.available(), reason="PostgreSQL (initdb, pg_ctl) is not installed"),
]


def test_kill_the_replay_at_random_points_with_the_ledger_on_postgresql(tmp_path, postgres):
    result = kill_test(
        tmp_path, lambda _base, _round: postgres.create_database("ledger"), kills_wanted=30, kills_per_round=10
    )
    assert result.kills >= 30


def test_two_replays_at_once_with_the_ledger_on_postgresql(tmp_path, postgres):
    two_replays_at_once(tmp_path, postgres.create_database("ledger"))


def test_claims_are_conditional_on_postgresql(postgres):
    ledger = ReplayLedger(postgres.create_database("ledger"))
    first = ledger.start_run("s")
    second = ledger.start_run("s")
    claim = ledger.claim("s", first, ["a", "b"], lease_seconds=60)
    assert claim.ours == {"a", "b"}
    other = ledger.claim("s", second, ["a", "b", "c"], lease_seconds=60)
    assert other.ours == {"c"} and other.busy == {"a": first, "b": first}
    assert ledger.mark_delivered("s", first, ["a"]) == 1
    ledger.heartbeat(first, {}, state="failed")  # the first run died with b in flight
    dead = ledger.dead_owners("s", 60)
    assert dead == {first}
    taken = ledger.claim("s", second, ["a", "b"], lease_seconds=60, dead=dead)
    assert taken.ours == {"b"} and taken.redelivered == {"b"} and taken.delivered == {"a"}
    assert ledger.mark_delivered("s", first, ["b"]) == 0  # the dead run's late write changes nothing
    ledger.dispose()
