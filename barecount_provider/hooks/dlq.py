"""``DeadLetterQueueHook``: send failed records and events to a dead-letter queue, read it, measure it.

One hook over three backends (:mod:`barecount_provider.recovery.segments`, :mod:`~barecount_provider.recovery.sqs`): ``sqs`` (production; an SQS queue,
with SQS's redrive semantics), ``s3`` (JSON-lines batches under ``s3://bucket/prefix``) and ``local`` (the
embedded default: segment files under ``[barecount] evidence_dir``/dlq, or ``location``). The AWS clients
come from the upstream ``SqsHook`` / ``S3Hook`` (``aws_conn_id``), whose connection is looked up as every
BareCount process does, in a task or not (:mod:`barecount_provider.connections`).

From task code, one call::

    DeadLetterQueueHook().send(bad_rows, error=err)          # tenant, pipeline, source from the task

From a runner operator (``on_runner_failed``), one call that never raises::

    DeadLetterQueueHook().send_runner_failure(context, result, failed_event)
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from airflow.sdk import BaseHook

from barecount_provider.recovery.letters import (
    DeadLetter,
    DeadLetterBackend,
    QueueStats,
    Scope,
    derive_key,
    error_parts,
    make_letter,
)
from barecount_provider.recovery.segments import (
    DEFAULT_SEGMENT_BYTES,
    LocalSegments,
    S3Segments,
    SegmentBackend,
)
from barecount_provider.recovery.sqs import SqsBackend

log = logging.getLogger(__name__)

BACKENDS = ("local", "s3", "sqs")


def backend_kind(location: str | None) -> str:
    """The backend a location implies: an SQS queue URL, ``s3://``, or a directory (local)."""
    if location and location.startswith("s3://"):
        return "s3"
    if location and location.startswith(("https://sqs.", "http://", "sqs:")):
        return "sqs"
    return "local"


def default_local_dir() -> str:
    from barecount_provider import config

    return os.path.join(config.evidence_dir(), "dlq")


class DeadLetterQueueHook(BaseHook):
    """A dead-letter queue (see the module docstring).

    :param backend: ``local``, ``s3`` or ``sqs``; None: what ``location`` implies.
    :param location: local: a directory; s3: ``s3://bucket/prefix``; sqs: the queue URL. With neither
        ``backend`` nor ``location``: the deployment's queue, ``[barecount] dlq_location`` (empty: the local
        directory ``[barecount] evidence_dir``/dlq, which is per machine).
    :param aws_conn_id: the AWS connection of the upstream SqsHook / S3Hook; left at ``aws_default`` for the
        configured queue: ``[barecount] dlq_aws_conn_id``.
    :param tenant: / pipeline: defaults for records sent outside a task (inside one, the task's context).
    :param visibility_timeout: sqs: seconds a message a replay scanned stays invisible to others.
    :param message_group_id: sqs FIFO queues: the group of the dead letters sent (default: the pipeline).
    """

    conn_name_attr = "aws_conn_id"
    default_conn_name = "aws_default"
    conn_type = "aws"
    hook_name = "BareCount dead-letter queue"

    def __init__(
        self,
        backend: str | None = None,
        location: str | None = None,
        *,
        aws_conn_id: str | None = "aws_default",
        tenant: str | None = None,
        pipeline: str | None = None,
        visibility_timeout: int = 300,
        message_group_id: str | None = None,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        emit_metrics: bool = True,
    ) -> None:
        super().__init__()
        if backend is None and location is None:
            from barecount_provider import config

            location = config.dlq_location() or None
            if location is not None and aws_conn_id == self.default_conn_name:
                aws_conn_id = config.dlq_aws_conn_id()
        kind = backend or backend_kind(location)
        if kind not in BACKENDS:
            raise ValueError(f"dead-letter queue backend {kind!r}: expected one of {', '.join(BACKENDS)}")
        if kind == "sqs" and not location:
            raise ValueError("the sqs dead-letter queue needs its queue URL (location)")
        if kind == "s3" and not (location or "").startswith("s3://"):
            raise ValueError("the s3 dead-letter queue needs location s3://bucket/prefix")
        self.backend_kind = kind
        self.location = (location or "").removeprefix("sqs:") or None
        self.aws_conn_id = aws_conn_id
        self.tenant, self.pipeline = tenant, pipeline
        self.visibility_timeout, self.message_group_id = visibility_timeout, message_group_id
        self.segment_bytes = segment_bytes
        self.emit_metrics_on_send = emit_metrics

    @functools.cached_property
    def backend(self) -> DeadLetterBackend:
        if self.backend_kind == "local":
            return SegmentBackend(LocalSegments(self.location or default_local_dir(), segment_bytes=self.segment_bytes), "local")
        from barecount_provider import connections

        if self.backend_kind == "s3":
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            bucket, _, prefix = (self.location or "").removeprefix("s3://").partition("/")
            client = connections.hook(S3Hook, aws_conn_id=self.aws_conn_id).get_conn()
            return SegmentBackend(S3Segments(client, bucket, prefix), "s3")
        from airflow.providers.amazon.aws.hooks.sqs import SqsHook

        return SqsBackend(
            connections.hook(SqsHook, aws_conn_id=self.aws_conn_id).get_conn(),
            str(self.location),
            tenant=self.tenant or "",
            pipeline=self.pipeline or "",
            visibility_timeout=self.visibility_timeout,
            message_group_id=self.message_group_id,
        )

    def get_conn(self) -> DeadLetterBackend:
        return self.backend

    # ------------------------------------------------------------------------------------------- sending

    def _identity(self, context: Mapping[str, Any] | None) -> tuple[str, str, dict[str, Any]]:
        """(tenant, pipeline, source) of the task that sends, from its context (or the current one)."""
        if context is None:
            try:
                from airflow.sdk import get_current_context

                context = get_current_context()
            except Exception:  # outside a task
                context = None
        ti = (context or {}).get("ti")
        if ti is None:
            from barecount_provider import config

            return self.tenant or config.default_tenant(), self.pipeline or "default", {"kind": "external"}
        from barecount_provider.context import resolve_for_ti

        ctx = resolve_for_ti(ti)
        source = {
            "kind": "task",
            "dag_id": ctx.dag_id,
            "task_id": ctx.task_id,
            "run_id": ctx.run_id,
            "try_number": ctx.try_number,
            "map_index": ctx.map_index,
            "correlation_id": ctx.correlation_id,
        }
        return self.tenant or ctx.tenant, self.pipeline or ctx.pipeline, source

    def send(
        self,
        records: Any,
        *,
        error: BaseException | str | Mapping[str, Any] | None,
        idempotency_key: str | Callable[[Any], str] | None = None,
        attempts: int | None = None,
        context: Mapping[str, Any] | None = None,
        source: Mapping[str, Any] | None = None,
        first_failed_at: Any = None,
    ) -> list[str]:
        """Send failed ``records`` (a list: one letter each; anything else: one letter) with their ``error``.

        :param idempotency_key: a key (one record), a function of the record, or None: the hash of tenant,
            pipeline and record (the same record sent twice gets the same key).
        :param attempts: tries made so far; default the task's try number.
        Returns the idempotency keys. Raises when the backend refuses (the records were not captured).
        """
        items = list(records) if isinstance(records, list | tuple) else [records]
        if not items:
            return []
        if isinstance(idempotency_key, str) and len(items) > 1:
            raise ValueError("one idempotency_key for several records: give a function of the record, or None")
        tenant, pipeline, task_source = self._identity(context)
        merged = {**task_source, **dict(source or {})}
        tries = attempts if attempts is not None else int(merged.get("try_number") or 1)
        letters = []
        for item in items:
            key = idempotency_key(item) if callable(idempotency_key) else idempotency_key
            letters.append(
                make_letter(
                    item,
                    tenant=tenant,
                    pipeline=pipeline,
                    error=error,
                    source=merged,
                    idempotency_key=key,
                    attempts=tries,
                    first_failed_at=first_failed_at,
                )
            )
        self.put(letters)
        return [letter.idempotency_key for letter in letters]

    def put(self, letters: list[DeadLetter]) -> None:
        """Store ready-made letters and count them (``barecount.dlq.entries``)."""
        self.backend.put(letters)
        if self.emit_metrics_on_send:
            counts: dict[tuple[str, str, str], int] = {}
            for letter in letters:
                group = (letter.tenant, letter.pipeline, letter.error_class)
                counts[group] = counts.get(group, 0) + 1
            _emit(
                [
                    ("barecount.dlq.entries", "counter", float(n), {"tenant": t, "pipeline": p, "error_class": e, "backend": self.backend_kind})
                    for (t, p, e), n in counts.items()
                ]
            )

    def send_runner_failure(self, context: Mapping[str, Any], result: Any, failed_event: Any) -> str | None:
        """Send a runner operator's failed event (``on_runner_failed``). Never raises: when the backend
        refuses, the letter goes to the local queue instead, and the failure is counted
        (``barecount.emit.failed``, sink ``dlq``). Returns the key, None when even that failed."""
        try:
            runner = getattr(result, "as_dict", lambda: dict(result or {}))()
            error = runner.get("error") or {"error_class": "RunnerFailed", "message": "the workload failed"}
            tenant, pipeline, source = self._identity(context)
            source = {
                **source,
                "kind": f"runner:{runner.get('runner_class', 'unknown')}",
                "external_run_id": runner.get("external_run_id"),
                "console_link": runner.get("console_link"),
            }
            key = _event_key(source, failed_event)
            letter = make_letter(
                failed_event,
                tenant=str(runner.get("tenant") or tenant),
                pipeline=str(runner.get("pipeline") or pipeline),
                error=error,
                source=source,
                idempotency_key=key,
                attempts=int(source.get("try_number") or 1),
            )
        except Exception:
            log.warning("BareCount could not build the dead letter of a failed event", exc_info=True)
            _count_failure("build")
            return None
        try:
            self.put([letter])
            return letter.idempotency_key
        except Exception as err:
            log.warning("BareCount could not send the failed event to the %s dead-letter queue: %s", self.backend_kind, err)
            _count_failure("send")
        if self.backend_kind == "local":
            return None
        try:  # nothing is lost: the embedded queue keeps it until the real one is back
            DeadLetterQueueHook("local", emit_metrics=self.emit_metrics_on_send).put([letter])
            log.warning("BareCount kept the failed event in the local dead-letter queue %s", default_local_dir())
            return letter.idempotency_key
        except Exception:
            log.warning("BareCount could not keep the failed event locally either", exc_info=True)
            _count_failure("fallback")
            return None

    # ------------------------------------------------------------------------------------------- reading

    def scan(self, scope: Scope | None = None, limit: int | None = None) -> Iterator[DeadLetter]:
        """Stream the letters in ``scope`` (nothing is removed; SQS messages are released at the end)."""
        backend = self.backend
        count = 0
        try:
            for letter in backend.scan(scope or Scope()):
                yield letter
                count += 1
                if limit is not None and count >= limit:
                    return
        finally:
            backend.finish(None)

    def stats(self, scope: Scope | None = None) -> list[QueueStats]:
        return self.backend.stats(scope or Scope())

    def emit_metrics(self, scope: Scope | None = None) -> list[QueueStats]:
        """Emit ``barecount.dlq.depth`` and ``barecount.dlq.oldest_age`` per tenant and pipeline."""
        from barecount_provider.recovery.replay import stats_points

        stats = self.stats(scope)
        _emit(stats_points(stats, self.backend_kind))
        return stats

    def describe(self) -> str:
        return self.backend.describe()


def _event_key(source: Mapping[str, Any], failed_event: Any) -> str:
    """The key of a runner's failed event: its task (dag, task, run, map index) and the event itself, so
    the same event failing on every retry is one record to replay."""
    identity = [source.get(name) for name in ("dag_id", "task_id", "run_id", "map_index")]
    return derive_key("event", "\x1f".join(str(part) for part in identity), failed_event)


def _emit(points: Iterable[tuple[str, str, float, Mapping[str, Any]]]) -> None:
    try:
        from barecount_provider.telemetry.metrics import get_emitter

        get_emitter().emit(list(points))
    except Exception:
        _count_failure("emit")


def _count_failure(stage: str) -> None:
    try:
        from barecount_provider.telemetry.metrics import EMIT_FAILURES

        EMIT_FAILURES.record("dlq", stage)
    except Exception:
        pass


__all__ = ["DeadLetterQueueHook", "Scope", "error_parts"]
