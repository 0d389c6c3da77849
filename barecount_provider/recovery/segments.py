"""Dead-letter queues of JSON-lines segments: local files (the embedded default) or S3 objects.

* :class:`LocalSegments`: append-only JSON-lines segment files under ``<root>/<tenant>/<pipeline>/``.
  Writers append whole lines to ``current.jsonl`` under an exclusive ``flock`` (a torn tail left by a killed
  writer is closed with a newline first and never parsed as a record); the file is *sealed* by an atomic
  rename to ``seg-<ns>-<id>.jsonl`` when it reaches ``segment_bytes`` or when a replay starts. Only sealed
  segments are replayed and removed; a removal is an ``unlink`` (every line delivered) or an atomic rewrite
  that drops only the lines the replay ledger says were delivered, so a crash or a concurrent replay can
  never drop an undelivered record.
* :class:`S3Segments`: one JSON-lines object per batch sent (a PUT is atomic), removed or rewritten the
  same way.

:class:`SegmentBackend` is the :class:`~barecount_provider.recovery.letters.DeadLetterBackend` over either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from barecount_provider.recovery.letters import DeadLetter, DeliveredKeys, QueueStats, Scope

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024
CURRENT = "current.jsonl"
SEGMENT_PREFIX = "seg-"


def _quote(value: str) -> str:
    return urllib.parse.quote(value or "_", safe="")


def _unquote(value: str) -> str:
    return urllib.parse.unquote(value)


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

    def __init__(self, store: LocalSegments | S3Segments, kind: str) -> None:
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
