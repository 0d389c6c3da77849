"""Idempotent replay: re-ingest dead letters into a target, once, throttled, scoped, resumable.

:class:`Replayer` streams a dead-letter queue (:mod:`barecount_provider.recovery.letters`) in batches; each
batch is claimed in the replay ledger (:mod:`barecount_provider.recovery.ledger`), delivered to the target
with every record's idempotency key, and recorded as delivered. So a replay that is re-run, crashes midway or
runs twice at once loses nothing and re-delivers only the batch a crashed run had in flight (counted as
``redelivered``), which an idempotent target applies once. Delivered letters are then removed from the
queue (``remove_delivered``).

Targets (:class:`ReplayTarget`): :class:`CallableTarget` (a Python callable), :class:`LambdaTarget` (the
upstream ``LambdaHook``), :class:`SqsTarget` (the upstream ``SqsHook``; FIFO queues get the key as
``MessageDeduplicationId``) and :class:`SqlTableTarget` (an upsert by key into a SQL table).

:meth:`Replayer.plan` is the dry run: it counts the records a run would deliver (skipping those the ledger
has as delivered), their bytes, and estimates the target's cost; the approval step reads it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from barecount_provider.recovery.ledger import ReplayLedger, ledger_key
from barecount_provider.recovery.letters import (
    DeadLetter,
    DeadLetterBackend,
    QueueStats,
    Scope,
    canonical_json,
    now_iso,
)

log = logging.getLogger(__name__)

OUTCOME_SCHEMA_VERSION = 1
SQS_REQUEST_USD_PER_MILLION = {"standard": 0.40, "fifo": 0.50}  # AWS list prices (us-east-1), per 64 KB chunk


# ---------------------------------------------------------------------------------------------- targets


class PriceSource(Protocol):
    """What a target's estimate reads of a price table (``barecount_provider.cost.PriceTable`` is one)."""

    @property
    def label(self) -> str: ...

    def price(self, *keys: str) -> float | None: ...


class ReplayTarget(Protocol):
    """Where replayed records go. ``deliver`` returns ``{idempotency_key: error}`` for the records it could
    not deliver (an empty dict: all delivered); raising means the whole batch's fate is unknown."""

    kind: str

    def identity(self) -> str: ...

    def deliver(self, letters: Sequence[DeadLetter]) -> dict[str, str]: ...

    def estimate_cost_usd(self, records: int, payload_bytes: int) -> tuple[float, str]: ...


def envelope(letter: DeadLetter) -> dict[str, Any]:
    """What a Lambda function or a queue receives: the record, its key and where it came from."""
    return {
        "idempotency_key": letter.idempotency_key,
        "payload": letter.payload,
        "barecount_replay": {
            "tenant": letter.tenant,
            "pipeline": letter.pipeline,
            "error_class": letter.error_class,
            "attempts": letter.attempts,
            "first_failed_at": letter.first_failed_at,
            "source": letter.source,
        },
    }


class CallableTarget:
    """Calls ``function(payload, idempotency_key)`` per record (``batch=True``: ``function(letters)`` once
    per batch, returning ``{key: error}`` or None). An exception fails that record (or the batch)."""

    kind = "callable"

    def __init__(self, function: Callable[..., Any], *, batch: bool = False, name: str | None = None) -> None:
        self.function, self.batch = function, batch
        self.name = name or f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', repr(function))}"

    def identity(self) -> str:
        return f"callable:{self.name}"

    def deliver(self, letters: Sequence[DeadLetter]) -> dict[str, str]:
        if self.batch:
            return dict(self.function(letters) or {})
        errors: dict[str, str] = {}
        for letter in letters:
            try:
                self.function(letter.payload, letter.idempotency_key)
            except Exception as err:
                errors[letter.idempotency_key] = f"{type(err).__name__}: {err}"
        return errors

    def estimate_cost_usd(self, records: int, payload_bytes: int) -> tuple[float, str]:
        return 0.0, "a Python callable in the worker: no per-record price"


class LambdaTarget:
    """Invokes a Lambda function per record with :func:`envelope` as the event (upstream ``LambdaHook``).

    A ``FunctionError`` fails the record. The estimate uses ``prices`` (a price table: ``price(service, item,
    variant)`` and ``label``, e.g. ``barecount_provider.cost.configured_price_table()``), its Lambda request
    and GB-second prices with ``memory_mb`` and ``estimated_duration_ms`` per invocation; unknown without it.
    """

    kind = "lambda"

    def __init__(
        self,
        function_name: str,
        *,
        aws_conn_id: str | None = "aws_default",
        qualifier: str | None = None,
        invocation_type: str = "RequestResponse",
        memory_mb: int = 128,
        estimated_duration_ms: float = 100.0,
        architecture: str = "x86_64",
        hook: Any = None,
        prices: PriceSource | None = None,
    ) -> None:
        self.function_name, self.qualifier, self.invocation_type = function_name, qualifier, invocation_type
        self.prices = prices
        self.aws_conn_id = aws_conn_id
        self.memory_mb, self.estimated_duration_ms, self.architecture = memory_mb, estimated_duration_ms, architecture
        self._hook = hook

    @property
    def hook(self) -> Any:
        if self._hook is None:
            from airflow.providers.amazon.aws.hooks.lambda_function import LambdaHook

            from barecount_provider import connections

            self._hook = connections.hook(LambdaHook, aws_conn_id=self.aws_conn_id)
        return self._hook

    def identity(self) -> str:
        return f"lambda:{self.function_name}:{self.qualifier or '$LATEST'}"

    def deliver(self, letters: Sequence[DeadLetter]) -> dict[str, str]:
        errors: dict[str, str] = {}
        for letter in letters:
            kwargs: dict[str, Any] = {}
            if self.qualifier:
                kwargs["qualifier"] = self.qualifier
            response = self.hook.invoke_lambda(
                function_name=self.function_name,
                invocation_type=self.invocation_type,
                payload=json.dumps(envelope(letter), default=str),
                **kwargs,
            )
            if response.get("FunctionError"):
                body = response.get("Payload")
                text = body.read().decode(errors="replace")[:500] if body is not None else ""
                errors[letter.idempotency_key] = f"FunctionError {response['FunctionError']}: {text}"
        return errors

    def estimate_cost_usd(self, records: int, payload_bytes: int) -> tuple[float, str]:
        table = self.prices
        if table is None:
            return 0.0, "unknown: no price table given to the Lambda target"
        request = table.price("lambda", "request_per_million") or 0.0
        gb_second = table.price("lambda", "gb_second", self.architecture) or 0.0
        per_record = request / 1e6 + gb_second * (self.memory_mb / 1024.0) * (self.estimated_duration_ms / 1000.0)
        return records * per_record, (
            f"{table.label}: lambda request_per_million {request}, gb_second {gb_second} at {self.memory_mb} MB "
            f"and {self.estimated_duration_ms:g} ms per record"
        )


def deduplication_id(key: str) -> str:
    """A FIFO ``MessageDeduplicationId`` (at most 128 characters) for an idempotency key."""
    return key if len(key) <= 128 and key.replace("-", "").replace("_", "").isalnum() else hashlib.sha256(key.encode()).hexdigest()


class SqsTarget:
    """Sends :func:`envelope` per record to a queue with SendMessageBatch (10 a request; upstream ``SqsHook``).

    Every message carries the ``idempotency_key`` attribute; on a FIFO queue the key (hashed when needed)
    is the ``MessageDeduplicationId`` (SQS drops a second copy within 5 minutes) and ``message_group_id``
    (default: the record's pipeline) the group."""

    kind = "sqs"

    def __init__(
        self,
        queue_url: str,
        *,
        aws_conn_id: str | None = "aws_default",
        message_group_id: str | None = None,
        hook: Any = None,
        client: Any = None,
    ) -> None:
        self.queue_url, self.aws_conn_id, self.message_group_id = queue_url, aws_conn_id, message_group_id
        self.fifo = queue_url.endswith(".fifo")
        self._hook, self._client = hook, client

    @property
    def client(self) -> Any:
        if self._client is None:
            if self._hook is None:
                from airflow.providers.amazon.aws.hooks.sqs import SqsHook

                from barecount_provider import connections

                self._hook = connections.hook(SqsHook, aws_conn_id=self.aws_conn_id)
            self._client = self._hook.get_conn()
        return self._client

    def identity(self) -> str:
        return f"sqs:{self.queue_url}"

    def deliver(self, letters: Sequence[DeadLetter]) -> dict[str, str]:
        errors: dict[str, str] = {}
        for start in range(0, len(letters), 10):
            chunk = letters[start : start + 10]
            entries = []
            for index, letter in enumerate(chunk):
                entry: dict[str, Any] = {
                    "Id": str(index),
                    "MessageBody": json.dumps(envelope(letter), default=str),
                    "MessageAttributes": {"idempotency_key": {"DataType": "String", "StringValue": letter.idempotency_key}},
                }
                if self.fifo:
                    entry["MessageDeduplicationId"] = deduplication_id(letter.idempotency_key)
                    entry["MessageGroupId"] = self.message_group_id or letter.pipeline or "barecount"
                entries.append(entry)
            response = self.client.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            for failed in response.get("Failed") or ():
                letter = chunk[int(failed["Id"])]
                errors[letter.idempotency_key] = f"SQS {failed.get('Code')}: {failed.get('Message')}"
        return errors

    def estimate_cost_usd(self, records: int, payload_bytes: int) -> tuple[float, str]:
        price = SQS_REQUEST_USD_PER_MILLION["fifo" if self.fifo else "standard"]
        chunks = max(-(-records // 10), -(-payload_bytes // (64 * 1024)))  # 10 messages a request, 64 KB a chunk
        return chunks * price / 1e6, f"SQS {'FIFO' if self.fifo else 'standard'} list price {price} USD per million 64 KB requests"


class SqlTableTarget:
    """Upserts each record into ``table`` by its key (``INSERT .. ON CONFLICT (key_column) DO UPDATE``).

    ``engine``: an SQLAlchemy engine or URL, or an Airflow connection id (its hook's
    ``get_sqlalchemy_engine()``). ``columns`` None: the payload's JSON goes to ``payload_column``; a list:
    those fields of a dict payload go to columns of the same name. The table must have a unique key on
    ``key_column``. PostgreSQL and SQLite (and MySQL's ``ON DUPLICATE KEY UPDATE``)."""

    kind = "sql"

    def __init__(
        self,
        table: str,
        *,
        engine: Any = None,
        conn_id: str | None = None,
        key_column: str = "idempotency_key",
        payload_column: str = "payload",
        columns: Sequence[str] | None = None,
        schema: str | None = None,
    ) -> None:
        import sqlalchemy as sa

        self.table_name, self.schema, self.conn_id = table, schema, conn_id
        self.key_column, self.payload_column = key_column, payload_column
        self.columns = list(columns) if columns else None
        self._engine: sa.Engine | None = sa.create_engine(engine) if isinstance(engine, str) else engine
        self._table: Any = None

    @property
    def engine(self) -> Any:
        if self._engine is None:
            if not self.conn_id:
                raise ValueError("SqlTableTarget needs an engine, a URL or an Airflow connection id")
            from airflow.sdk import BaseHook

            self._engine = BaseHook.get_connection(self.conn_id).get_hook().get_sqlalchemy_engine()
        return self._engine

    def identity(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True) if self._engine is not None else f"conn:{self.conn_id}"
        return f"sql:{url}#{self.schema + '.' if self.schema else ''}{self.table_name}"

    def _statement(self) -> Any:
        import sqlalchemy as sa

        if self._table is None:
            self._table = sa.Table(self.table_name, sa.MetaData(), schema=self.schema, autoload_with=self.engine)
        table = self._table
        value_columns = self.columns or [self.payload_column]
        dialect = self.engine.dialect.name
        if dialect in ("postgresql", "sqlite"):
            from sqlalchemy.dialects import postgresql, sqlite

            insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
            return insert.on_conflict_do_update(
                index_elements=[self.key_column], set_={name: insert.excluded[name] for name in value_columns}
            )
        if dialect in ("mysql", "mariadb"):
            from sqlalchemy.dialects import mysql

            statement = mysql.insert(table)
            return statement.on_duplicate_key_update({name: statement.inserted[name] for name in value_columns})
        raise ValueError(f"SqlTableTarget: no upsert for the {dialect} dialect")

    def _row(self, letter: DeadLetter) -> dict[str, Any]:
        if self.columns is None:
            return {self.key_column: letter.idempotency_key, self.payload_column: canonical_json(letter.payload)}
        payload = letter.payload if isinstance(letter.payload, Mapping) else {}
        return {self.key_column: letter.idempotency_key, **{name: payload.get(name) for name in self.columns}}

    def deliver(self, letters: Sequence[DeadLetter]) -> dict[str, str]:
        rows: dict[str, dict[str, Any]] = {}
        for letter in letters:
            rows[letter.idempotency_key] = self._row(letter)
        statement = self._statement()
        with self.engine.begin() as connection:  # one transaction a batch: all applied, or none
            connection.execute(statement, list(rows.values()))
        return {}

    def estimate_cost_usd(self, records: int, payload_bytes: int) -> tuple[float, str]:
        return 0.0, "a SQL table: no per-record price"


def target_from_spec(
    spec: Any, *, aws_conn_id: str | None = "aws_default", prices: PriceSource | None = None
) -> ReplayTarget:
    """A target from an object, a callable, or a spec string:

    ``lambda:FUNCTION[:QUALIFIER]``, ``sqs:QUEUE_URL``, ``sql:SQLALCHEMY_URL#TABLE`` (or ``sql:conn_id#TABLE``
    with an Airflow connection), ``callable:module:function``. ``prices``: the price table a Lambda target's
    estimate uses."""
    if hasattr(spec, "deliver") and hasattr(spec, "identity"):
        return spec
    if callable(spec):
        return CallableTarget(spec)
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"replay target {spec!r}: expected lambda:, sqs:, sql: or callable: (or a ReplayTarget)")
    kind, _, rest = spec.partition(":")
    if kind == "lambda":
        name, _, qualifier = rest.partition(":")
        return LambdaTarget(name, qualifier=qualifier or None, aws_conn_id=aws_conn_id, prices=prices)
    if kind == "sqs":
        return SqsTarget(rest, aws_conn_id=aws_conn_id)
    if kind == "sql":
        where, _, table = rest.rpartition("#")
        if not where or not table:
            raise ValueError(f"replay target {spec!r}: expected sql:URL#TABLE or sql:CONN_ID#TABLE")
        if "://" in where:
            return SqlTableTarget(table, engine=where)
        return SqlTableTarget(table, conn_id=where)
    if kind == "callable":
        module, _, name = rest.rpartition(":")
        function = getattr(importlib.import_module(module), name)
        return CallableTarget(function, name=f"{module}.{name}")
    raise ValueError(f"replay target {spec!r}: unknown kind {kind!r} (lambda, sqs, sql, callable)")


# ------------------------------------------------------------------------------------------- the replay


def scope_id_for(dlq: DeadLetterBackend, target: ReplayTarget) -> str:
    """The default replay scope id: one ledger per (dead-letter queue, target), whatever the filters, so any
    two replays of one queue into one target share what was delivered."""
    return hashlib.sha256(f"{dlq.describe()}\x1f{target.identity()}".encode()).hexdigest()[:32]


@dataclasses.dataclass
class ReplayPlan:
    """What a run would do now: the approval step's input (XCom ``replay_plan``)."""

    scope_id: str
    dlq: str
    target: str
    scope: dict[str, Any]
    records: int  # would be delivered
    bytes: int
    already_delivered: int  # in the queue and scope, delivered before (removed, not delivered again)
    estimated_cost_usd: float
    cost_basis: str
    by_error_class: dict[str, int]
    by_pipeline: dict[str, int]
    oldest_enqueued_at: str | None
    newest_enqueued_at: str | None
    planned_at: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ReplayOutcome:
    """What a run did (XCom ``replay_outcome``, and the evidence's ``replay`` attribute)."""

    scope_id: str
    run_id: str
    dlq: str
    target: str
    target_kind: str
    scope: dict[str, Any]
    status: str = "running"  # complete | stopped (max_records) | failed
    scanned: int = 0  # letters in scope read from the queue
    delivered: int = 0
    skipped_delivered: int = 0  # delivered before this run
    skipped_busy: int = 0  # held by another live run
    failed: int = 0
    redelivered: int = 0  # of delivered: a crashed run had them in flight (maybe delivered twice)
    retried: int = 0  # of delivered: failed in an earlier run
    lease_lost: int = 0  # delivered, but another run had taken them over meanwhile
    duplicates_in_queue: int = 0  # letters sharing a key with another in the same batch
    removed_from_queue: int = 0
    batches: int = 0
    started_at: str = ""
    ended_at: str | None = None
    duration_s: float = 0.0
    records_per_second: float = 0.0
    errors_by_class: dict[str, int] = dataclasses.field(default_factory=dict)
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["schema_version"] = OUTCOME_SCHEMA_VERSION
        return data


def _batches(letters: Iterator[DeadLetter], size: int) -> Iterator[list[DeadLetter]]:
    while True:
        batch = list(itertools.islice(letters, size))
        if not batch:
            return
        yield batch


MetricSink = Callable[[list[tuple[str, str, float, Mapping[str, Any]]]], None]


class Replayer:
    """One replay of ``dlq`` into ``target`` under ``scope`` (see the module docstring).

    :param rate: records per second at most (None: as fast as the target takes them).
    :param max_records: stop (status ``stopped``) after delivering this many: the count an approval allowed.
    :param lease_seconds: how long a claimed batch stays this run's; longer than one batch's delivery.
    :param remove_delivered: remove delivered letters from the queue (SQS: delete; files: unlink/rewrite).
    :param emit: a metric sink taking ``[(name, kind, value, tags)]`` (the BareCount emitter's ``emit``).
    """

    def __init__(
        self,
        dlq: DeadLetterBackend,
        target: ReplayTarget,
        ledger: ReplayLedger,
        *,
        scope: Scope | None = None,
        scope_id: str | None = None,
        batch_size: int = 500,
        rate: float | None = None,
        max_records: int | None = None,
        lease_seconds: float = 300.0,
        remove_delivered: bool = True,
        progress_interval_s: float = 10.0,
        metric_tags: Mapping[str, str] | None = None,
        emit: MetricSink | None = None,
        logger: Any = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive (records per second) or None")
        self.dlq, self.target, self.ledger = dlq, target, ledger
        self.scope = scope or Scope()
        self.scope_id = scope_id or scope_id_for(dlq, target)
        self.batch_size = min(batch_size, max(1, int(rate))) if rate else batch_size
        self.rate, self.max_records = rate, max_records
        self.lease_seconds, self.remove_delivered = lease_seconds, remove_delivered
        self.progress_interval_s = progress_interval_s
        self.metric_tags = dict(metric_tags or {})
        self.emit = emit
        self.log = logger or log
        self.progress: Callable[[ReplayOutcome], None] | None = None  # called after every batch (benchmarks)

    # ------------------------------------------------------------------------------------------- plan

    def plan(self, check_ledger: bool = True) -> ReplayPlan:
        """Count what a run would deliver now, stream by stream, and estimate the target's cost."""
        records = size = already = 0
        by_error: dict[str, int] = {}
        by_pipeline: dict[str, int] = {}
        oldest: str | None = None
        newest: str | None = None
        try:
            for batch in _batches(self.dlq.scan(self.scope), max(self.batch_size, 1000)):
                done = self.ledger.delivered_keys(self.scope_id, [ltr.idempotency_key for ltr in batch]) if check_ledger else set()
                seen: set[str] = set()
                for letter in batch:
                    if letter.idempotency_key in done:
                        already += 1
                        continue
                    if letter.idempotency_key in seen:
                        continue
                    seen.add(letter.idempotency_key)
                    records += 1
                    size += letter.size
                    by_error[letter.error_class] = by_error.get(letter.error_class, 0) + 1
                    by_pipeline[letter.pipeline] = by_pipeline.get(letter.pipeline, 0) + 1
                    if oldest is None or letter.enqueued_at < oldest:
                        oldest = letter.enqueued_at
                    if newest is None or letter.enqueued_at > newest:
                        newest = letter.enqueued_at
        finally:
            self.dlq.finish(None)
        cost, basis = self.target.estimate_cost_usd(records, size)
        return ReplayPlan(
            scope_id=self.scope_id,
            dlq=self.dlq.describe(),
            target=self.target.identity(),
            scope=self.scope.describe(),
            records=records,
            bytes=size,
            already_delivered=already,
            estimated_cost_usd=round(cost, 9),
            cost_basis=basis,
            by_error_class=dict(sorted(by_error.items())),
            by_pipeline=dict(sorted(by_pipeline.items())),
            oldest_enqueued_at=oldest,
            newest_enqueued_at=newest,
            planned_at=now_iso(),
        )

    # -------------------------------------------------------------------------------------------- run

    def run(self) -> ReplayOutcome:
        outcome = ReplayOutcome(
            scope_id=self.scope_id,
            run_id="",
            dlq=self.dlq.describe(),
            target=self.target.identity(),
            target_kind=self.target.kind,
            scope=self.scope.describe(),
            started_at=now_iso(),
        )
        owner = outcome.run_id = self.ledger.start_run(self.scope_id, summary=outcome.as_dict())
        started = time.monotonic()
        last_report = started
        dead = self.ledger.dead_owners(self.scope_id, self.lease_seconds)
        known_live: set[str] = set()
        self.log.info(
            "Replay %s (run %s): %s -> %s, scope %s, batch %d, rate %s/s",
            self.scope_id, owner, outcome.dlq, outcome.target, json.dumps(outcome.scope), self.batch_size, self.rate or "unlimited",
        )
        reported = dataclasses.replace(outcome)
        try:
            for batch in _batches(self.dlq.scan(self.scope), self.batch_size):
                if self.max_records is not None and outcome.delivered >= self.max_records:
                    outcome.status = "stopped"
                    break
                self._one_batch(batch, owner, outcome, dead, known_live)
                self._throttle(started, outcome)
                now = time.monotonic()
                outcome.duration_s = now - started
                if self.progress is not None:
                    self.progress(outcome)
                if now - last_report >= self.progress_interval_s:
                    last_report = now
                    self._report(outcome, reported)
                    self.ledger.heartbeat(owner, outcome.as_dict())
            else:
                if outcome.status != "stopped":
                    outcome.status = "complete"
        except BaseException as err:
            outcome.status = "failed"
            outcome.last_error = f"{type(err).__name__}: {err}"
            raise
        finally:
            try:
                delivered = (lambda keys: self.ledger.delivered_keys(self.scope_id, keys)) if self.remove_delivered else None
                outcome.removed_from_queue = self.dlq.finish(delivered)
            except Exception as err:  # the letters stay queued: the ledger skips them next time
                self.log.warning("Replay %s: could not remove delivered letters from the queue: %s", self.scope_id, err)
            outcome.ended_at = now_iso()
            outcome.duration_s = time.monotonic() - started
            outcome.records_per_second = round(outcome.delivered / outcome.duration_s, 1) if outcome.duration_s > 0 else 0.0
            self._report(outcome, reported)
            try:
                self.ledger.heartbeat(owner, outcome.as_dict(), state="finished" if outcome.status != "failed" else "failed")
            except Exception:
                self.log.warning("Replay %s: could not record the run's end in the ledger", self.scope_id, exc_info=True)
        return outcome

    def _one_batch(
        self, batch: list[DeadLetter], owner: str, outcome: ReplayOutcome, dead: set[str], known_live: set[str]
    ) -> None:
        outcome.batches += 1
        outcome.scanned += len(batch)
        by_key: dict[str, list[DeadLetter]] = {}
        for letter in batch:
            by_key.setdefault(ledger_key(letter.idempotency_key), []).append(letter)
        outcome.duplicates_in_queue += len(batch) - len(by_key)
        claim = self.ledger.claim(self.scope_id, owner, list(by_key), lease_seconds=self.lease_seconds, dead=dead)
        unknown = set(claim.busy.values()) - known_live - dead
        if unknown:  # rows held by runs we have not judged yet: dead ones give their batch up now
            newly_dead = self.ledger.dead_owners(self.scope_id, self.lease_seconds, unknown)
            known_live.update(unknown - newly_dead)
            if newly_dead:
                dead.update(newly_dead)
                again = [key for key, held_by in claim.busy.items() if held_by in newly_dead]
                second = self.ledger.claim(self.scope_id, owner, again, lease_seconds=self.lease_seconds, dead=dead)
                for key in second.ours:
                    claim.busy.pop(key, None)
                claim.ours |= second.ours
                claim.redelivered |= second.redelivered
                claim.retried |= second.retried
                claim.delivered |= second.delivered
        if self.max_records is not None:  # never deliver past what was allowed
            room = max(0, self.max_records - outcome.delivered)
            if len(claim.ours) > room:
                keep = set(sorted(claim.ours)[:room])
                self.ledger.release(self.scope_id, owner, sorted(claim.ours - keep))
                claim.redelivered &= keep
                claim.retried &= keep
                claim.ours = keep
                outcome.status = "stopped"
        to_deliver = [by_key[key][0] for key in sorted(claim.ours)]
        errors: dict[str, str] = {}
        if to_deliver:
            try:
                errors = self.target.deliver(to_deliver)
            except Exception as err:
                message = f"{type(err).__name__}: {err}"
                self.ledger.mark_failed(self.scope_id, owner, {ledger_key(ltr.idempotency_key): message for ltr in to_deliver})
                outcome.failed += len(to_deliver)
                outcome.last_error = message
                outcome.errors_by_class[type(err).__name__] = outcome.errors_by_class.get(type(err).__name__, 0) + len(to_deliver)
                raise
        failed = {ledger_key(key): error for key, error in errors.items()}
        ok = [key for key in claim.ours if key not in failed]
        confirmed = self.ledger.mark_delivered(self.scope_id, owner, ok)
        self.ledger.mark_failed(self.scope_id, owner, failed)
        outcome.delivered += len(ok)
        outcome.lease_lost += len(ok) - confirmed
        outcome.failed += len(failed)
        for error in failed.values():
            name = error.split(":", 1)[0][:80]
            outcome.errors_by_class[name] = outcome.errors_by_class.get(name, 0) + 1
        if failed:
            outcome.last_error = next(iter(failed.values()))
        outcome.redelivered += len(claim.redelivered - failed.keys())
        outcome.retried += len(claim.retried - failed.keys())
        outcome.skipped_delivered += len(claim.delivered)
        outcome.skipped_busy += len(claim.busy)
        if confirmed == len(ok):
            done_keys = set(ok) | claim.delivered
        else:  # another run took some over: only what the ledger has as delivered leaves the queue
            done_keys = {ledger_key(k) for k in self.ledger.delivered_keys(self.scope_id, ok)} | claim.delivered
        done = [letter for key in done_keys for letter in by_key[key]]
        if self.remove_delivered and done:  # the other letters stay queued (SQS: released by the scan's finish)
            self.dlq.settle(done)

    def _throttle(self, started: float, outcome: ReplayOutcome) -> None:
        if not self.rate:
            return
        due = started + outcome.delivered / self.rate
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def _report(self, outcome: ReplayOutcome, reported: ReplayOutcome) -> None:
        """A progress line, and the counters' increments since the last report."""
        elapsed = max(outcome.duration_s, 1e-9)
        self.log.info(
            "Replay %s: %s; scanned %d, delivered %d (%d redelivered after a crash), skipped %d delivered before "
            "and %d held by another run, failed %d; %.0f records/s",
            self.scope_id, outcome.status, outcome.scanned, outcome.delivered, outcome.redelivered,
            outcome.skipped_delivered, outcome.skipped_busy, outcome.failed, outcome.delivered / elapsed,
        )
        if self.emit is None:
            return
        tags = {**self.metric_tags, "target_kind": outcome.target_kind}
        points: list[tuple[str, str, float, Mapping[str, Any]]] = []
        for name, attribute in (
            ("delivered", "delivered"),
            ("skipped", "skipped_delivered"),
            ("failed", "failed"),
            ("redelivered", "redelivered"),
        ):
            increment = getattr(outcome, attribute) - getattr(reported, attribute)
            if increment:
                points.append(("barecount.replay.records", "counter", float(increment), {**tags, "outcome": name}))
                setattr(reported, attribute, getattr(outcome, attribute))
        points.append(("barecount.replay.throughput", "gauge", round(outcome.delivered / elapsed, 3), tags))
        try:
            self.emit(points)
        except Exception:
            self.log.debug("Replay %s: metric emission failed", self.scope_id, exc_info=True)


def stats_points(stats: Sequence[QueueStats], backend: str, now: float | None = None) -> list[tuple[str, str, float, Mapping[str, Any]]]:
    """The depth and oldest-age gauges of a queue, tagged tenant, pipeline and backend."""
    points: list[tuple[str, str, float, Mapping[str, Any]]] = []
    for item in stats:
        tags = {"tenant": item.tenant, "pipeline": item.pipeline, "backend": backend}
        points.append(("barecount.dlq.depth", "gauge", float(item.depth), tags))
        age = item.oldest_age_s(now)
        if age is not None:
            points.append(("barecount.dlq.oldest_age", "gauge", round(age, 3), tags))
        elif item.depth == 0:
            points.append(("barecount.dlq.oldest_age", "gauge", 0.0, tags))
    return points
