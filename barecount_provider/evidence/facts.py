"""A try's facts: what the evidence entry of one task try is made of, in one typed shape.

The task process builds a :class:`TryFacts` once, at the end of the try, from its RunContext and its task
instance. It makes the entry of it itself, or, when it hands its outputs to the forwarder, puts it in its
outbox record as it is (msgspec encodes it there, once); the forwarder reads it back into a
:class:`TryFacts` (:func:`facts_from_json`) and makes the entry. The sealing makes a :class:`TryFacts` of
Airflow's records for a try without a task process. :func:`barecount_provider.evidence.record.build_entry`
makes the entry of it in every case.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

# The identity fields of a try's facts an entry carries under ``context`` (a RunContext's, never the run's
# conf), in this order.
CONTEXT_FIELDS = (
    "tenant",
    "pipeline",
    "runner_class",
    "size",
    "network_profile",
    "image_or_driver_digest",
    "dag_id",
    "run_id",
    "task_id",
    "try_number",
    "map_index",
    "correlation_id",
    "run_token",
)


class TryFacts(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What is known of one task try: its identity (a RunContext's fields, :data:`CONTEXT_FIELDS`), its end
    and what BareCount's operators left on the task. Derived values (the cost, the log's location, when the
    entry was written) are not facts: whoever builds the entry adds them."""

    # identity
    tenant: str
    pipeline: str
    runner_class: str
    size: str
    network_profile: str | None
    image_or_driver_digest: str | None = None
    dag_id: str
    run_id: str
    task_id: str
    try_number: int
    map_index: int
    correlation_id: str
    run_token: str | None = None  # None: a try without a task process
    # the try
    state: str
    source: Literal["task", "airflow"] = "task"  # written by the task process, or built from Airflow's records
    queued_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: float = 0.0  # the run time the task process measured: what its cost is of
    host: str | None = None  # the machine that ran the try (Airflow's hostname_callable)
    metrics: dict[str, Any] = {}  # the resource usage snapshot
    trace: dict[str, Any] | None = None  # trace_id, span_id, sampled: when the try was traced
    error: dict[str, Any] | None = None  # error_class, message: when the try failed
    metric_tags: dict[str, str] | None = None  # the tags of the cost metrics: where the task's emitter had a sink
    # what BareCount's operators left on the task (redacted)
    runner_result: dict[str, Any] | None = None
    policy_validations: list[Any] = []
    policy_exceptions: list[Any] = []
    approvals: list[dict[str, Any]] = []
    replay: Any = None  # a replay's outcome
    dead_letters: Any = None  # the keys of the failed events sent to the dead-letter queue
    health: list[dict[str, Any]] = []  # the health results a sensor or a runner's check before launch recorded

    def context(self) -> dict[str, Any]:
        """The identity an entry carries under ``context``."""
        return {name: getattr(self, name) for name in CONTEXT_FIELDS}


def facts_from_json(value: Any) -> TryFacts:
    """A :class:`TryFacts` from its JSON form as read back (an outbox record's ``entries``: the times as
    RFC 3339 text). Raises ``msgspec.ValidationError`` on a value that is not one."""
    return msgspec.convert(value, TryFacts)
