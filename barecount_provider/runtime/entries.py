"""The task process's part of the evidence: make this try's facts, its entry of them, cost it, emit the cost
metrics, and write it (or spool it), or hand the facts to the forwarder, which makes, costs and writes the
same entry (:func:`deliver_entry`). Called by the task side at the end of each try; never raises into the
task."""

from __future__ import annotations

import functools
import logging
import os
from datetime import datetime
from typing import Any

from barecount_provider import config, outbox, redaction
from barecount_provider.cost import cost_metric_points, estimate
from barecount_provider.evidence import spool as evidence_spool
from barecount_provider.evidence.facts import TryFacts, facts_from_json
from barecount_provider.evidence.record import build_entry, this_host

log = logging.getLogger(__name__)

TASK_FACTS = {
    "barecount_runner_result": "runner_result",
    "barecount_policy_validations": "policy_validations",
    "barecount_policy_exceptions": "policy_exceptions",
    "barecount_approvals": "approvals",
    "barecount_replay_outcome": "replay",
    "barecount_dead_letters": "dead_letters",
    "barecount_health": "health",
}
"""What BareCount's operators leave on the task for the try's entry (taken by :func:`try_facts`): the task's
attribute -> the field of :class:`TryFacts`."""

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


def log_location(facts: TryFacts) -> str | None:
    """Where the try's log lives: Airflow's base log folder and its log file name for the try."""
    settings = log_settings()
    if settings is None:
        return None
    base, template = settings
    if template.strip() != DEFAULT_LOG_TEMPLATE:
        return f"{base} ({template})"  # a custom template: named, not rendered here
    name = f"dag_id={facts.dag_id}/run_id={facts.run_id}/task_id={facts.task_id}/"
    map_index = facts.map_index
    if map_index is not None and map_index >= 0:
        name += f"map_index={map_index}/"
    name += f"attempt={facts.try_number}.log"
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
) -> TryFacts:
    """What only the task process knows of this try (``ctx``: its RunContext; ``ti``: its task instance): its
    identity, state, times, host, resource usage, trace ids, error, the metric tags (when ``emitter`` has a
    sink) and what BareCount's operators left on the task (redacted). :func:`entry_of` makes the entry of
    them, in the task process or, for a try handed off, in the forwarder (:func:`deliver_entry`), where the
    task process pays for the facts only."""
    task = getattr(ti, "task", None)
    left: dict[str, Any] = {}
    for name, field in TASK_FACTS.items():
        value = getattr(task, name, None)
        if value is not None:
            left[field] = redaction.redact(value)  # a runner's result, an approval's comment: the try's data
    return TryFacts(
        tenant=ctx.tenant,
        pipeline=ctx.pipeline,
        runner_class=ctx.runner_class,
        size=ctx.size,
        network_profile=ctx.network_profile,
        image_or_driver_digest=ctx.image_or_driver_digest,
        dag_id=ctx.dag_id,
        run_id=ctx.run_id,
        task_id=ctx.task_id,
        try_number=ctx.try_number,
        map_index=ctx.map_index,
        correlation_id=ctx.correlation_id,
        run_token=ctx.run_token,
        state=state,
        started_at=started_at,
        ended_at=ended_at,
        queued_at=getattr(ti, "queued_dttm", None),
        # the worker running this try: the task SDK sets ti.hostname (Airflow's get_hostname) as the try starts
        host=getattr(ti, "hostname", None) or this_host(),
        duration_s=duration_s,
        metrics=metrics,
        trace=trace,
        error=error,
        metric_tags=ctx.metric_tags() if emitter is not None and emitter.sinks else None,
        **left,
    )


def _cost(facts: TryFacts, emitter: Any) -> dict[str, Any]:
    """The try's cost; its metrics go to ``emitter`` with the facts' tags (set where the task's emitter had
    a sink). Raises when it cannot be estimated."""
    cost = estimate(facts.runner_class, facts.runner_result, runtime_s=float(facts.duration_s))
    if facts.metric_tags is not None and emitter is not None and emitter.sinks:
        emitter.emit(cost_metric_points(cost, dict(facts.metric_tags)))
    return cost.as_dict()


def entry_of(facts: TryFacts, *, emitter: Any = None) -> dict[str, Any]:
    """The entry of a try's ``facts``, costed, the cost metrics going to ``emitter`` (if any). Raises on bad
    facts or a cost that cannot be estimated."""
    return build_entry(facts, cost=_cost(facts, emitter), log_location=log_location(facts))


def build_try_entry(ctx: Any, ti: Any, *, emitter: Any = None, **fields: Any) -> dict[str, Any]:
    """This try's entry (``fields``: those of :func:`try_facts`), costed, the cost metrics going to
    ``emitter`` (if any). Raises on a bad input."""
    return entry_of(try_facts(ctx, ti, emitter=emitter, **fields), emitter=emitter)


def record_try(ctx: Any, ti: Any, *, handoff: bool = False, emitter: Any = None, **fields: Any) -> str:
    """Write this try's entry (``fields``: those of :func:`try_facts`); ``stored``, ``spooled``, ``lost`` or
    ``off``; ``handed_off`` (``handoff``): the try's facts put in the outbox for the spool's forwarder, which
    makes, costs and stores the entry (:func:`deliver_entry`). Never raises."""
    if not config.evidence_on():
        return "off"
    try:
        facts = try_facts(ctx, ti, emitter=emitter, **fields)
        if handoff:
            outbox.add_entry(facts)  # encoded with the outbox's record
            return "handed_off"
        return evidence_spool.write_entry(entry_of(facts, emitter=emitter))
    except Exception:
        log.warning("BareCount could not write the evidence entry of this try", exc_info=True)
        _count_failure("entry")
        return "lost"


def deliver_entry(spooled: Any, *, store: bool = True) -> str:
    """The forwarder's part of a try a task process handed off: its facts as the outbox record holds them
    (``spooled``, read back into :class:`TryFacts`) made into its entry, costed as :func:`entry_of` would have
    (the cost metrics with the task's tags, through this process's direct emitter), then stored, or spooled
    for a later delivery when ``store`` is False (the store failed earlier in the round). Returns ``stored``,
    ``spooled`` or ``lost``; never raises. An entry that cannot be costed is stored without its cost
    (counted), never dropped."""
    try:
        facts = facts_from_json(spooled)
        entry = build_entry(facts, log_location=log_location(facts))
    except Exception:
        log.warning("BareCount could not build the evidence entry of a handed-off try", exc_info=True)
        _count_failure("entry")
        return "lost"
    try:
        emitter = None
        if facts.metric_tags:
            from barecount_provider.telemetry.metrics import get_direct_emitter

            emitter = get_direct_emitter()
        entry["cost"] = _cost(facts, emitter)
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
