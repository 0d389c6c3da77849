"""The task process's part of the evidence: build this try's entry, cost it, emit the cost metrics, and
write it (or spool it). Called by the task side at the end of each try; never raises into the task."""

from __future__ import annotations

import functools
import logging
import os
from datetime import datetime
from typing import Any

from barecount_provider import config
from barecount_provider.cost import cost_metric_points, estimate
from barecount_provider.evidence import spool as evidence_spool
from barecount_provider.evidence.record import CONTEXT_FIELDS, build_entry

log = logging.getLogger(__name__)

DEFAULT_LOG_TEMPLATE = (
    "dag_id={{ ti.dag_id }}/run_id={{ ti.run_id }}/task_id={{ ti.task_id }}/"
    "{% if ti.map_index >= 0 %}map_index={{ ti.map_index }}/{% endif %}attempt={{ try_number|default(ti.try_number) }}.log"
)


@functools.cache
def log_settings() -> tuple[str, str] | None:
    try:
        from airflow.configuration import conf

        base = conf.get("logging", "base_log_folder", fallback="") or ""
        template = conf.get("logging", "log_filename_template", fallback=DEFAULT_LOG_TEMPLATE) or DEFAULT_LOG_TEMPLATE
    except Exception:
        return None
    return base, template


def log_location(ctx: Any) -> str | None:
    """Where the try's log lives: Airflow's base log folder and its log file name for the try."""
    settings = log_settings()
    if settings is None:
        return None
    base, template = settings
    if template.strip() != DEFAULT_LOG_TEMPLATE:
        return f"{base} ({template})"  # a custom template: named, not rendered here
    name = f"dag_id={ctx.dag_id}/run_id={ctx.run_id}/task_id={ctx.task_id}/"
    if ctx.map_index is not None and ctx.map_index >= 0:
        name += f"map_index={ctx.map_index}/"
    name += f"attempt={ctx.try_number}.log"
    return os.path.join(base, name) if base else name


def build_try_entry(
    ctx: Any,
    ti: Any,
    *,
    state: str,
    started_at: datetime | None,
    ended_at: datetime,
    duration_s: float,
    metrics: dict[str, Any],
    trace: dict[str, Any] | None,
    error: dict[str, Any] | None,
    emitter: Any = None,
) -> dict[str, Any]:
    """This try's entry, costed; the cost metrics go to ``emitter`` (if any). Raises on a bad input."""
    task = getattr(ti, "task", None)
    runner_result = getattr(task, "barecount_runner_result", None)
    cost = estimate(ctx.runner_class, runner_result, runtime_s=duration_s)
    if emitter is not None and emitter.sinks:  # no metric sink: no points to build
        emitter.emit(cost_metric_points(cost, ctx.metric_tags()))
    entry = build_entry(
        {name: getattr(ctx, name, None) for name in CONTEXT_FIELDS},
        state=state,
        source="task",
        started_at=started_at,
        ended_at=ended_at,
        queued_at=getattr(ti, "queued_dttm", None),
        metrics=metrics,
        runner_result=runner_result,
        cost=cost.as_dict(),
        log_location=log_location(ctx),
        trace=trace,
        policy={
            "validations": list(getattr(task, "barecount_policy_validations", None) or []),
            "exceptions": list(getattr(task, "barecount_policy_exceptions", None) or []),
        },
        approvals=list(getattr(task, "barecount_approvals", None) or []),
        error=error,
    )
    for name, field in (("barecount_replay_outcome", "replay"), ("barecount_dead_letters", "dead_letters")):
        value = getattr(task, name, None)
        if value:
            entry[field] = value  # a replay's outcome; the keys of the failed events sent to the DLQ
    return entry


def record_try(ctx: Any, ti: Any, **fields: Any) -> str:
    """Write this try's entry (``fields``: those of :func:`build_try_entry`); ``stored``, ``spooled``,
    ``lost`` or ``off``. Never raises."""
    if not config.evidence_on():
        return "off"
    try:
        return evidence_spool.write_entry(build_try_entry(ctx, ti, **fields))
    except Exception:
        log.warning("BareCount could not write the evidence entry of this try", exc_info=True)
        try:
            from barecount_provider.telemetry.metrics import EMIT_FAILURES

            EMIT_FAILURES.record("evidence", "entry")
        except Exception:
            pass
        return "lost"
