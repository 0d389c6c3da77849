"""Dead letters: what a failed record is, which letters a replay takes, and what a queue must do.

A :class:`DeadLetter` carries the failed payload, its error, where it failed (dag, task, run, try), how many
times it was tried, its **idempotency key** (the key every replay delivery carries, so a target applies it
once) and timestamps. :class:`Scope` selects letters (tenant, pipeline, error classes, time range);
:class:`QueueStats` is a queue's depth and oldest entry per tenant and pipeline.

:class:`DeadLetterBackend` is where letters wait; the backends stream (nothing reads a whole queue into
memory): JSON-lines segments, local or in S3 (:mod:`barecount_provider.recovery.segments`), and SQS
(:mod:`barecount_provider.recovery.sqs`). None of these modules imports Airflow: the hook
(:mod:`barecount_provider.hooks.dlq`) gives them AWS clients built by the upstream amazon hooks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

LETTER_VERSION = 1


def now_iso() -> str:
    """UTC, microseconds, always the same width: ISO strings of this form order like the instants."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def iso(value: datetime | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def hash_key(text: str) -> str:
    """An idempotency key made from ``text``: ``sha256:`` and the first 40 hex digits of its hash."""
    return f"sha256:{hashlib.sha256(text.encode()).hexdigest()[:40]}"


def derive_key(tenant: str, pipeline: str, payload: Any) -> str:
    """The idempotency key of a record that has none: the hash of its tenant, pipeline and payload.

    The same record failing twice gets the same key, so a replay delivers it once."""
    return hash_key(f"{tenant}\x1f{pipeline}\x1f{canonical_json(payload)}")


@dataclasses.dataclass(slots=True)
class DeadLetter:
    """One failed record or event in a dead-letter queue."""

    payload: Any
    idempotency_key: str
    error_class: str
    error_message: str
    tenant: str
    pipeline: str
    source: dict[str, Any]
    attempts: int = 1
    first_failed_at: str = ""
    last_failed_at: str = ""
    enqueued_at: str = ""
    letter_id: str = ""
    handle: Any = dataclasses.field(default=None, compare=False, repr=False)  # the backend's position
    size: int = dataclasses.field(default=0, compare=False, repr=False)  # bytes as stored

    def as_dict(self) -> dict[str, Any]:
        return {
            "v": LETTER_VERSION,
            "letter_id": self.letter_id,
            "idempotency_key": self.idempotency_key,
            "tenant": self.tenant,
            "pipeline": self.pipeline,
            "error": {"error_class": self.error_class, "message": self.error_message},
            "source": self.source,
            "attempts": self.attempts,
            "first_failed_at": self.first_failed_at,
            "last_failed_at": self.last_failed_at,
            "enqueued_at": self.enqueued_at,
            "payload": self.payload,
        }

    def line(self) -> bytes:
        return (json.dumps(self.as_dict(), separators=(",", ":"), default=str) + "\n").encode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], handle: Any = None, size: int = 0) -> DeadLetter:
        error = data.get("error") or {}
        return cls(
            payload=data.get("payload"),
            idempotency_key=str(data["idempotency_key"]),
            error_class=str(error.get("error_class") or "unknown"),
            error_message=str(error.get("message") or ""),
            tenant=str(data.get("tenant") or ""),
            pipeline=str(data.get("pipeline") or ""),
            source=dict(data.get("source") or {}),
            attempts=int(data.get("attempts") or 1),
            first_failed_at=str(data.get("first_failed_at") or ""),
            last_failed_at=str(data.get("last_failed_at") or ""),
            enqueued_at=str(data.get("enqueued_at") or ""),
            letter_id=str(data.get("letter_id") or ""),
            handle=handle,
            size=size,
        )


def error_parts(error: BaseException | str | Mapping[str, Any] | None) -> tuple[str, str]:
    """(error class, message) of an exception, a message or an ``{error_class, message}`` mapping."""
    if error is None:
        return "unknown", ""
    if isinstance(error, BaseException):
        return type(error).__name__, str(error)[:4000]
    if isinstance(error, Mapping):
        return str(error.get("error_class") or "unknown"), str(error.get("message") or "")[:4000]
    return "error", str(error)[:4000]


def make_letter(
    payload: Any,
    *,
    tenant: str,
    pipeline: str,
    error: BaseException | str | Mapping[str, Any] | None,
    source: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
    attempts: int = 1,
    first_failed_at: datetime | str | None = None,
) -> DeadLetter:
    error_class, message = error_parts(error)
    stamp = now_iso()
    return DeadLetter(
        payload=payload,
        idempotency_key=idempotency_key or derive_key(tenant, pipeline, payload),
        error_class=error_class,
        error_message=message,
        tenant=tenant,
        pipeline=pipeline,
        source=dict(source or {}),
        attempts=max(1, int(attempts)),
        first_failed_at=iso(first_failed_at) or stamp,
        last_failed_at=stamp,
        enqueued_at=stamp,
        letter_id=uuid.uuid4().hex,
    )


@dataclasses.dataclass(frozen=True)
class Scope:
    """Which dead letters a replay (or a listing) takes. None / empty: any."""

    tenant: str | None = None
    pipeline: str | None = None
    error_classes: tuple[str, ...] = ()
    since: str | None = None  # ISO (see :func:`iso`), on enqueued_at, inclusive
    until: str | None = None  # exclusive

    @classmethod
    def of(
        cls,
        *,
        tenant: str | None = None,
        pipeline: str | None = None,
        error_classes: Iterable[str] | str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
    ) -> Scope:
        if isinstance(error_classes, str):
            error_classes = [part.strip() for part in error_classes.split(",") if part.strip()]
        return cls(tenant or None, pipeline or None, tuple(sorted(error_classes or ())), iso(since), iso(until))

    def matches(self, letter: DeadLetter) -> bool:
        if self.tenant is not None and letter.tenant != self.tenant:
            return False
        if self.pipeline is not None and letter.pipeline != self.pipeline:
            return False
        if self.error_classes and letter.error_class not in self.error_classes:
            return False
        if self.since is not None and letter.enqueued_at < self.since:
            return False
        return not (self.until is not None and letter.enqueued_at >= self.until)

    def describe(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "pipeline": self.pipeline,
            "error_classes": list(self.error_classes),
            "since": self.since,
            "until": self.until,
        }


@dataclasses.dataclass
class QueueStats:
    """Depth and oldest entry of one (tenant, pipeline) in a dead-letter queue."""

    tenant: str
    pipeline: str
    depth: int
    oldest_enqueued_at: str | None  # None: not known (SQS reports no age through its API) or empty
    approximate: bool = False

    def oldest_age_s(self, now: float | None = None) -> float | None:
        if not self.oldest_enqueued_at:
            return None
        reference = time.time() if now is None else now
        return max(0.0, reference - datetime.fromisoformat(self.oldest_enqueued_at).timestamp())


DeliveredKeys = Callable[[Sequence[str]], set[str]]
"""Given idempotency keys, those the replay ledger records as delivered."""


class DeadLetterBackend(Protocol):
    """Where dead letters wait. ``scan`` streams; ``settle`` removes letters the ledger records delivered;
    ``finish`` ends a scan (releases what it held, compacts what it could not remove while scanning)."""

    kind: str

    def describe(self) -> str: ...

    def put(self, letters: Sequence[DeadLetter]) -> None: ...

    def scan(self, scope: Scope) -> Iterator[DeadLetter]: ...

    def settle(self, letters: Sequence[DeadLetter]) -> None: ...

    def finish(self, delivered: DeliveredKeys | None) -> int: ...

    def stats(self, scope: Scope) -> list[QueueStats]: ...
