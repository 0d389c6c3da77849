"""Assembling a DAG run's record, off the scheduling loop.

A DAG run can be marked finished before its last task's success listener has written its entry (the task's
success reaches Airflow first). The assembler therefore seals a run once **every try that had a task
process has its entry**, or once ``[barecount] evidence_grace_seconds`` have passed since the run ended; a
try whose entry never came is then listed in the record's ``absent`` and gets an entry built from Airflow's
own records, marked ``"source": "airflow"``. Tries that never had a task process (skipped by a trigger
rule, upstream failed, removed) always get such an entry: there is nobody else to write it.

Entries may come from several machines: they meet in the store (files of one machine for ``local``; S3 for
``s3``), never in the assembler's memory.

A run that cannot be sealed at once is also written to ``barecount_evidence_pending`` in the evidence index's
database (:func:`remember_pending`), and removed from it when sealed: a scheduler that stops, crashes or is
killed before the run is sealed leaves it there, and the next scheduler to start seals it
(:func:`barecount_provider.runtime.sealing.recover`).

A try whose own entry never came, or that Airflow ended itself, gets a ``reason`` (:func:`try_reason`) from
Airflow's audit log (its ``log`` table): ``heartbeat_timeout`` when the scheduler failed it because its
heartbeat stopped (a worker lost), ``killed_externally`` when the executor reported it ended while Airflow
still had it running, ``ended_without_entry`` when Airflow recorded its end without a reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from barecount_provider import context, redaction
from barecount_provider.evidence.facts import TryFacts
from barecount_provider.evidence.record import ExpectedTry, _iso, build_entry, build_record, this_host
from barecount_provider.evidence.store import EvidenceStore, hosts_table, pending_table

log = logging.getLogger(__name__)

NEVER_RAN_STATES = ("skipped", "upstream_failed", "removed")


@dataclass
class PendingRun:
    """A finished DAG run waiting for its entries."""

    dag_id: str
    run_id: str
    tenant: str
    pipeline: str
    state: str
    started_at: datetime | None
    ended_at: datetime
    run_type: str | None = None
    attempts: int = 0
    first_seen: datetime = field(default_factory=lambda: datetime.now(UTC))
    remembered: bool = False  # in the pending table (remember_pending): removed from it when sealed


def remember_pending(store: EvidenceStore, dag_id: str, run_id: str) -> None:
    """Keep a run waiting to be sealed in the store's index database (idempotent)."""
    engine = store.index.engine
    with engine.begin() as connection:
        exists = connection.execute(
            sa.select(pending_table.c.dag_id).where(pending_table.c.dag_id == dag_id, pending_table.c.run_id == run_id)
        ).first()
        if exists is None:
            try:
                connection.execute(sa.insert(pending_table).values(dag_id=dag_id, run_id=run_id, added_epoch=time.time()))
            except sa.exc.IntegrityError:  # another scheduler remembered it meanwhile
                pass


def forget_pending(store: EvidenceStore, dag_id: str, run_id: str) -> None:
    engine = store.index.engine
    with engine.begin() as connection:
        connection.execute(sa.delete(pending_table).where(pending_table.c.dag_id == dag_id, pending_table.c.run_id == run_id))


def stored_pending(store: EvidenceStore) -> list[tuple[str, str]]:
    """The runs a scheduler left waiting to be sealed (dag_id, run_id), oldest first."""
    engine = store.index.engine
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(pending_table.c.dag_id, pending_table.c.run_id).order_by(pending_table.c.added_epoch)
        ).all()
    return [(str(dag_id), str(run_id)) for dag_id, run_id in rows]


def expected_tries(rows: Iterable[Mapping[str, Any]]) -> list[ExpectedTry]:
    """The tries Airflow knows of, from task_instance / task_instance_history rows (scheduler side's form:
    task_id, map_index, try_number, state, queued_dttm, start_date, end_date, pid)."""
    tries: dict[tuple[str, int, int], ExpectedTry] = {}
    for row in rows:
        state = row.get("state")
        try_number = int(row.get("try_number") or 0)
        had_process = row.get("start_date") is not None and state not in NEVER_RAN_STATES
        if try_number == 0 and state not in NEVER_RAN_STATES:  # not queued yet: not a try
            continue
        key = (str(row["task_id"]), int(row.get("map_index", -1)), try_number)
        tries[key] = ExpectedTry(
            task_id=key[0],
            map_index=key[1],
            try_number=try_number,
            state=state,
            had_process=had_process,
            started_at=row.get("start_date"),
            ended_at=row.get("end_date"),
            queued_at=row.get("queued_dttm"),
            hostname=row.get("hostname") or None,  # Airflow keeps "" until a worker took the try
        )
    return [tries[key] for key in sorted(tries)]


# What Airflow 3.3 writes in its audit log (the ``log`` table, one row per event, keyed by the try) when it
# ends a try whose task process did not report its own end. Read at sealing (scheduler.load_try_events);
# a test checks Airflow's source still writes them.
HEARTBEAT_TIMEOUT_EVENT = "heartbeat timeout"
"""SchedulerJobRunner._purge_task_instances_without_heartbeats: no heartbeat for ``[scheduler]
task_instance_heartbeat_timeout`` seconds; its ``extra`` is Airflow's message naming the limit."""
STATE_MISMATCH_EVENT = "state mismatch"
"""SchedulerJobRunner.process_executor_events: the executor reported the try finished while Airflow still
had it queued or running (Airflow counts it as ``scheduler.tasks.killed_externally``); its ``extra`` is
Airflow's message with the executor's states."""
REASON_EVENTS = {HEARTBEAT_TIMEOUT_EVENT: "heartbeat_timeout", STATE_MISMATCH_EVENT: "killed_externally"}
"""Airflow audit log event -> reason code, in order of precedence: a heartbeat timeout makes the executor
report the try failed too, which Airflow then logs as a state mismatch."""
ENDED_WITHOUT_ENTRY = "ended_without_entry"
REASON_CODES = (*REASON_EVENTS.values(), ENDED_WITHOUT_ENTRY)
"""Every ``reason.code`` an entry can carry (docs/evidence.md, "Why a try ended without its entry")."""
REASON_DETAIL_MAX = 1000
FAILED_STATES = ("failed", "up_for_retry")


@dataclass(frozen=True)
class AirflowEvent:
    """One row of Airflow's audit log about a try: its ``event``, when (``dttm``) and its ``extra`` text."""

    event: str
    at: datetime | None = None
    extra: str | None = None


TryEvents = Mapping[tuple[str, int, int], Sequence[AirflowEvent]]
"""(task_id, map_index, try_number) -> Airflow's audit log events about that try."""


def _detail(text: str) -> str:
    """Airflow's text, redacted like every other field BareCount writes (an executor's message may quote a
    command line or an exception) and bounded."""
    redacted = str(redaction.redact_text(text))
    return redacted if len(redacted) <= REASON_DETAIL_MAX else redacted[: REASON_DETAIL_MAX - 1] + "…"


def try_reason(expected: ExpectedTry, events: Sequence[AirflowEvent], *, absent: bool) -> dict[str, Any] | None:
    """Why Airflow ended the try without its task process reporting it, from Airflow's audit log ``events``
    about the try: ``{"code", "detail", "airflow_event", "at"}`` (``code`` one of :data:`REASON_CODES`).

    * ``heartbeat_timeout``: the scheduler failed the try because its heartbeat stopped (the worker, or the
      process supervising the task, died or lost the API server);
    * ``killed_externally``: the executor reported the try ended while Airflow still had it queued or running;
    * ``ended_without_entry`` (only for an ``absent`` entry, when Airflow recorded neither): Airflow has the
      try's end as the process supervising it reported it, with no reason; its task process wrote no entry
      (killed by a signal while its supervisor lived on, out of memory, or its entry lost on the way).

    None for a try with its own entry and no such event."""
    for name, code in REASON_EVENTS.items():
        found = [event for event in events if event.event == name]
        if found:
            first = min(found, key=lambda event: _iso(event.at) or "")
            detail = _detail(first.extra) if first.extra else f"Airflow's audit log: {name}"
            return {"code": code, "detail": detail, "airflow_event": name, "at": _iso(first.at)}
    if not absent:
        return None
    detail = (
        f"Airflow recorded this try {expected.state or 'ended'} with no reason (no heartbeat timeout, no executor "
        "report): its task process ended without writing its entry, e.g. killed by a signal (kill -9, the "
        "out-of-memory killer) while the process supervising it lived on, or its entry was lost on the way; "
        "the try's log says which"
    )
    return {"code": ENDED_WITHOUT_ENTRY, "detail": detail, "airflow_event": None, "at": _iso(expected.ended_at)}


def may_have_reason(expected: ExpectedTry, has_entry: bool) -> bool:
    """Whether Airflow's audit log is worth reading for this try: it had a task process and either its entry
    is missing or Airflow ended it failed (a heartbeat timeout can fail a try whose orphaned task process
    later wrote its entry)."""
    return expected.had_process and (not has_entry or expected.state in FAILED_STATES)


def airflow_entry(run: PendingRun, expected: ExpectedTry, *, absent: bool) -> dict[str, Any]:
    """An entry built from Airflow's records for a try without a task-side entry."""
    facts = TryFacts(
        tenant=run.tenant,
        pipeline=run.pipeline,
        runner_class="local",
        size=context.DEFAULT_SIZE,
        network_profile=None,
        image_or_driver_digest=None,
        dag_id=run.dag_id,
        run_id=run.run_id,
        task_id=expected.task_id,
        try_number=expected.try_number,
        map_index=expected.map_index,
        correlation_id=context.correlation_id_for(run.dag_id, run.run_id),
        run_token=None,
        state=expected.state or "unknown",
        source="airflow",
        started_at=expected.started_at,
        ended_at=expected.ended_at,
        queued_at=expected.queued_at,
        host=expected.hostname,
    )
    entry = build_entry(facts)
    entry["absent"] = absent  # True: the try had a task process, but its own entry never arrived
    return entry


def with_queued_at(entry: dict[str, Any], expected: ExpectedTry) -> dict[str, Any]:
    """``entry`` with its ``timings.queued_at`` from Airflow's task instance records when it has none: Airflow
    3.3's task SDK does not tell a task process when its try was queued (no ``queued_dttm`` on the
    RuntimeTaskInstance nor in its run context), so an entry written by the task process or built by the
    forwarder gets it here, from the same record the ``barecount.task.queued_time`` metric is taken from."""
    timings = entry.get("timings")
    if expected.queued_at is None or not isinstance(timings, dict) or timings.get("queued_at") is not None:
        return entry
    return {**entry, "timings": {**timings, "queued_at": _iso(expected.queued_at)}}


def with_host(entry: dict[str, Any], expected: ExpectedTry) -> dict[str, Any]:
    """``entry`` with its ``host`` from Airflow's task instance record (its ``hostname``: the worker that ran
    the try) when it names none: an entry written before hosts were recorded, or a task process that could
    not name its machine."""
    if entry.get("host") or not expected.hostname:
        return entry
    return {**entry, "host": expected.hostname}


LOCAL_STORE_RULE = "evidence_store_one_host"
LOCAL_STORE_FIX = (
    "use the s3 store with a shared index ([barecount] evidence_store = s3, the same evidence_s3_bucket and "
    "evidence_index_url on every machine), and task_outputs = forwarder with barecount telemetry forward beside "
    "each worker (docs/evidence.md, Stores)"
)


def local_store_exception(
    store_kind: str, tenant: str, run_hosts: Iterable[str | None], scheduler_host: str | None
) -> dict[str, Any] | None:
    """The record's policy exception when the ``local`` store seals a run whose tries ran elsewhere: on more
    than one host, or on a host other than the scheduler's (``scheduler_host``). ``run_hosts``: the hosts
    the run's entries name and those Airflow's task instances name. The local store only sees the entries
    written on its own machine: the others' are stranded on their disks, and their tries are absent. None
    when the store is not ``local`` or every try ran here (or names no host)."""
    if store_kind != "local":
        return None
    hosts = sorted({str(host) for host in run_hosts if host})
    if not hosts or (len(hosts) == 1 and (scheduler_host is None or hosts[0] == scheduler_host)):
        return None
    return {
        "rule": LOCAL_STORE_RULE,
        "tenant": tenant,
        "limit": f"one host: the local store reads only the entries written on {scheduler_host or 'its own machine'}",
        "requested": hosts,
        "hosts": hosts,
        "scheduler_host": scheduler_host,
        "fix": LOCAL_STORE_FIX,
    }


_WARNED: dict[tuple[str, str], None] = {}  # runs already named in the log (once per run; the last 1000)


def _warn_hosts(store: EvidenceStore, run: PendingRun, exception: Mapping[str, Any]) -> None:
    """Say it once per run in the component log, and keep it for `barecount doctor`; never raises."""
    key = (run.dag_id, run.run_id)
    if key not in _WARNED:
        _WARNED[key] = None
        while len(_WARNED) > 1000:
            _WARNED.pop(next(iter(_WARNED)))
        log.warning(
            "BareCount's local evidence store sealed %s %s with tries from %s (this scheduler: %s): entries "
            "written on other machines never reach it and their tries are absent; fix: %s",
            run.dag_id, run.run_id, ", ".join(exception["hosts"]), exception["scheduler_host"], LOCAL_STORE_FIX,
        )  # fmt: skip
    try:
        engine = store.index.engine
        values = {"hosts": ",".join(exception["hosts"]), "scheduler_host": exception["scheduler_host"], "seen_epoch": time.time()}
        with engine.begin() as connection:
            done = connection.execute(
                sa.update(hosts_table).where(hosts_table.c.dag_id == run.dag_id, hosts_table.c.run_id == run.run_id).values(**values)
            ).rowcount
            if not done:
                connection.execute(sa.insert(hosts_table).values(dag_id=run.dag_id, run_id=run.run_id, **values))
    except Exception:
        log.debug("BareCount could not note the hosts of %s %s", run.dag_id, run.run_id, exc_info=True)


def runs_on_several_hosts(store: EvidenceStore) -> tuple[int, dict[str, Any] | None]:
    """How many runs the local store sealed with tries from other machines, and the latest of them
    (dag_id, run_id, hosts, scheduler_host) for `barecount doctor`."""
    engine = store.index.engine
    with engine.connect() as connection:
        count = int(connection.scalar(sa.select(sa.func.count()).select_from(hosts_table)) or 0)
        latest = connection.execute(sa.select(hosts_table).order_by(hosts_table.c.seen_epoch.desc()).limit(1)).first()
    return count, (dict(latest._mapping) if latest is not None else None)


def assemble(
    store: EvidenceStore,
    run: PendingRun,
    expected: list[ExpectedTry],
    *,
    now: datetime,
    grace: timedelta,
    trace_id: str | None = None,
    load_events: Callable[[], TryEvents] | None = None,
) -> dict[str, Any] | None:
    """The sealed, stored record; None while entries are missing and the grace period has not passed.
    ``load_events``: Airflow's audit log events about the run's tries (:data:`TryEvents`), asked only when
    the record is sealed and some try may have a reason (:func:`may_have_reason`)."""
    entries = {entry["key"]: entry for entry in store.entries_for_run(run.dag_id, run.run_id)}
    missing = [t for t in expected if t.had_process and t.key(run.dag_id, run.run_id) not in entries]
    if missing and now < run.ended_at + grace:
        return None
    wanted = any(may_have_reason(t, t.key(run.dag_id, run.run_id) in entries) for t in expected)
    events: TryEvents = load_events() if load_events is not None and wanted else {}
    for t in expected:
        key = t.key(run.dag_id, run.run_id)
        if key not in entries:
            entries[key] = airflow_entry(run, t, absent=t.had_process)
        else:
            entries[key] = with_host(with_queued_at(entries[key], t), t)
        absent = bool(entries[key].get("absent"))
        if may_have_reason(t, not absent):
            reason = try_reason(t, events.get((t.task_id, t.map_index, t.try_number), ()), absent=absent)
            if reason is not None:
                entries[key] = {**entries[key], "reason": reason}
    run_hosts = [entry.get("host") for entry in entries.values()] + [t.hostname for t in expected]
    exception = local_store_exception(store.kind, run.tenant, run_hosts, this_host())
    record = build_record(
        dag_id=run.dag_id,
        run_id=run.run_id,
        tenant=run.tenant,
        pipeline=run.pipeline,
        state=run.state,
        started_at=run.started_at,
        ended_at=run.ended_at,
        correlation_id=context.correlation_id_for(run.dag_id, run.run_id),
        entries=entries.values(),
        absent=[t.key(run.dag_id, run.run_id) for t in missing],
        run_type=run.run_type,
        trace_id=trace_id,
        exceptions=[exception] if exception is not None else [],
    )
    stored = store.append(record)
    if exception is not None:
        _warn_hosts(store, run, exception)
    return stored


class Assembler:
    """Finished runs wait here until :func:`assemble` seals them; :meth:`tick` retries the waiting ones.

    ``load_tries(dag_id, run_id)`` reads Airflow's task instances, each try with its host (scheduler side's
    reader); ``load_events`` Airflow's audit log
    events about them (see :func:`try_reason`); ``open_store`` gives the store. Nothing here raises into its
    caller: a failure is logged, counted by the caller's ``on_error`` and retried at the next tick.
    """

    def __init__(
        self,
        open_store: Callable[[], EvidenceStore],
        load_tries: Callable[[str, str], list[dict[str, Any]]],
        grace_seconds: Callable[[], int],
        on_error: Callable[[str], None] = lambda what: None,
        load_events: Callable[[str, str], TryEvents] | None = None,
    ) -> None:
        self._open_store, self._load_tries, self._grace = open_store, load_tries, grace_seconds
        self._on_error, self._load_events = on_error, load_events
        self.pending: dict[tuple[str, str], PendingRun] = {}
        self.sealed: list[dict[str, Any]] = []  # the last few sealed records (for `barecount` and the tests)
        self._lock = threading.Lock()

    def run_finished(self, run: PendingRun, rows: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
        with self._lock:
            self.pending[(run.dag_id, run.run_id)] = run
        return self._try(run, rows, datetime.now(UTC))

    def tick(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Try every waiting run once; the records sealed now."""
        now = now or datetime.now(UTC)
        with self._lock:
            waiting = list(self.pending.values())
        sealed = []
        for run in waiting:
            record = self._try(run, None, now)
            if record is not None:
                sealed.append(record)
        return sealed

    def _try(self, run: PendingRun, rows: list[dict[str, Any]] | None, now: datetime) -> dict[str, Any] | None:
        run.attempts += 1
        store: EvidenceStore | None = None
        try:
            store = self._open_store()
            tries = rows if rows is not None else self._load_tries(run.dag_id, run.run_id)
            expected = expected_tries(tries)
            record = assemble(
                store,
                run,
                expected,
                now=now,
                grace=timedelta(seconds=self._grace()),
                trace_id=f"{context.trace_id_for(run.dag_id, run.run_id):032x}",
                load_events=self._events_of(run),
            )
        except Exception:
            log.warning("BareCount could not assemble the evidence of %s %s", run.dag_id, run.run_id, exc_info=True)
            self._on_error("assemble")
            record = None
        if record is None:
            self._remember(store, run)
            return None
        with self._lock:
            self.pending.pop((run.dag_id, run.run_id), None)
            self.sealed = [*self.sealed[-99:], record]
        if run.remembered and store is not None:
            try:
                forget_pending(store, run.dag_id, run.run_id)
                run.remembered = False
            except Exception:  # left in the table: the next start finds the record sealed and drops it
                self._on_error("pending")
        return record

    def _events_of(self, run: PendingRun) -> Callable[[], TryEvents] | None:
        load = self._load_events
        return None if load is None else lambda: load(run.dag_id, run.run_id)

    def _remember(self, store: EvidenceStore | None, run: PendingRun) -> None:
        """A run not sealed now is written to the pending table, for a scheduler that starts after this one."""
        if run.remembered:
            return
        try:
            remember_pending(store if store is not None else self._open_store(), run.dag_id, run.run_id)
            run.remembered = True
        except Exception:  # retried at the next attempt; meanwhile a restart finds the run by its entries
            log.warning("BareCount could not keep %s %s waiting to be sealed", run.dag_id, run.run_id, exc_info=True)
            self._on_error("pending")
