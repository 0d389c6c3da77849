"""The lifecycle listener: every hook is thin, catches its own errors and returns.

pluggy stops calling listeners at the first one that raises, so a fault here would silence every listener
registered after BareCount. Each hook therefore catches everything, logs it, counts it in
``barecount.emit.failed`` and returns. Task-side hooks (a ``RuntimeTaskInstance``) run in the task process
and never touch Airflow's database; server-side hooks (an ORM ``TaskInstance`` or a ``DagRun``) only put a
job on the scheduler-side queue, so the scheduling loop is never blocked.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from airflow.listeners import hookimpl

from barecount_provider.telemetry.filesink import state_name as _state
from barecount_provider.telemetry.metrics import EMIT_FAILURES

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def guarded(stage: str) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            try:
                func(*args, **kwargs)
            except Exception:
                EMIT_FAILURES.record("listener", stage)
                log.warning("BareCount listener %s failed; the task is not affected", stage, exc_info=True)

        return wrapper  # type: ignore[return-value]

    return decorate


def _in_task_process(task_instance: Any) -> bool:
    return type(task_instance).__name__ == "RuntimeTaskInstance"


_TASK_SIDE: Any = None


def _task_side() -> Any:
    """The task side's module, imported on first use (server-side processes that never run a task do not
    import it) and then read from a global: a ``from ... import`` of a package's submodule runs importlib's
    Python code on every call, in a task process where that code is cold (about 15 µs)."""
    global _TASK_SIDE
    if _TASK_SIDE is None:
        from barecount_provider.runtime import task_side

        _TASK_SIDE = task_side
    return _TASK_SIDE


@hookimpl
@guarded("on_starting")
def on_starting(component: Any) -> None:
    """In the scheduler, start the in-flight sampler and the forwarder of the OTLP spool.

    Airflow calls this from ``Job.__init__`` before the job's type is set, so the decision is taken a moment
    later in a thread, once the scheduler's job runner has named the job ``SchedulerJob``.
    """
    if type(component).__name__ == "TaskRunnerMarker":
        return
    from barecount_provider import config
    from barecount_provider.runtime.scheduler_side import get_scheduler_side

    side = get_scheduler_side()
    side.prepare()  # imports on this (main) thread: see SchedulerSide.prepare
    if side.refused:  # BareCount's tables need `barecount db migrate` (logged by prepare)
        return
    sample = config.scheduler_metrics_on()

    def start_when_known() -> None:
        for _ in range(100):
            job_type = getattr(component, "job_type", None)
            if job_type:
                if job_type == "SchedulerJob":
                    side.in_scheduler = True  # from now on the trace sampler reads only its cache
                    if sample:
                        side.start_in_flight_sampler()
                    side.start_forwarder()  # the task processes' OTLP spool (spool.py)
                    side.recover_evidence()  # runs a stopped scheduler left unsealed, in the background
                return
            time.sleep(0.1)

    threading.Thread(target=start_when_known, name="barecount-on-starting", daemon=True).start()


@hookimpl
@guarded("before_stopping")
def before_stopping(component: Any) -> None:
    if type(component).__name__ == "TaskRunnerMarker":
        task_side = _task_side()
        task_side.flush()
    elif getattr(component, "job_type", None) == "SchedulerJob":
        from barecount_provider.runtime.scheduler_side import get_scheduler_side

        get_scheduler_side().stop()


@hookimpl
@guarded("on_task_instance_running")
def on_task_instance_running(previous_state: Any, task_instance: Any) -> None:
    if _in_task_process(task_instance):
        task_side = _task_side()
        task_side.on_try_running(task_instance)


@hookimpl
@guarded("on_task_instance_success")
def on_task_instance_success(previous_state: Any, task_instance: Any) -> None:
    if _in_task_process(task_instance):
        task_side = _task_side()
        task_side.on_try_finished(task_instance, "success")


@hookimpl
@guarded("on_task_instance_skipped")
def on_task_instance_skipped(previous_state: Any, task_instance: Any) -> None:
    if _in_task_process(task_instance):
        task_side = _task_side()
        task_side.on_try_finished(task_instance, "skipped")


@hookimpl
@guarded("on_task_instance_failed")
def on_task_instance_failed(previous_state: Any, task_instance: Any, error: Any) -> None:
    if _in_task_process(task_instance):
        task_side = _task_side()
        state = _state(getattr(task_instance, "state", "failed"))
        task_side.on_try_finished(task_instance, "up_for_retry" if state == "up_for_retry" else "failed", error)
    else:
        from barecount_provider import config
        from barecount_provider.runtime.scheduler_side import get_scheduler_side

        if config.scheduler_metrics_on():
            get_scheduler_side().task_failed_by_server(task_instance, error)


@hookimpl
@guarded("on_dag_run_running")
def on_dag_run_running(dag_run: Any, msg: str) -> None:
    from barecount_provider import config
    from barecount_provider.runtime.scheduler_side import get_scheduler_side

    if config.scheduler_metrics_on():
        get_scheduler_side().dag_run_running(dag_run)


@hookimpl
@guarded("on_dag_run_success")
def on_dag_run_success(dag_run: Any, msg: str) -> None:
    from barecount_provider import config
    from barecount_provider.runtime.scheduler_side import get_scheduler_side

    if config.scheduler_metrics_on():
        get_scheduler_side().dag_run_finished(dag_run)


@hookimpl
@guarded("on_dag_run_failed")
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    from barecount_provider import config
    from barecount_provider.runtime.scheduler_side import get_scheduler_side

    if config.scheduler_metrics_on():
        get_scheduler_side().dag_run_finished(dag_run)
