"""The task process's part of the evidence: build this try's entry, cost it, emit the cost metrics, and
write it (or spool it). Called by the task side at the end of each try; never raises into the task."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from barecount_provider import config, outbox, redaction
from barecount_provider.cost import cost_metric_points, estimate
from barecount_provider.evidence import spool as evidence_spool
from barecount_provider.evidence.record import CONTEXT_FIELDS, build_entry, this_host

log = logging.getLogger(__name__)

PENDING_COST = "_pending_cost"
"""Key of a handed-off entry's cost inputs (runtime, metric tags); removed when the forwarder costs it."""
PENDING_ENTRY = "_pending_entry"
"""Key of a handed-off try's facts (:func:`try_facts`), from which the forwarder builds its entry."""
TASK_FACTS = (
    "barecount_runner_result",
    "barecount_policy_validations",
    "barecount_policy_exceptions",
    "barecount_approvals",
    "barecount_replay_outcome",
    "barecount_dead_letters",
)
"""What BareCount's operators leave on the task for the try's entry (taken by :func:`try_facts`)."""

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


def log_location(context: Mapping[str, Any]) -> str | None:
    """Where the try's log lives: Airflow's base log folder and its log file name for the try (``context``:
    a RunContext's fields, as an entry carries them)."""
    settings = log_settings()
    if settings is None:
        return None
    base, template = settings
    if template.strip() != DEFAULT_LOG_TEMPLATE:
        return f"{base} ({template})"  # a custom template: named, not rendered here
    name = f"dag_id={context['dag_id']}/run_id={context['run_id']}/task_id={context['task_id']}/"
    map_index = context.get("map_index")
    if map_index is not None and map_index >= 0:
        name += f"map_index={map_index}/"
    name += f"attempt={context['try_number']}.log"
    return os.path.join(base, name) if base else name


def try_facts(
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
    """What only the task process knows of this try, under :data:`PENDING_ENTRY`: its RunContext's fields,
    state, times, host, resource usage, trace ids, error, the metric tags (when ``emitter`` has a sink) and what
    BareCount's operators left on the task. :func:`entry_from_facts` makes the entry of them, in the task
    process (:func:`build_try_entry`) or, for a try handed off, in the forwarder (:func:`deliver_entry`),
    where the task process pays for the facts only. The times stay datetimes: the spool's encoder writes
    them as RFC 3339 text."""
    facts: dict[str, Any] = {
        "context": {name: getattr(ctx, name, None) for name in CONTEXT_FIELDS},
        "state": state,
        "started_at": started_at,
        "ended_at": ended_at,
        "queued_at": getattr(ti, "queued_dttm", None),
        # the worker running this try: the task SDK sets ti.hostname (Airflow's get_hostname) as the try starts
        "host": getattr(ti, "hostname", None) or this_host(),
        "duration_s": duration_s,
        "metrics": metrics,
        "trace": trace,
        "error": error,
        "tags": ctx.metric_tags() if emitter is not None and emitter.sinks else None,
    }
    task = getattr(ti, "task", None)
    for name in TASK_FACTS:
        value = getattr(task, name, None)
        if value is not None:
            facts[name] = redaction.redact(value)  # a runner's result, an approval's comment: the try's data
    return {PENDING_ENTRY: facts}


def _datetime(value: Any) -> Any:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def entry_from_facts(facts: dict[str, Any], *, emitter: Any = None, costed: bool = False) -> dict[str, Any]:
    """The entry of a try's facts (:func:`try_facts`, as taken or as read back from the spool). Raises on
    bad facts. ``costed``: with its cost, whose metrics go to ``emitter`` (with the facts' tags); otherwise
    it carries, under :data:`PENDING_COST`, what :func:`deliver_entry` needs to cost it the same way."""
    context = facts["context"]
    duration_s = float(facts["duration_s"])
    runner_result = facts.get("barecount_runner_result")
    tags = facts.get("tags")
    cost = None
    if costed:
        cost = estimate(context["runner_class"], runner_result, runtime_s=duration_s)
        if tags is not None and emitter is not None:  # tags only where the emitter had a sink
            emitter.emit(cost_metric_points(cost, tags))
    entry = build_entry(
        context,
        state=str(facts["state"]),
        source="task",
        started_at=_datetime(facts.get("started_at")),
        ended_at=_datetime(facts["ended_at"]),
        queued_at=_datetime(facts.get("queued_at")),
        metrics=facts.get("metrics") or {},
        runner_result=runner_result,
        cost=cost.as_dict() if cost is not None else None,
        log_location=log_location(context),
        trace=facts.get("trace"),
        policy={
            "validations": list(facts.get("barecount_policy_validations") or []),
            "exceptions": list(facts.get("barecount_policy_exceptions") or []),
        },
        approvals=list(facts.get("barecount_approvals") or []),
        error=facts.get("error"),
        host=facts.get("host"),
    )
    for name, field in (("barecount_replay_outcome", "replay"), ("barecount_dead_letters", "dead_letters")):
        value = facts.get(name)
        if value:
            entry[field] = value  # a replay's outcome; the keys of the failed events sent to the DLQ
    if not costed:
        entry[PENDING_COST] = {"runtime_s": duration_s, "tags": tags}
    return entry


def build_try_entry(ctx: Any, ti: Any, *, emitter: Any = None, costed: bool = True, **fields: Any) -> dict[str, Any]:
    """This try's entry (``fields``: those of :func:`try_facts`), costed, the cost metrics going to
    ``emitter`` (if any); not ``costed``: carrying its cost inputs instead (:func:`entry_from_facts`).
    Raises on a bad input."""
    return entry_from_facts(try_facts(ctx, ti, emitter=emitter, **fields)[PENDING_ENTRY], emitter=emitter, costed=costed)


def record_try(ctx: Any, ti: Any, *, handoff: bool = False, **fields: Any) -> str:
    """Write this try's entry (``fields``: those of :func:`build_try_entry`); ``stored``, ``spooled``,
    ``lost`` or ``off``; ``handed_off`` (``handoff``): the try's facts kept for the spool's forwarder, which
    builds, costs and stores the entry (:func:`try_facts`, :func:`deliver_entry`). Never raises."""
    if not config.evidence_on():
        return "off"
    try:
        if handoff:
            outbox.add_entry(try_facts(ctx, ti, **fields))
            return "handed_off"
        return evidence_spool.write_entry(build_try_entry(ctx, ti, **fields))
    except Exception:
        log.warning("BareCount could not write the evidence entry of this try", exc_info=True)
        _count_failure("entry")
        return "lost"


def deliver_entry(entry: dict[str, Any], *, store: bool = True) -> str:
    """The forwarder's part of an entry a task process handed off: cost it as :func:`build_try_entry` would
    have (the cost metrics with the task's tags, through this process's direct emitter), then store it, or
    spool it for a later delivery when ``store`` is False (the store failed earlier in the round). Returns
    ``stored``, ``spooled`` or ``lost``; never raises. An entry that cannot be costed is stored without its
    cost (counted), never dropped. A try's facts (:func:`try_facts`) are made into its entry first."""
    if PENDING_ENTRY in entry:
        try:
            entry = entry_from_facts(entry[PENDING_ENTRY])
        except Exception:
            log.warning("BareCount could not build the evidence entry of a handed-off try", exc_info=True)
            _count_failure("entry")
            return "lost"
    pending = entry.pop(PENDING_COST, None)
    if pending is not None and entry.get("cost") is None:
        try:
            context = entry.get("context") or {}
            cost = estimate(
                str(context.get("runner_class") or "local"),
                entry.get("runner_result"),
                runtime_s=float(pending["runtime_s"]),
            )
            tags = pending.get("tags")
            if tags:
                from barecount_provider.telemetry.metrics import get_direct_emitter

                emitter = get_direct_emitter()
                if emitter.sinks:
                    emitter.emit(cost_metric_points(cost, dict(tags)))
            entry["cost"] = cost.as_dict()
        except Exception:
            log.warning("BareCount could not cost a handed-off evidence entry", exc_info=True)
            _count_failure("cost")
    try:
        if store:
            return evidence_spool.write_entry(entry)
        evidence_spool.spool(entry)
        return "spooled"
    except Exception:
        log.warning("BareCount could not write a handed-off evidence entry", exc_info=True)
        _count_failure("entry")
        return "lost"


def _count_failure(stage: str) -> None:
    try:
        from barecount_provider.telemetry.metrics import EMIT_FAILURES

        EMIT_FAILURES.record("evidence", stage)
    except Exception:
        pass
