"""Dead-letter queues: what a failed record is, and the three places it can wait (local files, S3, SQS).

A :class:`DeadLetter` carries the failed payload, its error, where it failed (dag, task, run, try), how many
times it was tried, its **idempotency key** (the key every replay delivery carries, so a target applies it
once) and timestamps. Backends (all streaming: nothing reads a whole queue into memory):

* :class:`SegmentBackend` over :class:`LocalSegments` (the embedded default): append-only JSON-lines
  segment files under ``<root>/<tenant>/<pipeline>/``. Writers append whole lines to ``current.jsonl`` under
  an exclusive ``flock`` (a torn tail left by a killed writer is closed with a newline first and never
  parsed as a record); the file is *sealed* by an atomic rename to ``seg-<ns>-<id>.jsonl`` when it reaches
  ``segment_bytes`` or when a replay starts. Only sealed segments are replayed and removed; a removal is an
  ``unlink`` (every line delivered) or an atomic rewrite that drops only the lines the replay ledger says
  were delivered, so a crash or a concurrent replay can never drop an undelivered record.
* :class:`SegmentBackend` over :class:`S3Segments`: one JSON-lines object per batch sent (a PUT is atomic),
  removed or rewritten the same way.
* :class:`SqsBackend` (production): one message per record. A message that SQS itself moved to the queue
  by a source queue's redrive policy (``maxReceiveCount`` exceeded) is read too: its body becomes the
  payload, ``ApproximateReceiveCount`` the attempts, and its key comes from an ``idempotency_key`` message
  attribute, the FIFO deduplication id, or the hash of its body. A replay deletes a message once the ledger
  records it delivered (SQS's own redrive moves messages the same way).

This module has no Airflow import: the hook (:mod:`barecount_provider.hooks.dlq`) gives it AWS clients
built by the upstream amazon hooks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

log = logging.getLogger(__name__)

LETTER_VERSION = 1
DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024
CURRENT = "current.jsonl"
SEGMENT_PREFIX = "seg-"
SQS_REDRIVE_ERROR = "sqs.MaxReceiveCountExceeded"


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


def derive_key(tenant: str, pipeline: str, payload: Any) -> str:
    """The idempotency key of a record that has none: the hash of its tenant, pipeline and payload.

    The same record failing twice gets the same key, so a replay delivers it once."""
    digest = hashlib.sha256(f"{tenant}\x1f{pipeline}\x1f{canonical_json(payload)}".encode()).hexdigest()
    return f"sha256:{digest[:40]}"


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


# --------------------------------------------------------------------------------------- JSON-lines segments


def _quote(value: str) -> str:
    return urllib.parse.quote(value or "_", safe="")


def _unquote(value: str) -> str:
    return urllib.parse.unquote(value)


class SegmentStore(Protocol):
    """Files or objects of JSON lines, grouped in ``<tenant>/<pipeline>`` directories."""

    def describe(self) -> str: ...

    def directories(self, tenant: str | None, pipeline: str | None) -> list[tuple[str, str]]: ...

    def append(self, tenant: str, pipeline: str, data: bytes) -> None: ...

    def seal(self, tenant: str, pipeline: str) -> None: ...

    def segments(self, tenant: str, pipeline: str) -> list[str]: ...

    def read_lines(self, segment: str) -> Iterator[bytes]: ...

    def replace(self, segment: str, lines: Iterator[bytes]) -> int: ...

    def delete(self, segment: str) -> None: ...

    @contextlib.contextmanager
    def compacting(self, segment: str) -> Iterator[None]: ...


def _segment_name() -> str:
    return f"{SEGMENT_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.jsonl"


class LocalSegments:
    """Append-only JSON-lines segment files under ``root/<tenant>/<pipeline>/`` (see the module docstring)."""

    def __init__(self, root: str, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES, durable: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.segment_bytes = segment_bytes
        self.durable = durable

    def describe(self) -> str:
        return f"local:{self.root}"

    def _dir(self, tenant: str, pipeline: str) -> str:
        return os.path.join(self.root, _quote(tenant), _quote(pipeline))

    def directories(self, tenant: str | None, pipeline: str | None) -> list[tuple[str, str]]:
        found = []
        try:
            tenants = [_quote(tenant)] if tenant is not None else sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        for quoted_tenant in tenants:
            base = os.path.join(self.root, quoted_tenant)
            try:
                pipelines = [_quote(pipeline)] if pipeline is not None else sorted(os.listdir(base))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for quoted_pipeline in pipelines:
                if os.path.isdir(os.path.join(base, quoted_pipeline)):
                    found.append((_unquote(quoted_tenant), _unquote(quoted_pipeline)))
        return found

    @contextlib.contextmanager
    def _locked(self, directory: str, name: str = ".lock") -> Iterator[None]:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(os.path.join(directory, name), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def append(self, tenant: str, pipeline: str, data: bytes) -> None:
        directory = self._dir(tenant, pipeline)
        with self._locked(directory):
            path = os.path.join(directory, CURRENT)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size:
                    with open(path, "rb") as reader:  # a writer killed mid-line left a torn tail: close it
                        reader.seek(size - 1)
                        if reader.read(1) != b"\n":
                            data = b"\n" + data
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self.durable:
                    os.fsync(fd)
                size += len(data)
            finally:
                os.close(fd)
            if size >= self.segment_bytes:
                os.rename(path, os.path.join(directory, _segment_name()))

    def seal(self, tenant: str, pipeline: str) -> None:
        directory = self._dir(tenant, pipeline)
        path = os.path.join(directory, CURRENT)
        if not os.path.exists(path):
            return
        with self._locked(directory):
            try:
                if os.path.getsize(path):
                    os.rename(path, os.path.join(directory, _segment_name()))
            except FileNotFoundError:
                pass

    def segments(self, tenant: str, pipeline: str) -> list[str]:
        directory = self._dir(tenant, pipeline)
        try:
            names = sorted(n for n in os.listdir(directory) if n.startswith(SEGMENT_PREFIX) and n.endswith(".jsonl"))
        except FileNotFoundError:
            return []
        return [os.path.join(directory, name) for name in names]

    def read_lines(self, segment: str) -> Iterator[bytes]:
        try:
            file = open(segment, "rb", buffering=1 << 20)
        except FileNotFoundError:  # removed by a concurrent replay: every line in it was delivered
            return
        with file:
            yield from file

    def replace(self, segment: str, lines: Iterator[bytes]) -> int:
        """Atomically replace ``segment`` by ``lines`` (deleted when there are none); lines kept."""
        directory, name = os.path.split(segment)
        temporary = os.path.join(directory, f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}")
        kept = 0
        try:
            with open(temporary, "wb") as file:
                for line in lines:
                    file.write(line)
                    kept += 1
                file.flush()
                if self.durable:
                    os.fsync(file.fileno())
            if kept:
                os.replace(temporary, segment)
            else:
                os.unlink(temporary)
                self.delete(segment)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        return kept

    def delete(self, segment: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(segment)

    @contextlib.contextmanager
    def compacting(self, segment: str) -> Iterator[None]:
        with self._locked(os.path.dirname(segment), ".compact.lock"):
            yield


class S3Segments:
    """One JSON-lines object per batch sent, under ``s3://bucket/prefix/<tenant>/<pipeline>/``.

    ``client`` is a boto3 S3 client built by the upstream ``S3Hook`` (``S3Hook(...).get_conn()``)."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        if not bucket:
            raise ValueError("the s3 dead-letter queue needs a bucket (s3://bucket/prefix)")
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _base(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _list(self, prefix: str, delimiter: bool) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = "/"
        yield from paginator.paginate(**kwargs)

    def _children(self, prefix: str) -> list[str]:
        names = []
        for page in self._list(prefix + "/" if prefix else "", True):
            for common in page.get("CommonPrefixes") or ():
                names.append(common["Prefix"].rstrip("/").rsplit("/", 1)[-1])
        return sorted(names)

    def directories(self, tenant: str | None, pipeline: str | None) -> list[tuple[str, str]]:
        tenants = [_quote(tenant)] if tenant is not None else self._children(self._base())
        found: list[tuple[str, str]] = []
        for quoted_tenant in tenants:
            pipelines = [_quote(pipeline)] if pipeline is not None else self._children(self._base(quoted_tenant))
            found.extend((_unquote(quoted_tenant), _unquote(p)) for p in pipelines)
        return found

    def append(self, tenant: str, pipeline: str, data: bytes) -> None:
        key = self._base(_quote(tenant), _quote(pipeline), _segment_name())
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="application/x-ndjson")

    def seal(self, tenant: str, pipeline: str) -> None:  # every object is sealed when written
        return None

    def segments(self, tenant: str, pipeline: str) -> list[str]:
        prefix = self._base(_quote(tenant), _quote(pipeline)) + "/"
        keys: list[str] = []
        for page in self._list(prefix, False):
            keys.extend(item["Key"] for item in page.get("Contents") or () if item["Key"].rsplit("/", 1)[-1].startswith(SEGMENT_PREFIX))
        return sorted(keys)

    def read_lines(self, segment: str) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=segment)["Body"]
        except self.client.exceptions.NoSuchKey:
            return
        yield from body.iter_lines(keepends=True)

    def replace(self, segment: str, lines: Iterator[bytes]) -> int:
        data = b"".join(lines)  # one object: a batch that was sent at once
        if not data:
            self.delete(segment)
            return 0
        self.client.put_object(Bucket=self.bucket, Key=segment, Body=data, ContentType="application/x-ndjson")
        return data.count(b"\n")

    def delete(self, segment: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=segment)

    @contextlib.contextmanager
    def compacting(self, segment: str) -> Iterator[None]:
        yield  # a rewrite only drops delivered lines: racing rewrites may keep some, never drop others


def _parse(line: bytes, handle: Any) -> DeadLetter | None:
    try:
        return DeadLetter.from_dict(json.loads(line), handle, len(line))
    except (ValueError, KeyError, TypeError):
        return None


@dataclasses.dataclass
class _Tally:
    lines: int = 0
    done: int = 0
    read: bool = False  # every line of the segment has been scanned
    unreadable: int = 0
    letters: int = 0


class SegmentBackend:
    """A dead-letter queue of JSON-lines segments (:class:`LocalSegments` or :class:`S3Segments`)."""

    def __init__(self, store: SegmentStore, kind: str) -> None:
        self.store, self.kind = store, kind
        self._tallies: dict[str, _Tally] = {}
        self.unreadable = 0
        self.removed = 0  # letters removed since the last scan started

    def describe(self) -> str:
        return self.store.describe()

    def put(self, letters: Sequence[DeadLetter]) -> None:
        groups: dict[tuple[str, str], list[bytes]] = {}
        for letter in letters:
            groups.setdefault((letter.tenant, letter.pipeline), []).append(letter.line())
        for (tenant, pipeline), lines in groups.items():
            self.store.append(tenant, pipeline, b"".join(lines))

    def scan(self, scope: Scope) -> Iterator[DeadLetter]:
        """Seal the scope's current segments, then stream their letters (oldest segment first)."""
        self._tallies = {}
        self.removed = 0
        for tenant, pipeline in self.store.directories(scope.tenant, scope.pipeline):
            self.store.seal(tenant, pipeline)
            for segment in self.store.segments(tenant, pipeline):
                tally = self._tallies[segment] = _Tally()
                for line in self.store.read_lines(segment):
                    tally.lines += 1
                    letter = _parse(line, segment)
                    if letter is None:
                        if line.strip():
                            tally.unreadable += 1
                            self.unreadable += 1
                            log.warning("dead-letter queue: an unreadable line in %s is kept, not replayed", segment)
                        else:
                            tally.done += 1  # an empty line (the newline closing a torn tail)
                        continue
                    tally.letters += 1
                    if scope.matches(letter):
                        yield letter
                tally.read = True
                self._maybe_remove(segment, tally)

    def _maybe_remove(self, segment: str, tally: _Tally) -> None:
        if tally.read and tally.done >= tally.lines and not tally.unreadable:
            self.store.delete(segment)
            tally.done = -1  # removed
            self.removed += tally.letters

    def settle(self, letters: Sequence[DeadLetter]) -> None:
        """Count ``letters`` (delivered, per the ledger) as done; a segment whose every line is done goes."""
        touched = set()
        for letter in letters:
            tally = self._tallies.get(letter.handle)
            if tally is not None and tally.done >= 0:
                tally.done += 1
                touched.add(letter.handle)
        for segment in touched:
            self._maybe_remove(segment, self._tallies[segment])

    def finish(self, delivered: DeliveredKeys | None) -> int:
        """End a scan: rewrite the scanned segments that still hold delivered lines, dropping only those
        (the ledger decides, at rewrite time). Returns the letters removed during the scan."""
        pending = [s for s, t in self._tallies.items() if t.read and t.done > 0]
        self._tallies = {}
        if delivered is not None:
            for segment in pending:
                self.removed += self.compact_segment(segment, delivered)
        removed, self.removed = self.removed, 0
        return removed

    def compact_segment(self, segment: str, delivered: DeliveredKeys, chunk: int = 2000) -> int:
        with self.store.compacting(segment):
            total = 0

            def kept() -> Iterator[bytes]:
                nonlocal total
                buffer: list[tuple[bytes, str | None]] = []

                def flush() -> Iterator[bytes]:
                    keys = [key for _, key in buffer if key is not None]
                    done = delivered(keys) if keys else set()
                    for line, key in buffer:
                        if key is None or key not in done:
                            yield line
                    buffer.clear()

                for line in self.store.read_lines(segment):
                    total += 1
                    if not line.strip():
                        continue
                    letter = _parse(line, segment)
                    buffer.append((line if line.endswith(b"\n") else line + b"\n", letter.idempotency_key if letter else None))
                    if len(buffer) >= chunk:
                        yield from flush()
                yield from flush()

            kept_lines = self.store.replace(segment, kept())
            return max(0, total - kept_lines)

    def compact(self, scope: Scope, delivered: DeliveredKeys) -> int:
        """Drop delivered lines from every sealed segment in ``scope`` (``barecount dlq compact``)."""
        removed = 0
        for tenant, pipeline in self.store.directories(scope.tenant, scope.pipeline):
            for segment in self.store.segments(tenant, pipeline):
                removed += self.compact_segment(segment, delivered)
        return removed

    def stats(self, scope: Scope) -> list[QueueStats]:
        """Depth and oldest entry per (tenant, pipeline): reads every line in scope (current included)."""
        results = []
        for tenant, pipeline in self.store.directories(scope.tenant, scope.pipeline):
            depth, oldest = 0, None
            segments = list(self.store.segments(tenant, pipeline))
            if isinstance(self.store, LocalSegments):
                segments.append(os.path.join(self.store._dir(tenant, pipeline), CURRENT))
            for segment in segments:
                for line in self.store.read_lines(segment):
                    letter = _parse(line, segment)
                    if letter is None or not scope.matches(letter):
                        continue
                    depth += 1
                    if oldest is None or letter.enqueued_at < oldest:
                        oldest = letter.enqueued_at
            results.append(QueueStats(tenant, pipeline, depth, oldest))
        return results


# ------------------------------------------------------------------------------------------------------ SQS

_SQS_ATTRIBUTES = ("tenant", "pipeline", "error_class", "idempotency_key")


class SqsBackend:
    """A dead-letter queue in SQS (see the module docstring).

    ``client`` is a boto3 SQS client built by the upstream ``SqsHook`` (``SqsHook(...).get_conn()``).
    ``visibility_timeout``: how long a scanned message stays invisible to others while a replay holds it.
    ``tenant`` / ``pipeline``: what a redriven message (which has no BareCount envelope) belongs to.
    """

    kind = "sqs"

    def __init__(
        self,
        client: Any,
        queue_url: str,
        *,
        tenant: str = "",
        pipeline: str = "",
        visibility_timeout: int = 300,
        wait_seconds: int = 1,
        message_group_id: str | None = None,
    ) -> None:
        self.client, self.queue_url = client, queue_url
        self.tenant, self.pipeline = tenant, pipeline
        self.visibility_timeout, self.wait_seconds = visibility_timeout, wait_seconds
        self.fifo = queue_url.endswith(".fifo")
        self.message_group_id = message_group_id
        self._held: dict[str, str] = {}  # message id -> receipt handle of received, undeleted messages
        self.removed = 0

    def describe(self) -> str:
        return f"sqs:{self.queue_url}"

    def put(self, letters: Sequence[DeadLetter]) -> None:
        for start in range(0, len(letters), 10):
            entries = []
            for index, letter in enumerate(letters[start : start + 10]):
                entry: dict[str, Any] = {
                    "Id": str(index),
                    "MessageBody": letter.line().decode().rstrip("\n"),
                    "MessageAttributes": {
                        name: {"DataType": "String", "StringValue": str(value) or "-"}
                        for name, value in (
                            ("tenant", letter.tenant),
                            ("pipeline", letter.pipeline),
                            ("error_class", letter.error_class),
                            ("idempotency_key", letter.idempotency_key),
                        )
                    },
                }
                if self.fifo:
                    entry["MessageGroupId"] = self.message_group_id or letter.pipeline or "barecount"
                    entry["MessageDeduplicationId"] = letter.letter_id
                entries.append(entry)
            response = self.client.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            failed = response.get("Failed") or []
            if failed:
                raise RuntimeError(f"SQS refused {len(failed)} dead letter(s): {failed[0].get('Message')}")

    def _letter(self, message: Mapping[str, Any]) -> DeadLetter:
        body = message.get("Body") or ""
        attributes = message.get("Attributes") or {}
        message_attributes = {k: v.get("StringValue") for k, v in (message.get("MessageAttributes") or {}).items()}
        handle = message["ReceiptHandle"]
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("v") == LETTER_VERSION and "idempotency_key" in data:
            letter = DeadLetter.from_dict(data, handle, len(body))
            receives = int(attributes.get("ApproximateReceiveCount") or 1)
            letter.attempts = max(letter.attempts, letter.attempts + receives - 1)
            return letter
        # a message SQS redrove here from a source queue: no envelope
        sent = attributes.get("SentTimestamp")
        sent_iso = (iso(datetime.fromtimestamp(int(sent) / 1000.0, UTC)) if sent else None) or now_iso()
        key = message_attributes.get("idempotency_key") or attributes.get("MessageDeduplicationId")
        if not key:
            key = "sha256:" + hashlib.sha256(body.encode()).hexdigest()[:40]
        source_arn = attributes.get("DeadLetterQueueSourceArn", "")
        return DeadLetter(
            payload=data if data is not None else body,
            idempotency_key=str(key),
            error_class=message_attributes.get("error_class") or SQS_REDRIVE_ERROR,
            error_message=f"moved by SQS redrive{' from ' + source_arn if source_arn else ''}",
            tenant=message_attributes.get("tenant") or self.tenant,
            pipeline=message_attributes.get("pipeline") or self.pipeline,
            source={"kind": "sqs_redrive", "source_arn": source_arn, "message_id": message.get("MessageId")},
            attempts=int(attributes.get("ApproximateReceiveCount") or 1),
            first_failed_at=sent_iso,
            last_failed_at=sent_iso,
            enqueued_at=sent_iso,
            letter_id=str(message.get("MessageId") or ""),
            handle=handle,
            size=len(body),
        )

    def _receive(self, visibility_timeout: int) -> list[dict[str, Any]]:
        response = self.client.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=self.wait_seconds,
            VisibilityTimeout=visibility_timeout,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        return list(response.get("Messages") or [])

    def scan(self, scope: Scope) -> Iterator[DeadLetter]:
        """Receive until the queue shows nothing new. Every received message is held (invisible) until
        :meth:`settle` deletes it or :meth:`finish` makes it visible again; one that comes back (its
        visibility ended during a long scan) is not yielded twice."""
        self._held = {}
        self.removed = 0
        while True:
            messages = self._receive(self.visibility_timeout)
            fresh = []
            for message in messages:  # all held before any is yielded: a caller may stop after any
                message_id = str(message.get("MessageId"))
                if message_id not in self._held:
                    fresh.append(message)
                self._held[message_id] = message["ReceiptHandle"]
            if not fresh:
                return
            for message in fresh:
                letter = self._letter(message)
                if scope.matches(letter):
                    yield letter

    def settle(self, letters: Sequence[DeadLetter]) -> None:
        """Delete delivered messages (SQS's redrive moves a message the same way)."""
        handles = {letter.handle: letter.letter_id for letter in letters if letter.handle}
        by_handle = {handle: message_id for message_id, handle in self._held.items()}
        items = list(handles)
        for start in range(0, len(items), 10):
            entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(items[start : start + 10])]
            response = self.client.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
            self.removed += len(response.get("Successful") or ())
        for handle in items:
            self._held.pop(by_handle.get(handle, ""), None)

    def hold(self, letters: Sequence[DeadLetter]) -> None:
        """Scanned letters that stay in the queue (every received message is held already)."""
        return None

    def finish(self, delivered: DeliveredKeys | None) -> int:
        held, self._held = list(self._held.values()), {}
        for start in range(0, len(held), 10):
            entries = [
                {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0} for i, h in enumerate(held[start : start + 10])
            ]
            try:
                self.client.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=entries)
            except Exception:  # they become visible at the end of their timeout anyway
                log.debug("dead-letter queue: could not release held SQS messages", exc_info=True)
        removed, self.removed = self.removed, 0
        return removed

    def stats(self, scope: Scope) -> list[QueueStats]:
        """SQS's approximate depth (visible + in flight). Its API reports no age of the oldest message:
        CloudWatch's ApproximateAgeOfOldestMessage does."""
        attributes = self.client.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        ).get("Attributes", {})
        depth = int(attributes.get("ApproximateNumberOfMessages", 0)) + int(
            attributes.get("ApproximateNumberOfMessagesNotVisible", 0)
        )
        return [QueueStats(scope.tenant or self.tenant, scope.pipeline or self.pipeline, depth, None, approximate=True)]
