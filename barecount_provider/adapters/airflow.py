"""Airflow's private internals BareCount relies on: the secrets maskers' singletons and their class, a task
process's link to its supervisor, a task instance's context from the API server, and the frames of the DagBag and the DAG processor that call the
cluster policies."""

from __future__ import annotations

import sys
from typing import Any

SDK_MASKER_MODULE = "airflow.sdk._shared.secrets_masker"
"""The task SDK's masker module: the supervisor's log-file processor runs its singleton over every event."""
CORE_MASKER_MODULE = "airflow._shared.secrets_masker"
"""airflow-core's masker module (API server responses, core component logs)."""
MASKER_SINGLETON = "_secrets_masker"
"""The function of a masker module that returns its process-wide masker."""
ORIGINAL_CLASS = "_barecount_original_class"
"""Where an extended masker's class keeps the class Airflow gave it."""

STRUCTLOG_MODULES = ("airflow.sdk._shared.logging.structlog", "airflow._shared.logging.structlog")
"""The modules that hold Airflow's per-logger structlog levels (``PER_LOGGER_LEVELS``)."""


def masker_module(name: str) -> Any:
    """Import and return the masker module ``name`` (:data:`SDK_MASKER_MODULE` or :data:`CORE_MASKER_MODULE`)."""
    __import__(name)
    return sys.modules[name]


def masker_singletons(include_core: bool = True) -> list[Any]:
    """The masker singletons of this process: the task SDK's first, then airflow-core's (when installed)."""
    maskers: list[Any] = []
    names = [SDK_MASKER_MODULE, CORE_MASKER_MODULE] if include_core else [SDK_MASKER_MODULE]
    for name in names:
        try:
            masker = getattr(masker_module(name), MASKER_SINGLETON)()
        except Exception:
            continue
        if all(masker is not seen for seen in maskers):
            maskers.append(masker)
    return maskers


_EXTENDED_CLASSES: dict[tuple[type, type], type] = {}


def extend_masker(masker: Any, extension: type) -> None:
    """Mix ``extension`` into ``masker``'s class, in place: its class becomes a subclass of ``extension`` and
    of its own class, so every holder of a reference, its registered secrets and its settings are kept."""
    original = type(masker)
    extended = _EXTENDED_CLASSES.get((original, extension))
    if extended is None:
        extended = type(
            f"BareCount{original.__name__}", (extension, original),
            {"__module__": extension.__module__, ORIGINAL_CLASS: original},
        )
        _EXTENDED_CLASSES[(original, extension)] = extended
    masker.__class__ = extended


def original_masker_class(masker: Any) -> Any:
    """The class Airflow gave ``masker``, extended or not."""
    return getattr(masker, ORIGINAL_CLASS, type(masker))


def restore_masker(masker: Any) -> None:
    """Undo :func:`extend_masker` (a masker that is not extended is left as it is)."""
    masker.__class__ = original_masker_class(masker)


TASK_RUNNER_MODULE = "airflow.sdk.execution_time.task_runner"
SUPERVISOR_COMMS = "SUPERVISOR_COMMS"
"""The task runner's module global that holds a task process's link to its supervisor (unset elsewhere)."""


def in_supervised_task_process() -> bool:
    """Whether this process is a task run by the Task SDK under a supervisor (its supervisor link is set)."""
    return getattr(sys.modules.get(TASK_RUNNER_MODULE), SUPERVISOR_COMMS, None) is not None


def ti_context_from_server(ti: Any) -> Any:
    """The context the API server sent a task instance when it started (``next_method`` on a resume,
    ``dag_run``...); None outside a task process."""
    return getattr(ti, "_ti_context_from_server", None)


def bagging_bundle_name() -> str | None:
    """The DAG bundle whose file Airflow's DagBag is bagging now: ``self.bundle_name`` of the caller's
    ``DagBag.bag_dag`` frame (Airflow gives a cluster policy the DAG alone); None outside one."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "bag_dag":
            bundle = getattr(frame.f_locals.get("self"), "bundle_name", None)
            return bundle if isinstance(bundle, str) and bundle else None
        frame = frame.f_back  # type: ignore[assignment]
    return None


def in_dag_processor_parse() -> bool:
    """Whether a caller's frame is the DAG processor's ``_parse_file`` (its parse process)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_parse_file" and frame.f_globals.get("__name__") == "airflow.dag_processing.processor":
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def per_logger_levels() -> list[Any]:
    """Airflow's per-logger structlog levels (task SDK and core) as loaded in this process."""
    found: list[Any] = []
    for module_name in STRUCTLOG_MODULES:
        levels = getattr(sys.modules.get(module_name), "PER_LOGGER_LEVELS", None)
        if levels is not None and all(levels is not seen for seen in found):
            found.append(levels)
    return found


def override_ids() -> Any:
    """Airflow's context manager that fixes the ids of the next span its tracer provider starts
    (``OverrideableRandomIdGenerator``); None where this Airflow has none."""
    try:
        from airflow._shared.observability.traces import override_ids as override
    except ImportError:
        return None
    return override
