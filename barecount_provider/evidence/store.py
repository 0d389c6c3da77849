"""Where evidence lives: bodies (entries and records) in files or S3, and an SQL index of the records.

* **local** (the embedded default): bodies as files under ``[barecount] evidence_dir``; the index in SQLite
  at ``evidence_dir/index.db`` (or ``evidence_index_url``).
* **s3** (production): one object per entry and per record in ``evidence_s3_bucket`` (optional Object Lock
  retention on records), the index in PostgreSQL (``evidence_index_url``).

The index is SQLAlchemy Core, so SQLite and PostgreSQL run the same statements. Appending to a tenant's
chain is a conditional insert: the row ``(tenant, sequence)`` is unique, so when two writers on two
machines race for the same sequence number one insert fails and that writer retries on the new head;
both records end up in one chain. A record is keyed by its run (``record_id``): written twice, stored once.

Bodies are written atomically (a temporary file renamed into place; an S3 PUT is atomic): a process killed
mid-write leaves no torn body.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
import random
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import sqlalchemy as sa

from barecount_provider import config, db
from barecount_provider.db.schema import (  # noqa: F401 (the index's tables, imported from here too)
    cost_lines_table,
    digests_table,
    hosts_table,
    pending_table,
    records_table,
)
from barecount_provider.evidence.record import (
    GENESIS_HASH,
    ChainProblem,
    ChainReport,
    Gone,
    canonical,
    chained,
    check_chain,
    now_iso,
    record_hash,
)

if TYPE_CHECKING:
    from barecount_provider.evidence.checkpoint import CheckpointSetup

log = logging.getLogger(__name__)

APPEND_ATTEMPTS = 200  # a lost race retries after a short random pause: writers never starve each other

# ------------------------------------------------------------------------------------------------- index

COST_GROUPS = ("tenant", "pipeline", "runner_class", "size", "dag_id")


def _epoch(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class RecordFilter:
    """Filters of a record listing; None: any. ``dag_ids``: only these DAGs (a user's readable DAGs)."""

    tenant: str | None = None
    pipeline: str | None = None
    dag_id: str | None = None
    state: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    dag_ids: frozenset[str] | None = None


class Index:
    """The SQL index of records and their cost lines."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = db.create_engine(url)
        db.ensure_schema(self.engine)

    def head(self, connection: sa.Connection, tenant: str) -> tuple[int, str]:
        row = connection.execute(
            sa.select(records_table.c.sequence, records_table.c.hash)
            .where(records_table.c.tenant == tenant)
            .order_by(records_table.c.sequence.desc())
            .limit(1)
        ).first()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS_HASH)

    def first_seen(self, connection: sa.Connection, tenant: str, digests: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[str, str]]:
        """(kind, value) -> (first_seen, first_record_id) of the digests this tenant's records saw before."""
        values = sorted({str(d["value"]) for d in digests})
        if not values:
            return {}
        rows = connection.execute(
            sa.select(digests_table).where(digests_table.c.tenant == tenant, digests_table.c.value.in_(values))
        ).all()
        return {(row.kind, row.value): (row.first_seen, row.first_record_id) for row in rows}

    def row(self, record_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(records_table).where(records_table.c.record_id == record_id)).first()
        return dict(row._mapping) if row else None

    def _where(self, query: Any, filters: RecordFilter) -> Any:
        columns = records_table.c
        for column, value in (
            (columns.tenant, filters.tenant),
            (columns.pipeline, filters.pipeline),
            (columns.dag_id, filters.dag_id),
            (columns.state, filters.state),
        ):
            if value is not None:
                query = query.where(column == value)
        if filters.since is not None:
            query = query.where(columns.ended_epoch >= filters.since.timestamp())
        if filters.until is not None:
            query = query.where(columns.ended_epoch < filters.until.timestamp())
        if filters.dag_ids is not None:
            query = query.where(columns.dag_id.in_(sorted(filters.dag_ids)))
        return query

    def list_rows(self, filters: RecordFilter, *, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        query = self._where(sa.select(records_table), filters)
        count = self._where(sa.select(sa.func.count()).select_from(records_table), filters)
        with self.engine.connect() as connection:
            total = int(connection.execute(count).scalar_one())
            rows = connection.execute(
                query.order_by(records_table.c.ended_epoch.desc(), records_table.c.record_id).limit(limit).offset(offset)
            ).all()
        return [dict(row._mapping) for row in rows], total

    def chain_rows(self, tenant: str) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(records_table).where(records_table.c.tenant == tenant).order_by(records_table.c.sequence)
            ).all()
        return [dict(row._mapping) for row in rows]

    def tenants(self) -> list[str]:
        with self.engine.connect() as connection:
            return sorted(str(row[0]) for row in connection.execute(sa.select(records_table.c.tenant).distinct()))

    def cost_rollup(
        self,
        by: Sequence[str],
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        tenant: str | None = None,
        dag_ids: frozenset[str] | None = None,
        per_day: bool = True,
    ) -> list[dict[str, Any]]:
        for name in by:
            if name not in COST_GROUPS:
                raise ValueError(f"cost roll-up by {name!r}: expected one of {', '.join(COST_GROUPS)}")
        table = cost_lines_table.c
        keys = ([table.day] if per_day else []) + [getattr(table, name) for name in by]
        sums = [
            sa.func.sum(getattr(table, name)).label(name)
            for name in ("runtime_hours", "compute_usd", "storage_usd", "transfer_usd", "total_usd")
        ]
        query = sa.select(*keys, *sums, sa.func.count(sa.distinct(table.record_id)).label("runs"))
        if since is not None:
            query = query.where(table.day >= since.astimezone(UTC).date().isoformat())
        if until is not None:
            query = query.where(table.day < until.astimezone(UTC).date().isoformat())
        if tenant is not None:
            query = query.where(table.tenant == tenant)
        if dag_ids is not None:
            query = query.where(table.dag_id.in_(sorted(dag_ids)))
        query = query.group_by(*keys).order_by(*keys)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query).all()]


# ------------------------------------------------------------------------------------------------ bodies


class Bodies(Protocol):
    """Where entry and record bodies are kept."""

    def put(self, key: str, document: Mapping[str, Any], *, record: bool = False) -> str: ...

    def get(self, location: str) -> dict[str, Any] | None: ...

    def keys_under(self, prefix: str) -> list[str]: ...

    def delete(self, location: str) -> None: ...


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]+")  # what urllib.parse.quote never changes
_RUN_ID_LIKE = re.compile(r"[A-Za-z0-9_.~:+-]+")  # ... and the two characters Airflow's run ids add


def _segment(value: str) -> str:
    """``value`` as one path segment: ``urllib.parse.quote(value, safe="")``, answered at once for the usual
    DAG ids and entry ids that need no quoting, and for run ids (``manual__2026-11-27T12:00:00+00:00``),
    whose only quoted characters are ``:`` and ``+``."""
    if _UNRESERVED.fullmatch(value):
        return value
    if _RUN_ID_LIKE.fullmatch(value):
        return value.replace(":", "%3A").replace("+", "%2B")
    return urllib.parse.quote(value, safe="")


_MADE_DIRS: set[str] = set()
# msgspec (the task SDK's own serializer): one buffer, no string per key and value (see filesink).
_encode_sorted = msgspec.json.Encoder(enc_hook=str, order="sorted").encode


def encode_document(document: Mapping[str, Any]) -> bytes:
    """A body as stored: JSON (UTF-8), sorted keys, no whitespace; types JSON lacks go through ``str``."""
    return _encode_sorted(document)


_TEMP_COUNTER = itertools.count()


def atomic_write_json(path: str, document: Mapping[str, Any], *, durable: bool = False) -> None:
    """Write ``document`` to ``path`` so that a reader never sees a partial file (temporary file + rename).

    A process killed mid-write leaves the old file or none, never a torn one. ``durable`` also fsyncs the
    file before the rename (records: a power loss cannot lose them); entries skip it (a few ms per task)."""
    directory = os.path.dirname(path)
    if directory not in _MADE_DIRS:
        try:
            os.mkdir(directory)  # the usual case: the parent (the store's root, a run's tenant) exists
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(directory, exist_ok=True)
        _MADE_DIRS.add(directory)
    data = encode_document(document)
    temporary = os.path.join(directory, f".tmp-{os.getpid()}-{next(_TEMP_COUNTER)}-{os.path.basename(path)}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


# How many path segments a key has after its first one: records/<tenant>/<file>, entries/<dag>/<run>/<file>.
_KEY_DEPTH = {"entries": 4, "records": 3}


def relative_key(location: str) -> str:
    """The store-relative key of ``location``: a key as the index stores it (``records/<tenant>/<file>``), or
    an absolute path or URL of an older index (made before keys were relative), cut at its ``records/`` or
    ``entries/`` part. A copied store thus reads its own bodies, never the original's."""
    if location.startswith("s3://"):
        location = location.removeprefix("s3://").partition("/")[2]
    parts = location.replace(os.sep, "/").split("/")
    for first, depth in _KEY_DEPTH.items():
        if len(parts) >= depth and parts[-depth] == first:
            return "/".join(parts[-depth:])
    return location


class LocalBodies:
    """Bodies as files under ``root``; a location is the key relative to ``root``."""

    def __init__(self, root: str) -> None:
        self.root = root

    def path(self, location: str) -> str:
        """The file of ``location`` (a relative key, or an absolute path of an older index) in this store."""
        return os.path.join(self.root, *relative_key(location).split("/"))

    def put(self, key: str, document: Mapping[str, Any], *, record: bool = False) -> str:
        atomic_write_json(os.path.join(self.root, *key.split("/")), document, durable=record)
        return key

    def get(self, location: str) -> dict[str, Any] | None:
        try:
            with open(self.path(location), encoding="utf-8") as file:
                return dict(json.load(file))
        except FileNotFoundError:
            return None

    def keys_under(self, prefix: str) -> list[str]:
        directory = os.path.join(self.root, *prefix.strip("/").split("/"))
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
        return [os.path.join(directory, name) for name in names if name.endswith(".json") and not name.startswith(".tmp-")]

    def delete(self, location: str) -> None:
        try:
            os.unlink(self.path(location))
        except FileNotFoundError:
            pass


class S3Bodies:
    """One object per body. Records may get Object Lock retention (COMPLIANCE) for ``lock_days``."""

    def __init__(self, client: Any, bucket: str, prefix: str, lock_days: int = 0) -> None:
        if not bucket:
            raise ValueError("[barecount] evidence_s3_bucket is empty: the s3 evidence store needs a bucket")
        self.client, self.bucket, self.prefix, self.lock_days = client, bucket, prefix.strip("/"), lock_days

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, document: Mapping[str, Any], *, record: bool = False) -> str:
        body = encode_document(document)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "Body": body, "ContentType": "application/json"}
        if record and self.lock_days:
            kwargs["ObjectLockMode"] = "COMPLIANCE"
            kwargs["ObjectLockRetainUntilDate"] = datetime.now(UTC) + timedelta(days=self.lock_days)
        self.client.put_object(**kwargs)
        return f"s3://{self.bucket}/{self._key(key)}"

    def _split(self, location: str) -> str:
        """The object key of ``location``: this store's key for a relative key; the key of an ``s3://`` URL
        (of this bucket, or of the bucket this one was copied from) as it is."""
        if location.startswith("s3://"):
            return location.removeprefix("s3://").partition("/")[2]
        return self._key(location)

    def get(self, location: str) -> dict[str, Any] | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._split(location))
        except self.client.exceptions.NoSuchKey:
            return None
        return dict(json.loads(response["Body"].read()))

    def keys_under(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        keys: list[str] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix.strip("/")) + "/"):
            keys.extend(f"s3://{self.bucket}/{item['Key']}" for item in page.get("Contents") or ())
        return sorted(keys)

    def delete(self, location: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._split(location))


# ------------------------------------------------------------------------------------------------- store


def entry_key(dag_id: str, run_id: str, entry_id: str) -> str:
    return f"entries/{_segment(dag_id)}/{_segment(run_id)}/{_segment(entry_id)}.json"


def record_key(tenant: str, sequence: int, record_id: str) -> str:
    """A body key of its own per append attempt: two writers racing with the same record never share a
    body, so the loser deletes only its own."""
    return f"records/{_segment(tenant)}/{sequence:012d}-{record_id}-{uuid.uuid4().hex[:12]}.json"


class EvidenceStore:
    """Entries and records: the bodies in ``bodies``, the records' index in ``index``."""

    def __init__(self, bodies: Bodies, index: Index | str, kind: str, checkpoints: CheckpointSetup | None = None) -> None:
        self.bodies, self.kind = bodies, kind
        self._index = index  # an Index, or its URL: opened on first use (a task process never needs it)
        self._checkpoints = checkpoints  # None: the configured ones, resolved on first use

    @property
    def checkpoints(self) -> CheckpointSetup:
        if self._checkpoints is None:
            from barecount_provider.evidence.checkpoint import configured_setup

            self._checkpoints = configured_setup()
        return self._checkpoints

    @property
    def index(self) -> Index:
        if isinstance(self._index, str):
            self._index = _index(self._index)
        return self._index

    # entries -------------------------------------------------------------------------------------------

    def put_entry(self, entry: Mapping[str, Any]) -> str:
        """Store one task try's entry; idempotent (its key is its id)."""
        ctx = entry["context"]
        return self.bodies.put(entry_key(str(ctx["dag_id"]), str(ctx["run_id"]), str(entry["entry_id"])), entry)

    def entries_for_run(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        entries = []
        for location in self.bodies.keys_under(f"entries/{_segment(dag_id)}/{_segment(run_id)}"):
            body = self.bodies.get(location)
            if body is not None:
                entries.append(body)
        return entries

    # records -------------------------------------------------------------------------------------------

    def append(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Chain ``record`` after its tenant's head and store it; a record already stored is returned as is."""
        record_id = str(record["record_id"])
        tenant = str(record["tenant"])
        for _attempt in range(APPEND_ATTEMPTS):
            existing = self.get(record_id)
            if existing is not None:
                return existing
            with self.index.engine.connect() as connection:
                sequence, previous_hash = self.index.head(connection, tenant)
                seen_before = self.index.first_seen(connection, tenant, list(record.get("digests") or ()))
            stored = chained(_with_first_seen(record, seen_before), sequence + 1, previous_hash)
            location = self.bodies.put(record_key(tenant, sequence + 1, record_id), stored, record=True)
            try:
                with self.index.engine.begin() as connection:
                    connection.execute(sa.insert(records_table).values(**_row(stored, location)))
                    lines = _cost_lines(stored)
                    if lines:
                        connection.execute(sa.insert(cost_lines_table), lines)
                    new_digests = [
                        {**digest_key, "tenant": tenant, "first_record_id": record_id}
                        for digest_key in _digest_rows(stored)
                        if (digest_key["kind"], digest_key["value"]) not in seen_before
                    ]
                    if new_digests:
                        connection.execute(sa.insert(digests_table), new_digests)
            except sa.exc.IntegrityError:
                # another writer took this sequence number (or stored this record): drop our body, retry
                try:
                    self.bodies.delete(location)
                except Exception:  # an S3 object under Object Lock stays: it is in no index row
                    log.debug("evidence: could not delete the losing body %s", location, exc_info=True)
                time.sleep(random.uniform(0.001, 0.005 * min(_attempt + 1, 10)))  # let the winner's peers settle
                continue
            self._sign(stored)
            return stored
        raise RuntimeError(f"evidence: could not append record {record_id} to tenant {tenant!r}'s chain")

    def _sign(self, stored: Mapping[str, Any]) -> None:
        """A signed checkpoint of the new chain head (when a key is configured); never raises."""
        try:
            signer = self.checkpoints.signer
            if signer is not None:
                signer.after_append(stored)
        except Exception:
            log.warning("BareCount could not checkpoint evidence record %s", stored.get("record_id"), exc_info=True)

    def get(self, record_id: str) -> dict[str, Any] | None:
        row = self.index.row(record_id)
        return self.bodies.get(row["location"]) if row else None

    def body_path(self, record_id: str) -> str | None:
        """The file of a record's body in a local store (None: no such record, or not a local store)."""
        row = self.index.row(record_id)
        return self.bodies.path(row["location"]) if row and isinstance(self.bodies, LocalBodies) else None

    def integrity(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Whether a record as read still gives its hash and matches its index row (served with the record).

        ``status``: ``ok``; ``redacted`` (its content is the redacted body an intact redaction record of the
        chain commits to); or ``mismatch`` (altered: its content does not give its hash, or its index row
        does not match it)."""
        chain = record.get("chain") or {}
        computed = record_hash(record)
        row = self.index.row(str(record.get("record_id")))
        index_matches = row is not None and row["hash"] == chain.get("hash") and row["sequence"] == chain.get("sequence")
        hash_matches = computed == chain.get("hash")
        redacted = False
        block = record.get("redacted")
        if not hash_matches and isinstance(block, Mapping):
            redaction = self.get(str(block.get("by_record")))
            details = (redaction or {}).get("redaction") or {}
            redacted = (
                redaction is not None
                and record_hash(redaction) == (redaction.get("chain") or {}).get("hash")
                and details.get("supersedes") == record.get("record_id")
                and details.get("redacted_hash") == computed
                and details.get("original_hash") == chain.get("hash")
            )
        status = "ok" if hash_matches and index_matches else ("redacted" if redacted and index_matches else "mismatch")
        return {
            "status": status,
            "hash_matches": hash_matches,
            "index_matches": index_matches,
            "computed_hash": computed,
            "redacted": redacted,
        }

    def list_records(
        self, filters: RecordFilter, *, limit: int = 50, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of the index's rows (newest first) and the total that match."""
        return self.index.list_rows(filters, limit=limit, offset=offset)

    def verify(self, tenant: str | None = None) -> dict[str, list[ChainProblem]]:
        """Every tenant's (or one tenant's) chain problems. Empty lists: intact."""
        return {name: report.problems for name, report in self.verify_report(tenant).items()}

    def verify_report(self, tenant: str | None = None) -> dict[str, ChainReport]:
        """Verify every tenant's chain (or one), from the index, the bodies and the signed checkpoints.

        The tenants are those of the index and, when a public key is configured, those of the checkpoints:
        a tenant whose records all vanished from the store is still named."""
        public_key = self.checkpoints.public_key()
        unreadable = False
        try:
            signed = self.checkpoints.read() if public_key is not None else []
        except Exception:  # the checkpoint bucket down, no permission: nothing is verified by them
            log.warning("BareCount could not read the evidence checkpoints", exc_info=True)
            signed, unreadable = [], True
        names = [tenant] if tenant else sorted(set(self.index.tenants()) | {c.tenant for c in signed})
        results: dict[str, ChainReport] = {}
        for name in names:
            items: list[Mapping[str, Any] | Gone] = []
            extra: list[tuple[int, str, str, str]] = []
            for row in self.index.chain_rows(name):
                sequence, record_id = int(row["sequence"]), str(row["record_id"])
                body = self.bodies.get(row["location"])
                if body is None:
                    detail = f"its body {relative_key(row['location'])} is gone"
                    items.append(Gone(sequence, record_id, str(row["hash"]), str(row["previous_hash"]), detail))
                    continue
                chain = body.get("chain") or {}
                if chain.get("hash") != row["hash"] or body.get("record_id") != record_id:
                    extra.append((sequence, record_id, "altered", "its body does not match the index"))
                if chain.get("sequence") != sequence:
                    extra.append(
                        (sequence, record_id, "reordered", f"the index puts it at sequence {sequence}, its body at {chain.get('sequence')}")
                    )
                items.append(body)
            items.sort(key=_own_sequence)  # the chain's order is the bodies' own; the index's is checked above
            report = check_chain(name, items, checkpoints=[c for c in signed if c.tenant == name], public_key=public_key)
            for problem in extra:
                report.add(*problem)
            if unreadable:
                report.checkpoints = "unreadable"
            report.records = len(items)
            results[name] = report
        return results

    def redact(
        self,
        record_id: str,
        *,
        values: Sequence[str] = (),
        patterns: Sequence[str] = (),
        reason: str,
        by: str,
    ) -> dict[str, Any]:
        """Redact a leaked secret from a sealed record and re-seal: see docs/evidence.md ("Redacting a record").

        1. A **redaction record** is appended to the tenant's chain (so it is linked and checkpointed like any
           record): which record, its original hash, the hash of its redacted body, the field paths changed,
           who, when and why, and a policy exception entry saying the same. It never holds the secret.
        2. The record's body is replaced by the redacted body: every occurrence replaced by ``[REDACTED]``, a
           ``redacted`` block naming the redaction record, and its ``chain`` unchanged (its original hash
           stays, so the next record's link still holds). Its index row then points at the new body.
        3. The old body is deleted (an S3 object under Object Lock stays until its retention ends).

        Verify accepts a body whose content does not give its hash only when an intact redaction record of
        the same chain commits to exactly that redacted content and to that original hash.
        """
        if not values and not patterns:
            raise ValueError("nothing to redact: give --value or --pattern")
        if not reason.strip():
            raise ValueError("a redaction needs a --reason")
        try:
            compiled = [re.compile(pattern) for pattern in patterns]
        except re.error as err:
            raise ValueError(f"--pattern {err.pattern!r}: not a regular expression ({err})") from None
        for pattern in compiled:
            if pattern.fullmatch(""):
                raise ValueError(f"--pattern {pattern.pattern!r} matches the empty string: it would redact everything")
        matchers = [re.compile(re.escape(value)) for value in values if value] + compiled
        row = self.index.row(record_id)
        body = self.bodies.get(row["location"]) if row else None
        if row is None or body is None:
            raise LookupError(f"no evidence record {record_id}")
        assert row is not None
        if isinstance(body.get("redaction"), Mapping):
            raise ValueError(f"record {record_id} is itself a redaction record: redact the record it names instead")
        paths: list[str] = []
        content = {name: value for name, value in body.items() if name not in ("chain", "record_id", "redacted")}
        cleaned = _scrub(content, matchers, "", paths)
        if not paths:
            raise ValueError(f"record {record_id} holds no such value: nothing redacted")
        at = now_iso()
        redaction_id = hashlib.sha256(canonical(["barecount-redaction", record_id, at])).hexdigest()[:32]
        chain = body["chain"]
        redacted_body = {
            **cleaned,
            "record_id": record_id,
            "chain": chain,
            "redacted": {"by_record": redaction_id, "at": at, "paths": paths},
        }
        clean_reason = _scrub(reason, matchers, "", [])
        exception = {
            "rule": "evidence.redaction",
            "tenant": body["tenant"],
            "limit": "no secret in evidence",
            "requested": f"redact {len(paths)} field(s) of record {record_id}",
            "record_id": record_id,
            "paths": paths,
            "by": by,
            "at": at,
            "reason": clean_reason,
        }
        redaction = {
            "schema_version": body.get("schema_version", 1),
            "record_id": redaction_id,
            **{name: body.get(name) for name in ("tenant", "pipeline", "dag_id", "run_id", "run_type", "started_at", "ended_at", "correlation_id", "trace_id")},
            "state": "redaction",
            "sealed_at": at,
            "complete": True,
            "absent": [],
            "metrics": {"tries": 0, "by_state": {}},
            "cost": {"total_usd": 0.0, "complete": True, "unknown": [], "currency": "USD", "basis": [], "price_tables": [], "lines": []},
            "policy": {"validations": [], "exceptions": [exception]},
            "approvals": [],
            "digests": [],
            "entries": [],
            "redaction": {
                "supersedes": record_id,
                "sequence": chain["sequence"],
                "original_hash": chain["hash"],
                "redacted_hash": record_hash(redacted_body),
                "paths": paths,
                "by": by,
                "at": at,
                "reason": clean_reason,
            },
            "chain": None,
        }
        stored = self.append(redaction)
        location = self.bodies.put(record_key(str(body["tenant"]), int(chain["sequence"]), record_id), redacted_body, record=True)
        with self.index.engine.begin() as connection:
            connection.execute(
                sa.update(records_table).where(records_table.c.record_id == record_id).values(location=location)
            )
        try:
            self.bodies.delete(row["location"])
        except Exception:  # an S3 object under Object Lock: it stays until its retention ends
            log.warning("evidence: the original body of %s could not be deleted (Object Lock?)", record_id, exc_info=True)
        return stored

    def iter_records(self, tenant: str) -> Iterator[dict[str, Any]]:
        for row in self.index.chain_rows(tenant):
            body = self.bodies.get(row["location"])
            if body is not None:
                yield body


REDACTED = "[REDACTED]"


def _scrub(value: Any, matchers: Sequence[re.Pattern[str]], path: str, paths: list[str]) -> Any:
    """``value`` with every match of ``matchers`` in its strings (and keys) replaced; ``paths`` gets the field
    paths changed (``entries[0].error.message``), never the values."""
    if isinstance(value, str):
        cleaned = value
        for matcher in matchers:
            cleaned = matcher.sub(REDACTED, cleaned)
        if cleaned != value:
            paths.append(path or "$")
        return cleaned
    if isinstance(value, Mapping):
        result = {}
        for key, item in value.items():
            clean_key = _scrub(str(key), matchers, "", []) if isinstance(key, str) else key
            where = f"{path}.{clean_key}" if path else str(clean_key)
            if clean_key != key:
                paths.append(f"{where} (key)")
            result[clean_key] = _scrub(item, matchers, where, paths)
        return result
    if isinstance(value, list):
        return [_scrub(item, matchers, f"{path}[{n}]", paths) for n, item in enumerate(value)]
    return value


def _own_sequence(item: Mapping[str, Any] | Gone) -> int:
    if isinstance(item, Gone):
        return item.sequence
    sequence = (item.get("chain") or {}).get("sequence")
    return sequence if isinstance(sequence, int) else 0


def _with_first_seen(record: Mapping[str, Any], seen_before: Mapping[tuple[str, str], tuple[str, str]]) -> dict[str, Any]:
    """The record with each digest's ``first_seen`` (and ``first_record_id``) across the tenant's records."""
    digests = []
    for digest in record.get("digests") or ():
        earlier = seen_before.get((str(digest["kind"]), str(digest["value"])))
        if earlier is not None:
            digests.append({**digest, "first_seen": earlier[0], "first_record_id": earlier[1]})
        else:
            digests.append({**digest, "first_record_id": record["record_id"]})
    return {**record, "digests": digests}


def _digest_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {"kind": str(d["kind"]), "value": str(d["value"])[:512], "first_seen": str(d.get("first_seen") or "")}
        for d in record.get("digests") or ()
    ]


def _row(record: Mapping[str, Any], location: str) -> dict[str, Any]:
    chain = record["chain"]
    return {
        "record_id": record["record_id"],
        "tenant": record["tenant"],
        "sequence": chain["sequence"],
        "previous_hash": chain["previous_hash"],
        "hash": chain["hash"],
        "pipeline": record["pipeline"],
        "dag_id": record["dag_id"],
        "run_id": record["run_id"],
        "state": record["state"],
        "complete": bool(record["complete"]),
        "started_at": record.get("started_at"),
        "ended_at": record.get("ended_at"),
        "ended_epoch": _epoch(record.get("ended_at") or record.get("sealed_at")),
        "total_cost_usd": (record.get("cost") or {}).get("total_usd"),
        "cost_complete": bool((record.get("cost") or {}).get("complete", True)),
        "location": location,
    }


def _cost_lines(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    day = (record.get("ended_at") or record.get("sealed_at") or "")[:10]
    return [
        {
            "record_id": record["record_id"],
            "day": day,
            "dag_id": record["dag_id"],
            **{name: line[name] for name in ("tenant", "pipeline", "runner_class", "size")},
            **{name: float(line.get(name) or 0.0) for name in ("runtime_hours", "compute_usd", "storage_usd", "transfer_usd", "total_usd")},
        }
        for line in (record.get("cost") or {}).get("lines") or ()
    ]


def _s3_client(timeout_ms: int | None = None) -> Any:
    from botocore.config import Config

    from barecount_provider.connections import s3_client

    kwargs: dict[str, Any] = {}
    if timeout_ms is not None:
        # A PutObject can wait up to three of these (connect, the "100-continue" handshake, the response):
        # a third each keeps one call within timeout_ms (measured: benchmarks/bench_evidence_store_down.py).
        seconds = max(0.05, timeout_ms / 1000.0 / 3)
        kwargs["config"] = Config(connect_timeout=seconds, read_timeout=seconds, retries={"total_max_attempts": 1})
    return s3_client(config.evidence_aws_conn_id(), **kwargs)


def open_store(*, kind: str | None = None, index_url: str | None = None, timeout_ms: int | None = None) -> EvidenceStore:
    """The configured store (``[barecount] evidence_store``); ``timeout_ms`` bounds each S3 call."""
    kind = kind or config.evidence_store()
    index = index_url or config.evidence_index_url()
    if kind == "local":
        return EvidenceStore(LocalBodies(config.evidence_dir()), index, "local")
    client = _s3_client(timeout_ms)
    bodies = S3Bodies(client, config.evidence_s3_bucket(), config.evidence_s3_prefix(), config.evidence_s3_object_lock_days())
    return EvidenceStore(bodies, index, "s3")


_INDEX_LOCK = threading.Lock()


@functools.cache
def _index_cached(url: str) -> Index:
    return Index(url)


def _index(url: str) -> Index:
    with _INDEX_LOCK:  # one Index (and engine) per URL and process, even when two threads ask at once
        return _index_cached(url)


def clear_caches() -> None:
    _index_cached.cache_clear()
