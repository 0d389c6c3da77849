"""The replay ledger: what a replay delivered, in the evidence index's database, with atomic conditional writes.

Two tables of their own, next to the evidence index (``[barecount] evidence_index_url``: SQLite by default,
PostgreSQL in production), in SQLAlchemy Core so both run the same statements:

* ``barecount_replay_ledger``: one row per (replay scope id, idempotency key), ``in_flight`` -> ``delivered``
  (or ``failed``, claimed again by the next run). ``owner`` is the replay run that holds the row;
  ``lease_until`` bounds how long an ``in_flight`` row stays its own; ``redeliveries`` counts the times the
  row was taken over from a run that died holding it (a possible second delivery).
* ``barecount_replay_runs``: one row per replay run (host, pid, heartbeat, state, summary), read by
  ``barecount replay status`` and by the liveness check below.

A batch is **claimed** in one transaction of conditional writes (each row changes atomically, so two
replays of one scope split the work and never both hold a row):

1. ``INSERT .. ON CONFLICT DO NOTHING RETURNING key``: keys no run has seen are now this run's;
2. ``UPDATE .. SET owner = me WHERE state = 'in_flight' AND (lease expired OR owner is dead) RETURNING key``:
   the batch a dead run held in flight (at most one batch per dead run) is taken over and counted;
3. ``UPDATE .. SET state = 'in_flight', owner = me WHERE state = 'failed' AND owner <> me RETURNING key``:
   records an earlier run failed to deliver are tried again;
4. the rest are delivered already (skipped) or held by a live run (left to it).

After the target took the batch, ``UPDATE .. SET state = 'delivered' WHERE owner = me AND state =
'in_flight'`` records it. A crash between claim and that update leaves the batch in flight: the next run
delivers it again (the idempotency key lets the target apply it once). An owner is dead when its run row
says it ended, its heartbeat is older than the lease, or it ran on this host and its pid is gone.

On SQLite every transaction starts with ``BEGIN IMMEDIATE`` (writers queue on the busy timeout instead of
failing to upgrade a read lock).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from barecount_provider import db
from barecount_provider.db.schema import MAX_REPLAY_KEY as MAX_KEY
from barecount_provider.db.schema import replay_ledger_table as ledger_table
from barecount_provider.db.schema import replay_runs_table as runs_table

IN_FLIGHT, DELIVERED, FAILED = "in_flight", "delivered", "failed"
RUNNING, FINISHED, STOPPED, ABORTED = "running", "finished", "stopped", "failed"

HOST = socket.gethostname()


def ledger_key(key: str) -> str:
    """The key as stored: itself, or its hash when longer than the column."""
    if len(key) <= MAX_KEY:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


INTERRUPTED, STALE = "interrupted", "stale"
DEFAULT_LEASE_SECONDS = 300.0  # `barecount replay run`'s and the Replayer's default lease


def run_liveness(row: Any, lease_seconds: float = DEFAULT_LEASE_SECONDS, now: float | None = None) -> str:
    """What a run row's state means now. A row that says ``running`` is:

    * ``interrupted`` when it ran on this host and its process is gone (killed with SIGKILL, a crash, a
      reboot): it will never end its row itself; a new run of the same replay resumes it;
    * ``stale`` when it ran on another host (whose processes this one cannot see) and its heartbeat is older
      than the lease: most likely gone too, but not known;
    * ``running`` otherwise. A row in any other state is returned as it is."""
    state = str(_field(row, "state"))
    if state != RUNNING:
        return state
    if _field(row, "host") == HOST:
        return RUNNING if pid_alive(int(_field(row, "pid"))) else INTERRUPTED
    now = time.time() if now is None else now
    return STALE if float(_field(row, "updated_at")) < now - lease_seconds else RUNNING


def _field(row: Any, name: str) -> Any:
    return row[name] if isinstance(row, dict) else getattr(row, name)


@dataclass
class Claim:
    """The outcome of claiming one batch of keys (stored form, see :func:`ledger_key`)."""

    ours: set[str] = field(default_factory=set)  # to deliver now
    redelivered: set[str] = field(default_factory=set)  # of ours: taken over from a dead run's batch in flight
    retried: set[str] = field(default_factory=set)  # of ours: failed in an earlier run
    delivered: set[str] = field(default_factory=set)  # delivered before: skip
    busy: dict[str, str] = field(default_factory=dict)  # held by another run (key -> owner)
    failed_here: set[str] = field(default_factory=set)  # this run failed them already: not again


class ReplayLedger:
    """The ledger and run tables at ``url`` (an SQLAlchemy URL: the evidence index's by default)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = db.create_engine(url, immediate=True, busy_timeout_s=60)
        self.dialect = self.engine.dialect.name
        db.ensure_schema(self.engine)
        keys: Any = sa.bindparam("keys", expanding=True)
        c = ledger_table.c
        insert = (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(ledger_table)
        self._insert = insert.on_conflict_do_nothing(index_elements=["scope_id", "key"]).returning(c.key)
        self._take_over = (
            sa.update(ledger_table)
            .where(
                c.scope_id == sa.bindparam("scope"),
                c.key.in_(keys),
                c.state == IN_FLIGHT,
                c.owner != sa.bindparam("me"),
                sa.or_(c.lease_until < sa.bindparam("now"), c.owner.in_(sa.bindparam("dead", expanding=True))),
            )
            .values(
                owner=sa.bindparam("me"),
                lease_until=sa.bindparam("lease"),
                claims=c.claims + 1,
                redeliveries=c.redeliveries + 1,
                updated_at=sa.bindparam("now"),
            )
            .returning(c.key)
        )
        self._retry = (
            sa.update(ledger_table)
            .where(c.scope_id == sa.bindparam("scope"), c.key.in_(keys), c.state == FAILED, c.owner != sa.bindparam("me"))
            .values(
                state=IN_FLIGHT,
                owner=sa.bindparam("me"),
                lease_until=sa.bindparam("lease"),
                claims=c.claims + 1,
                updated_at=sa.bindparam("now"),
                error=None,
            )
            .returning(c.key)
        )
        self._classify = sa.select(c.key, c.state, c.owner).where(c.scope_id == sa.bindparam("scope"), c.key.in_(keys))
        self._delivered = (
            sa.update(ledger_table)
            .where(c.scope_id == sa.bindparam("scope"), c.key.in_(keys), c.owner == sa.bindparam("me"), c.state == IN_FLIGHT)
            .values(state=DELIVERED, delivered_at=sa.bindparam("now"), updated_at=sa.bindparam("now"))
        )
        self._failed = (
            sa.update(ledger_table)
            .where(
                c.scope_id == sa.bindparam("scope"),
                c.key == sa.bindparam("k"),
                c.owner == sa.bindparam("me"),
                c.state == IN_FLIGHT,
            )
            .values(state=FAILED, error=sa.bindparam("err"), updated_at=sa.bindparam("now"))
        )
        self._which_delivered = sa.select(c.key).where(
            c.scope_id == sa.bindparam("scope"), c.key.in_(keys), c.state == DELIVERED
        )

    def dispose(self) -> None:
        self.engine.dispose()

    # runs ----------------------------------------------------------------------------------------------

    def start_run(self, scope_id: str, *, dry_run: bool = False, summary: dict[str, Any] | None = None) -> str:
        run_id = uuid.uuid4().hex
        now = time.time()
        with self.engine.begin() as connection:
            connection.execute(
                sa.insert(runs_table).values(
                    run_id=run_id,
                    scope_id=scope_id,
                    host=HOST,
                    pid=os.getpid(),
                    state=RUNNING,
                    dry_run=dry_run,
                    started_at=now,
                    updated_at=now,
                    summary=json.dumps(summary or {}, default=str),
                )
            )
        return run_id

    def heartbeat(self, run_id: str, summary: dict[str, Any], state: str = RUNNING) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                sa.update(runs_table)
                .where(runs_table.c.run_id == run_id)
                .values(state=state, updated_at=time.time(), summary=json.dumps(summary, default=str))
            )

    def runs(
        self, scope_id: str | None = None, limit: int = 20, lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> list[dict[str, Any]]:
        """The latest runs, newest first. ``state`` is what the run is now (:func:`run_liveness`: a run
        recorded as running whose process is gone is ``interrupted``), ``recorded_state`` what its row says,
        ``resumable`` whether a new run of the replay would take over its work."""
        query = sa.select(runs_table).order_by(runs_table.c.started_at.desc()).limit(limit)
        if scope_id is not None:
            query = query.where(runs_table.c.scope_id == scope_id)
        with self.engine.connect() as connection:
            rows = [dict(row._mapping) for row in connection.execute(query)]
        now = time.time()
        for row in rows:
            row["summary"] = json.loads(row["summary"] or "{}")
            row["recorded_state"] = row["state"]
            row["state"] = run_liveness(row, lease_seconds, now)
            row["resumable"] = row["state"] in (INTERRUPTED, STALE, ABORTED)
        return rows

    def dead_owners(self, scope_id: str, lease_seconds: float, owners: Iterable[str] | None = None) -> set[str]:
        """Owners of in-flight rows (or of ``owners``) that no longer run (see the module docstring)."""
        with self.engine.connect() as connection:
            if owners is None:
                owners = [
                    str(row[0])
                    for row in connection.execute(
                        sa.select(ledger_table.c.owner)
                        .where(ledger_table.c.scope_id == scope_id, ledger_table.c.state == IN_FLIGHT)
                        .distinct()
                    )
                ]
            owners = sorted(set(owners))
            if not owners:
                return set()
            found = {
                row.run_id: row
                for row in connection.execute(sa.select(runs_table).where(runs_table.c.run_id.in_(owners)))
            }
        now, dead = time.time(), set()
        for owner in owners:
            row = found.get(owner)
            if row is None or row.state != RUNNING or row.updated_at < now - lease_seconds or run_liveness(row) != RUNNING:
                dead.add(owner)
        return dead

    # claims --------------------------------------------------------------------------------------------

    def claim(
        self, scope_id: str, owner: str, keys: Sequence[str], *, lease_seconds: float, dead: Iterable[str] = ()
    ) -> Claim:
        """Claim ``keys`` (stored form) for ``owner`` in one transaction (see the module docstring)."""
        unique = sorted(set(keys))  # one order for every run: no lock-order deadlocks on PostgreSQL
        result = Claim()
        if not unique:
            return result
        now = time.time()
        lease = now + lease_seconds
        for attempt in range(5):
            try:
                with self.engine.begin() as connection:
                    rows = [
                        {
                            "scope_id": scope_id,
                            "key": key,
                            "state": IN_FLIGHT,
                            "owner": owner,
                            "lease_until": lease,
                            "claims": 1,
                            "redeliveries": 0,
                            "updated_at": now,
                        }
                        for key in unique
                    ]
                    inserted = {str(row[0]) for row in connection.execute(self._insert, rows)}
                    rest = [key for key in unique if key not in inserted]
                    taken: set[str] = set()
                    retried: set[str] = set()
                    classified: list[Any] = []
                    if rest:
                        params = {"scope": scope_id, "keys": rest, "me": owner, "now": now, "lease": lease}
                        taken = {str(r[0]) for r in connection.execute(self._take_over, {**params, "dead": sorted(dead) or [""]})}
                        rest = [key for key in rest if key not in taken]
                    if rest:
                        retried = {str(r[0]) for r in connection.execute(self._retry, {**params, "keys": rest})}
                        rest = [key for key in rest if key not in retried]
                    if rest:
                        classified = list(connection.execute(self._classify, {"scope": scope_id, "keys": rest}))
                break
            except sa.exc.OperationalError:  # a deadlock or serialisation failure (PostgreSQL), a busy SQLite
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
        result.ours = inserted | taken | retried
        result.redelivered, result.retried = taken, retried
        for key, state, row_owner in classified:
            if state == DELIVERED:
                result.delivered.add(key)
            elif state == FAILED:
                result.failed_here.add(key)
            else:
                result.busy[key] = row_owner
        return result

    def mark_delivered(self, scope_id: str, owner: str, keys: Sequence[str]) -> int:
        """Record ``keys`` delivered; returns how many were still this owner's (the rest were taken over)."""
        if not keys:
            return 0
        with self.engine.begin() as connection:
            result = connection.execute(self._delivered, {"scope": scope_id, "keys": sorted(keys), "me": owner, "now": time.time()})
        return int(result.rowcount)

    def release(self, scope_id: str, owner: str, keys: Sequence[str]) -> None:
        """Give back claimed keys that were not delivered (a cap reached): rows this claim created go, rows
        taken over from a dead run become claimable at once."""
        if not keys:
            return
        c = ledger_table.c
        mine = sa.and_(c.scope_id == scope_id, c.key.in_(sorted(keys)), c.owner == owner, c.state == IN_FLIGHT)
        with self.engine.begin() as connection:
            connection.execute(sa.delete(ledger_table).where(mine, c.claims == 1))
            connection.execute(sa.update(ledger_table).where(mine).values(lease_until=0.0, updated_at=time.time()))

    def mark_failed(self, scope_id: str, owner: str, errors: dict[str, str]) -> None:
        if not errors:
            return
        now = time.time()
        with self.engine.begin() as connection:
            connection.execute(
                self._failed,
                [{"scope": scope_id, "k": key, "me": owner, "err": error[:2000], "now": now} for key, error in sorted(errors.items())],
            )

    def delivered_keys(self, scope_id: str, keys: Sequence[str]) -> set[str]:
        """Of ``keys`` (as given: hashed here when too long), those delivered in ``scope_id``."""
        stored = {ledger_key(key): key for key in keys}
        if not stored:
            return set()
        with self.engine.connect() as connection:
            rows = connection.execute(self._which_delivered, {"scope": scope_id, "keys": sorted(stored)})
            return {stored[str(row[0])] for row in rows}

    # reading -------------------------------------------------------------------------------------------

    def counts(self, scope_id: str) -> dict[str, int]:
        c = ledger_table.c
        query = sa.select(c.state, sa.func.count(), sa.func.sum(c.redeliveries)).where(c.scope_id == scope_id).group_by(c.state)
        counts = {IN_FLIGHT: 0, DELIVERED: 0, FAILED: 0, "redeliveries": 0}
        with self.engine.connect() as connection:
            for state, count, redeliveries in connection.execute(query):
                counts[str(state)] = int(count)
                counts["redeliveries"] += int(redeliveries or 0)
        return counts

    def scopes(self) -> list[str]:
        with self.engine.connect() as connection:
            return sorted(str(row[0]) for row in connection.execute(sa.select(runs_table.c.scope_id).distinct()))

    def rows(self, scope_id: str) -> list[dict[str, Any]]:
        """Every row of a scope (tests and small scopes)."""
        with self.engine.connect() as connection:
            query = sa.select(ledger_table).where(ledger_table.c.scope_id == scope_id)
            return [dict(row._mapping) for row in connection.execute(query)]


_LOCK = threading.Lock()


@functools.cache
def _cached(url: str, pid: int) -> ReplayLedger:
    return ReplayLedger(url)


def open_ledger(url: str | None = None) -> ReplayLedger:
    """The ledger at ``url``, or in the evidence index's database (``[barecount] evidence_index_url``)."""
    if url is None:
        from barecount_provider import config

        url = config.evidence_index_url()
    with _LOCK:
        return _cached(url, os.getpid())
