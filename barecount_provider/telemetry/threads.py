"""Every thread BareCount starts ends at interpreter exit, within a bounded time.

BareCount's threads are daemon threads whose loops wait on a stop event or a queue with a timeout (none
spins): the scheduler side's worker and its sampler of tasks in flight (scheduler_side.py), the OTLP metric
sink's exporting reader (metrics.py; built only in the long-lived process that forwards the spool), the spool forwarder's round and export threads (spool.py, each joined
with the round's deadline), the StatsD address lookup (joined with the emit timeout) and the thread that
waits for the scheduler's job type (listeners/lifecycle.py, ten seconds at most). The long-lived ones
register a stop hook here (:func:`on_exit`); :func:`run_exit_hooks` runs them once, at interpreter exit
(``atexit``), each bounded by its own timeout, so a process that ran BareCount (``airflow dags test``, a
scheduler stopped without its listener's ``before_stopping``) never waits on one of its threads. Task
processes end with ``os._exit()`` and run no exit hook.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

THREAD_PREFIX = "barecount-"
"""Every thread BareCount starts is named with this prefix (the OTLP reader's thread is the SDK's own)."""

_HOOKS: list[Callable[[], None]] = []
_LOCK = threading.Lock()
_REGISTERED = False


def on_exit(hook: Callable[[], None]) -> None:
    """Run ``hook`` (which must return within a bounded time) at interpreter exit, before earlier hooks."""
    global _REGISTERED
    with _LOCK:
        _HOOKS.append(hook)
        if not _REGISTERED:
            atexit.register(run_exit_hooks)
            _REGISTERED = True


def run_exit_hooks() -> None:
    """Stop BareCount's threads now (latest registered first); never raises. Each hook runs once."""
    with _LOCK:
        hooks = list(reversed(_HOOKS))
        _HOOKS.clear()
    for hook in hooks:
        try:
            hook()
        except Exception:
            log.debug("BareCount could not stop one of its threads at exit", exc_info=True)


def _forget_in_child() -> None:
    """A forked child has none of its parent's threads, and must not stop what they served (the parent's
    forwarder process): it starts with no hook (and a lock no thread of the parent holds). Airflow's task
    processes clear the atexit handlers they inherit: the next hook registers :func:`run_exit_hooks` again
    (run twice where the registration was inherited: the second run finds no hook)."""
    global _LOCK, _REGISTERED
    _LOCK = threading.Lock()
    _REGISTERED = False
    _HOOKS.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def running() -> list[threading.Thread]:
    """BareCount's threads alive now (named :data:`THREAD_PREFIX` ...)."""
    return [thread for thread in threading.enumerate() if thread.name.startswith(THREAD_PREFIX) and thread.is_alive()]
