"""What BareCount takes on the scheduler side, off the scheduling loop.

The scheduler's listener hooks only put a small job on a bounded queue (no I/O, no database); one daemon
thread does the work with its own database session: DAG-run metrics, queued time of every try, the tries
that never had a task process (skipped by trigger rules, upstream failed, removed), tries the scheduler
failed, the run and task spans, and a sampler of tasks in flight. A full queue drops the job and counts it.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from barecount_provider import config, context
from barecount_provider.runtime.dag_runs import DagTenants, get_dag_tenants, load_tries, run_type_of
from barecount_provider.telemetry import filesink
from barecount_provider.telemetry.filesink import state_name as _state
from barecount_provider.telemetry.metrics import COUNTER, EMIT_FAILURES, GAUGE, TIMER, get_emitter

log = logging.getLogger(__name__)

NEVER_RAN_STATES = ("skipped", "upstream_failed", "removed")
QUEUE_SIZE = 10_000
EVIDENCE_TICK_SECONDS = 5.0  # how often runs waiting for late evidence entries are retried


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds() * 1000.0)


class SchedulerSide:
    """A single background worker fed by the listener; never blocks the caller."""

    def __init__(self, tenants: DagTenants | None = None) -> None:
        self.jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._sampler: threading.Thread | None = None
        self._forwarder: Any = None  # spool.ForwarderProcess
        self._stop = threading.Event()
        self.tenants = tenants if tenants is not None else DagTenants()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ plumbing

    _prepared = False
    refused: str | None = None  # why this side does not start (an out-of-date schema), logged once

    def prepare(self) -> None:
        """Import, on the calling (main) thread, everything the background threads will use.

        The scheduler forks LocalExecutor workers, which fork task processes. A fork copies a module's import
        lock as it is: had a background thread been importing a module at that instant, the module would
        stay locked forever in the child, and the task process would hang on its first import of it.
        Importing everything here, before any BareCount thread exists, leaves threads nothing to import.
        """
        if self._prepared:
            return
        from airflow.models.dag import DagTag  # noqa: F401
        from airflow.models.serialized_dag import SerializedDagModel  # noqa: F401
        from airflow.models.taskinstance import TaskInstance  # noqa: F401
        from airflow.models.taskinstancehistory import TaskInstanceHistory  # noqa: F401
        from airflow.utils.session import create_session  # noqa: F401
        from airflow.utils.state import TaskInstanceState  # noqa: F401
        from sqlalchemy import func, select  # noqa: F401

        from barecount_provider.runtime import preload

        # The sinks of this side are those of the task processes (StatsD; OTLP through the spool, which the
        # forwarder process exports): nothing here builds an OTLP exporter or an SDK provider, whose at-fork
        # handlers would run in every process forked from the scheduler (spool.py).
        preload.preload()
        from barecount_provider.db import SchemaOutOfDate

        try:
            from barecount_provider.runtime import sealing as evidence

            evidence.prepare()  # the evidence store's index (SQLAlchemy, sqlite3 / boto3), first used here
        except SchemaOutOfDate as err:
            # BareCount's tables need `barecount db migrate`: this side does not start (the scheduler does)
            self.refused = str(err)
            EMIT_FAILURES.record("evidence", "schema")
            log.error("BareCount's scheduler side is not started: %s", err)
        except Exception:
            EMIT_FAILURES.record("evidence", "prepare")
            log.warning("BareCount could not prepare the evidence store", exc_info=True)
        self._prepared = True

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self.prepare()
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._work, name="barecount-scheduler-side", daemon=True)
                    self._thread.start()
                    self._stop_at_exit()

    _exit_hook = False

    def _stop_at_exit(self) -> None:
        if not self._exit_hook:
            from barecount_provider.telemetry import threads

            threads.on_exit(self.stop_threads)
            self._exit_hook = True

    def stop_threads(self, timeout_s: float | None = None) -> None:
        """At interpreter exit (telemetry/threads.py): the queued jobs get a bounded time (``emit_timeout_ms``
        + 1 s), then the worker and the sampler end and are joined, each within that bound; the forwarder
        (when this process started one and ``stop`` did not end it) is stopped too. Never raises."""
        bound = config.emit_timeout_ms() / 1000.0 + 1.0 if timeout_s is None else timeout_s
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            self.drain(timeout_s=bound)
            try:
                self.jobs.put_nowait(None)  # the worker returns at it (or at its next idle wait: _stop is set)
            except queue.Full:
                pass
            thread.join(bound)
        if self._sampler is not None:
            self._sampler.join(bound)
        if self._forwarder is not None:
            self._forwarder.withdraw()
            self._forwarder.stop(timeout_s=bound)

    def submit(self, job: Callable[[], None]) -> None:
        if self.refused:
            return
        self._ensure_thread()
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            EMIT_FAILURES.record("scheduler_side", "queue_full")

    def _work(self) -> None:
        written = time.monotonic()
        while True:
            try:
                job = self.jobs.get(timeout=EVIDENCE_TICK_SECONDS)
            except queue.Empty:
                if self._stop.is_set():
                    return  # stopped and idle (a later submit starts a new worker)
                self._evidence_tick()
                continue
            try:
                if job is None:
                    return
                job()
            except Exception:
                EMIT_FAILURES.record("scheduler_side", "job")
                log.warning("BareCount scheduler-side job failed", exc_info=True)
            finally:
                emitter = get_emitter()
                emitter.report_failures()
                # Points and spans for OTLP wait in this process until written to the spool: in one file
                # when the queue is idle, at least every second under load.
                if self.jobs.qsize() == 0 or time.monotonic() - written >= 1.0:
                    emitter.flush()
                    written = time.monotonic()
                self.jobs.task_done()

    def _evidence_tick(self) -> None:
        """Retry sealing the finished runs still waiting for late entries (evidence/assemble.py), the look for
        runs left unsealed if it failed at start, and start the spool's forwarder again if it died."""
        try:
            self.check_forwarder()
        except Exception:
            EMIT_FAILURES.record("spool", "forwarder_start")
        if self._recover_failures:
            self._recover_evidence()
        try:
            from barecount_provider.runtime import sealing as evidence

            evidence.tick()
        except Exception:
            EMIT_FAILURES.record("evidence", "tick")
            log.warning("BareCount could not seal waiting evidence records", exc_info=True)

    def recover_evidence(self) -> None:
        """When the scheduler starts: seal, in the background thread, the runs a scheduler that stopped or
        died left unsealed (runtime/sealing.py ``recover``)."""
        if config.evidence_on():
            self.submit(self._recover_evidence)

    _recover_failures = 0  # since the last look for runs left unsealed that worked: retried at each tick

    def _recover_evidence(self) -> None:
        try:
            from barecount_provider.runtime import sealing as evidence

            evidence.recover()
            self._recover_failures = 0
        except Exception:
            EMIT_FAILURES.record("evidence", "recover")
            self._recover_failures += 1
            if self._recover_failures == 1:  # said once; retried at every tick until it works
                log.warning("BareCount could not look for runs left unsealed; tried again at every tick", exc_info=True)

    def _last_evidence_tick(self) -> None:
        try:
            from barecount_provider.runtime import sealing as evidence

            evidence.tick()
        except Exception:
            EMIT_FAILURES.record("evidence", "tick")
            log.warning("BareCount could not seal waiting evidence records", exc_info=True)

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until every submitted job ran (tests, dag.test and shutdown); bounded."""
        deadline = time.monotonic() + timeout_s
        while self.jobs.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        get_emitter().flush()
        return not self.jobs.unfinished_tasks

    # ----------------------------------------------------------------------------------- tenant lookup

    def tenant_of(
        self, dag_id: str, dag: Any = None, conf_keys: frozenset[str] = frozenset(), force: bool = False
    ) -> tuple[str, str]:
        """(tenant, pipeline) of a DAG (:meth:`barecount_provider.runtime.dag_runs.DagTenants.tenant_of`)."""
        return self.tenants.tenant_of(dag_id, dag, conf_keys, force)

    def opted_out(self, dag_id: str) -> bool:
        return self.tenants.opted_out(dag_id)

    in_scheduler = False  # set when the scheduler's job starts (lifecycle.on_starting)

    def _warm_tenant(self, dag_id: str) -> None:
        self.tenant_of(dag_id, force=True)

    def cached_tenant(self, dag_id: str) -> str:
        """The tenant of a DAG for the trace sampler, which runs where a DAG run is created.

        In the scheduler that is the scheduling loop: only the cache is read, and a miss or a stale entry is
        refreshed in the background (that run is sampled at the default tenant's ratio). Elsewhere (the API
        server creating a triggered run) a miss is looked up at once: one indexed read of the DAG's tags.
        """
        cached = self.tenants.cached(dag_id)
        stale = self.tenants.stale(dag_id)
        if cached is not None and not stale:
            return cached[0]
        if self.in_scheduler or cached is not None:
            self.submit(lambda: self._warm_tenant(dag_id))
            return cached[0] if cached is not None else config.default_tenant()
        return self.tenant_of(dag_id, force=True)[0]

    # ---------------------------------------------------------------------------------------- DAG runs

    def dag_run_running(self, dag_run: Any) -> None:
        dag_id, dag = dag_run.dag_id, getattr(dag_run, "dag", None)
        conf_keys = frozenset(getattr(dag_run, "conf", None) or {})
        self.submit(lambda: self._dag_run_running(dag_id, dag, conf_keys))

    def _dag_run_running(self, dag_id: str, dag: Any, conf_keys: frozenset[str]) -> None:
        tenant, pipeline = self.tenant_of(dag_id, dag, conf_keys)
        if self.opted_out(dag_id):
            return
        get_emitter().count("barecount.dag_run.started", {"tenant": tenant, "pipeline": pipeline, "dag_id": dag_id})

    def dag_run_finished(self, dag_run: Any) -> None:
        snapshot = {
            "dag_id": dag_run.dag_id,
            "run_id": dag_run.run_id,
            "state": _state(dag_run.state),
            "start_date": dag_run.start_date,
            "end_date": dag_run.end_date or datetime.now(UTC),
            "queued_at": getattr(dag_run, "queued_at", None),
            "run_type": run_type_of(dag_run),
            "dag": getattr(dag_run, "dag", None),
            "conf_keys": frozenset(getattr(dag_run, "conf", None) or {}),
        }
        self.submit(lambda: self._dag_run_finished(**snapshot))

    def _dag_run_finished(
        self, dag_id: str, run_id: str, state: str, start_date: Any, end_date: Any, queued_at: Any, dag: Any,
        conf_keys: frozenset[str], run_type: str | None = None,
    ) -> None:
        tenant, pipeline = self.tenant_of(dag_id, dag, conf_keys)
        if self.opted_out(dag_id):
            return
        run_tags = {"tenant": tenant, "pipeline": pipeline, "dag_id": dag_id}
        points: list[tuple[str, str, float, Any]] = [
            ("barecount.dag_run.finished", COUNTER, 1, {**run_tags, "state": state})
        ]
        duration = _ms(start_date, end_date)
        if duration is not None:
            points.append(("barecount.dag_run.duration", TIMER, duration, {**run_tags, "state": state}))
        queued = _ms(queued_at, start_date)
        if queued is not None:
            points.append(("barecount.dag_run.queued_time", TIMER, queued, run_tags))

        tries = load_tries(dag_id, run_id)
        tasks: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for row in tries:
            tasks.setdefault((row["task_id"], row["map_index"]), []).append(row)
            task_tags = {**run_tags, "runner_class": "local", "size": context.DEFAULT_SIZE, "task_id": row["task_id"]}
            queued_ms = _ms(row["queued_dttm"], row["start_date"])
            if queued_ms is not None:
                points.append(("barecount.task.queued_time", TIMER, queued_ms, task_tags))
            # No task process ever ran for it (skipped by a trigger rule, upstream failed, removed): no pid.
            if row["state"] in NEVER_RAN_STATES and row["pid"] is None and row["latest"]:
                points.append(("barecount.task.finished", COUNTER, 1, {**task_tags, "state": row["state"]}))
                self._file_event(row, tenant, pipeline, source="scheduler")
        get_emitter().emit(points)
        self._emit_spans(dag_id, run_id, tenant, state, start_date, end_date, tasks)
        if config.evidence_on():  # seal the run's evidence now, or when its late entries arrive
            from barecount_provider.runtime import sealing as evidence

            evidence.run_finished(
                dag_id=dag_id,
                run_id=run_id,
                state=state,
                started_at=start_date,
                ended_at=end_date,
                tenant=tenant,
                pipeline=pipeline,
                rows=tries,
                run_type=run_type,
            )
        if config.file_sink_on():
            filesink.append_event(
                {
                    "kind": "dag_run",
                    "source": "scheduler",
                    "time": datetime.now(UTC).isoformat(),
                    "dag_id": dag_id,
                    "run_id": run_id,
                    "state": state,
                    "duration_s": None if duration is None else round(duration / 1000.0, 3),
                    "tenant": tenant,
                    "pipeline": pipeline,
                    "correlation_id": context.correlation_id_for(dag_id, run_id),
                    "trace_id": f"{context.trace_id_for(dag_id, run_id):032x}",
                }
            )

    def _file_event(self, row: dict[str, Any], tenant: str, pipeline: str, source: str) -> None:
        if not config.file_sink_on():
            return
        filesink.append_event(
            filesink.task_try_event(
                source=source,
                time=datetime.now(UTC).isoformat(),
                dag_id=row["dag_id"],
                run_id=row["run_id"],
                task_id=row["task_id"],
                map_index=row["map_index"],
                try_number=row["try_number"],
                state=row["state"],
                tenant=tenant,
                pipeline=pipeline,
                correlation_id=context.correlation_id_for(row["dag_id"], row["run_id"]),
                sinks={**get_emitter().describe(), "file": filesink.events_path()},
            )
        )

    def _emit_spans(self, dag_id: str, run_id: str, tenant: str, state: str, start: Any, end: Any, tasks: dict) -> None:
        from barecount_provider.runtime.task_side import policy_values
        from barecount_provider.telemetry import tracing

        tracer = tracing.get_tracing()
        if tracer is None or tracer.airflow_mode or start is None:
            return  # under Airflow's tracing, Airflow emits the dag_run and task_run spans itself
        ratio, _ = policy_values(tenant)
        sampled = tracing.sampled_for_run(dag_id, run_id, ratio)
        trace_id = context.trace_id_for(dag_id, run_id)
        run_span_id = context.run_span_id_for(dag_id, run_id)
        tracer.emit_fixed_span(
            f"dag_run {dag_id}", trace_id=trace_id, span_id=run_span_id, parent_span_id=None, sampled=sampled,
            start=start, end=end, error=state == "failed",
            attributes={"airflow.dag_id": dag_id, "airflow.dag_run.run_id": run_id, "barecount.tenant": tenant,
                        "barecount.state": state, "barecount.correlation_id": context.correlation_id_for(dag_id, run_id)},
        )
        for (task_id, map_index), rows in tasks.items():
            starts = [r["start_date"] for r in rows if r["start_date"]]
            ends = [r["end_date"] for r in rows if r["end_date"]]
            latest = next((r for r in rows if r["latest"]), rows[0])
            tracer.emit_fixed_span(
                f"task {task_id}", trace_id=trace_id,
                span_id=context.task_span_id_for(dag_id, run_id, task_id, map_index if map_index is not None else -1),
                parent_span_id=run_span_id, sampled=sampled,
                start=min(starts) if starts else (max(ends) if ends else end),
                end=max(ends) if ends else end, error=latest["state"] in ("failed", "upstream_failed"),
                attributes={"airflow.dag_id": dag_id, "airflow.task_id": task_id, "airflow.task_instance.map_index": map_index,
                            "barecount.state": latest["state"], "barecount.tries": len(rows)},
            )
        tracer.flush(config.emit_timeout_ms())

    # ----------------------------------------------------------------------- tries failed by the scheduler

    def task_failed_by_server(self, task_instance: Any, error: Any) -> None:
        """A try failed outside its task process (heartbeat timeout, killed, marked failed)."""
        row = {
            "dag_id": task_instance.dag_id, "run_id": task_instance.run_id, "task_id": task_instance.task_id,
            "map_index": getattr(task_instance, "map_index", -1), "try_number": getattr(task_instance, "try_number", 0),
            "state": "failed",
        }
        error_class = type(error).__name__ if isinstance(error, BaseException) else "KilledByScheduler"
        self.submit(lambda: self._task_failed_by_server(row, error_class))

    def _task_failed_by_server(self, row: dict[str, Any], error_class: str) -> None:
        tenant, pipeline = self.tenant_of(row["dag_id"])
        if self.opted_out(row["dag_id"]):
            return
        tags = {"tenant": tenant, "pipeline": pipeline, "runner_class": "local", "size": context.DEFAULT_SIZE,
                "dag_id": row["dag_id"], "task_id": row["task_id"]}
        get_emitter().emit(
            [
                ("barecount.task.finished", COUNTER, 1, {**tags, "state": "failed"}),
                ("barecount.task.failures", COUNTER, 1, {**tags, "error_class": error_class}),
            ]
        )
        self._file_event(row, tenant, pipeline, source="scheduler")

    # ---------------------------------------------------------------------------------- tasks in flight

    def start_in_flight_sampler(self) -> None:
        if self._sampler is not None:
            return
        self.prepare()
        self._sampler = threading.Thread(target=self._sample_loop, name="barecount-in-flight", daemon=True)
        self._sampler.start()
        self._stop_at_exit()

    def _sample_loop(self) -> None:
        interval = config.in_flight_interval_seconds()
        while not self._stop.wait(interval):
            try:
                self.sample_in_flight()
            except Exception:
                EMIT_FAILURES.record("scheduler_side", "in_flight")

    def sample_in_flight(self) -> dict[tuple[str, str, str], int]:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState
        from sqlalchemy import func, select

        with create_session() as session:
            rows = session.execute(
                select(TaskInstance.dag_id, func.count())
                .where(TaskInstance.state == TaskInstanceState.RUNNING)
                .group_by(TaskInstance.dag_id)
            ).all()
        counts: dict[tuple[str, str, str], int] = {}
        for dag_id, n in rows:
            tenant, pipeline = self.tenant_of(dag_id)
            if self.opted_out(dag_id):
                continue
            counts[(tenant, pipeline, dag_id)] = int(n)
        # Report zero for DAGs that had tasks in flight before, so the gauge comes down.
        for key in list(self._last_in_flight):
            counts.setdefault(key, 0)
        self._last_in_flight = {k for k, v in counts.items() if v}
        get_emitter().emit(
            [
                ("barecount.task.in_flight", GAUGE, n, {"tenant": t, "pipeline": p, "dag_id": d})
                for (t, p, d), n in counts.items()
            ]
        )
        return counts

    _last_in_flight: set[tuple[str, str, str]] = set()

    # ------------------------------------------------------------------------------ the spool's forwarder

    def start_forwarder(self) -> bool:
        """Start the spool's forwarder (the task processes' and this side's OTLP data, and the outputs task
        processes hand off): a child process of the scheduler (spool.ForwarderProcess). Its process id goes
        to ``BARECOUNT_FORWARDER_PID`` for the processes this one forks from now on (LocalExecutor's
        workers, and through them the task processes), which then hand their outputs off
        (``[barecount] task_outputs = auto``). False when nothing goes through the spool, or when it runs
        already."""
        from barecount_provider import outbox
        from barecount_provider.runtime import forwarding
        from barecount_provider.telemetry import outbox_sinks

        if self._forwarder is not None or not (outbox_sinks.enabled() or outbox.handoff_configured()):
            return False
        forwarder = forwarding.ForwarderProcess()
        if not forwarder.start():
            return False
        self._forwarder = forwarder
        forwarder.advertise()
        self._stop_at_exit()
        return True

    def check_forwarder(self) -> bool:
        """Start the forwarder again if it died (task processes forked while it was down, or that saw it
        dead, write their outputs themselves). True when it was restarted; never once this side stopped
        (its stop ends the forwarder after a last round)."""
        forwarder = self._forwarder
        if forwarder is None or forwarder.running() or self._stop.is_set():
            return False
        forwarder.withdraw()
        EMIT_FAILURES.record("spool", "forwarder_died")
        if not forwarder.start():
            return False
        forwarder.advertise()
        return True

    def stop(self) -> None:
        """The scheduler stops: this side's jobs run (bounded), the forwarder makes its last round (the
        entries the last task processes handed off reach the store), then the runs waiting for entries are
        tried a last time; those still within their grace period stay in the pending table, and the next
        scheduler to start seals them (runtime/sealing.py ``recover``)."""
        self._stop.set()
        bound = config.emit_timeout_ms() / 1000.0 + 1.0
        self.drain(timeout_s=bound)  # this side's points: to the spool
        if self._forwarder is not None:
            self._forwarder.withdraw()
            self._forwarder.stop()  # a last round: what the last task processes spooled
        if config.evidence_on() and self._thread is not None:  # (a worker idle since the stop has returned)
            self.submit(self._last_evidence_tick)
            self.drain(timeout_s=bound + 5.0)


@functools.cache
def get_scheduler_side() -> SchedulerSide:
    return SchedulerSide(get_dag_tenants())
