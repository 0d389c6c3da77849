"""The Evidence record: one per DAG run, one entry per task try, hash-chained per tenant.

An **entry** is what one task try leaves: its RunContext, state, timings, metrics snapshot, runner_result,
cost, log and trace references, policy validations and exceptions, approvals, digests and (when the try
checked any) its health results, made by
:func:`build_entry` of the try's facts (:class:`~barecount_provider.evidence.facts.TryFacts`). The task
process writes it itself (it may not touch Airflow's database); tries that never had a task process
(skipped by a trigger rule, upstream failed, killed by the scheduler) get an entry built from Airflow's
own records by the assembler.

A **record** gathers the entries of one DAG run. Its ``chain`` holds the tenant's sequence number, the
previous record's hash and its own: ``hash`` is the SHA-256 of the record's canonical form (JSON, sorted
keys, no whitespace, UTF-8) **without** ``chain.hash``. Changing, removing, inserting or reordering a record
of a tenant breaks the chain at that point, which :func:`verify_chain` names.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from barecount_provider.evidence.facts import TryFacts

SCHEMA_VERSION = 1
ENTRY_VERSION = 1
GENESIS_HASH = "0" * 64  # the previous_hash of a tenant's first record
SCHEMA_ID = "https://barecount.dev/schemas/evidence/v1.json"

def canonical(document: Any) -> bytes:
    """The canonical form hashed by the chain: JSON, sorted keys, no whitespace, UTF-8."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``record``'s canonical form without ``chain.hash``."""
    chain = dict(record.get("chain") or {})
    chain.pop("hash", None)
    return hashlib.sha256(canonical({**record, "chain": chain})).hexdigest()


def record_id_for(dag_id: str, run_id: str) -> str:
    """The record's id: the same DAG run always gives the same id, so a record written twice is stored once."""
    return hashlib.sha256(canonical(["barecount-evidence", dag_id, run_id])).hexdigest()[:32]


def try_key(dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int) -> str:
    """The key of one task try inside a run: ``task_id[map_index]#try``."""
    suffix = f"[{map_index}]" if map_index >= 0 else ""
    return f"{task_id}{suffix}#{try_number}"


@functools.cache
def this_host() -> str | None:
    """This machine's name as Airflow names it (``[core] hostname_callable``, the name a task instance's
    ``hostname`` carries); None when it cannot be had. Once per process."""
    try:
        from airflow.utils.net import get_hostname

        return str(get_hostname()) or None
    except Exception:
        return None


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    return str(value)


def build_entry(
    facts: TryFacts, *, cost: Mapping[str, Any] | None = None, log_location: str | None = None
) -> dict[str, Any]:
    """One task try's entry, made of its ``facts``, with its ``cost`` and ``log_location`` (derived by
    whoever builds it: None for a try built from Airflow's records, whose ``facts.source`` is ``airflow``)."""
    ctx = facts.context()
    start, end = _iso(facts.started_at), _iso(facts.ended_at)
    duration = None
    if isinstance(facts.started_at, datetime) and isinstance(facts.ended_at, datetime):
        duration = round((facts.ended_at - facts.started_at).total_seconds(), 6)
    written_at = now_iso()
    digests = []
    first_seen = start or written_at
    if facts.image_or_driver_digest:
        digests.append({"kind": "context", "value": facts.image_or_driver_digest, "first_seen": first_seen})
    runner_result = facts.runner_result
    for kind, value in sorted(((runner_result or {}).get("digests") or {}).items()):
        if value:
            digests.append({"kind": kind, "value": value if isinstance(value, str) else json.dumps(value), "first_seen": first_seen})
    key = try_key(facts.dag_id, facts.run_id, facts.task_id, facts.map_index, facts.try_number)
    entry = {
        "entry_version": ENTRY_VERSION,
        # the run token is unique per try and the same across deferral resumes: one entry per try
        "entry_id": facts.run_token or f"{facts.dag_id}/{facts.run_id}/{key}",
        "key": key,
        "source": facts.source,
        "host": facts.host,
        "context": ctx,
        "state": facts.state,
        "timings": {"queued_at": _iso(facts.queued_at), "started_at": start, "ended_at": end, "duration_s": duration},
        "metrics": dict(facts.metrics or {}),
        "runner_result": dict(runner_result) if runner_result is not None else None,
        "cost": dict(cost) if cost is not None else None,
        "log": {"correlation_id": facts.correlation_id, "run_token": facts.run_token, "location": log_location},
        "trace": dict(facts.trace) if facts.trace else None,
        "policy": {
            "validations": list(facts.policy_validations or []),
            "exceptions": list(facts.policy_exceptions or []),
        },
        "approvals": [dict(approval) for approval in facts.approvals or ()],
        "digests": digests,
        "error": dict(facts.error) if facts.error else None,
        "written_at": written_at,
    }
    if facts.replay:
        entry["replay"] = facts.replay
    if facts.dead_letters:
        entry["dead_letters"] = facts.dead_letters
    if facts.health:
        entry["health"] = [dict(result) for result in facts.health]
    return entry


@dataclass(frozen=True)
class ExpectedTry:
    """A task try Airflow knows of (from its task instances and their history)."""

    task_id: str
    map_index: int
    try_number: int
    state: str | None
    had_process: bool  # it reached a worker (start_date set); False: skipped, upstream_failed, removed ...
    started_at: datetime | None = None
    ended_at: datetime | None = None
    queued_at: datetime | None = None
    hostname: str | None = None  # the task instance's hostname (the worker that ran it), when Airflow has it

    def key(self, dag_id: str, run_id: str) -> str:
        return try_key(dag_id, run_id, self.task_id, self.map_index, self.try_number)


def build_record(
    *,
    dag_id: str,
    run_id: str,
    tenant: str,
    pipeline: str,
    state: str,
    started_at: Any,
    ended_at: Any,
    correlation_id: str | None,
    entries: Iterable[Mapping[str, Any]],
    absent: Sequence[str] = (),
    run_type: str | None = None,
    trace_id: str | None = None,
    exceptions: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The run's record, without its chain (``append`` of a store sets ``chain``). ``exceptions``: the
    record's own policy exceptions (found at sealing), after those of its entries.

    The cost is complete only when every try's cost is known: a try whose entry is ``absent`` has an
    unknown cost (listed in ``cost.absent``; ``cost.unknown`` lists the entries whose cost is unknown, so a
    try is in one list only), and ``total_usd`` stays the sum of the costs that are known."""
    entry_list = sorted((dict(entry) for entry in entries), key=lambda entry: entry["key"])
    by_state: dict[str, int] = {}
    for entry in entry_list:
        by_state[entry["state"]] = by_state.get(entry["state"], 0) + 1
    cost_total, unknown, basis, tables = 0.0, [], set(), set()
    lines: dict[tuple[str, str, str, str], dict[str, float]] = {}
    for entry in entry_list:
        cost = entry.get("cost")
        if not cost:
            continue
        if cost.get("total_usd") is None:
            unknown.append(entry["key"])
            continue
        cost_total += float(cost["total_usd"])
        basis.add(str(cost.get("basis")))
        table = cost.get("price_table")
        if table:
            tables.add(json.dumps(table, sort_keys=True))
        ctx = entry["context"]
        line_key = (str(ctx.get("tenant")), str(ctx.get("pipeline")), str(ctx.get("runner_class")), str(ctx.get("size")))
        line = lines.setdefault(line_key, {"runtime_hours": 0.0, "compute_usd": 0.0, "storage_usd": 0.0, "transfer_usd": 0.0, "total_usd": 0.0})
        for name in line:
            value = cost.get(name)
            if isinstance(value, int | float):
                line[name] += float(value)
    validations = [v for entry in entry_list for v in entry.get("policy", {}).get("validations", [])]
    policy_exceptions = [v for entry in entry_list for v in entry.get("policy", {}).get("exceptions", [])]
    policy_exceptions += [dict(exception) for exception in exceptions]
    approvals = [a for entry in entry_list for a in entry.get("approvals", [])]
    digests: dict[tuple[str, str], str] = {}
    for entry in entry_list:
        for digest in entry.get("digests", []):
            key = (digest["kind"], digest["value"])
            seen = digest.get("first_seen") or ""
            if key not in digests or seen < digests[key]:
                digests[key] = seen
    return {
        "schema_version": SCHEMA_VERSION,
        "record_id": record_id_for(dag_id, run_id),
        "tenant": tenant,
        "pipeline": pipeline,
        "dag_id": dag_id,
        "run_id": run_id,
        "run_type": run_type,
        "state": state,
        "started_at": _iso(started_at),
        "ended_at": _iso(ended_at),
        "sealed_at": now_iso(),
        "complete": not absent,
        "absent": sorted(absent),
        "correlation_id": correlation_id,
        "trace_id": trace_id,
        "metrics": {"tries": len(entry_list), "by_state": dict(sorted(by_state.items()))},
        "cost": {
            "total_usd": round(cost_total, 10),
            "complete": not unknown and not absent,
            "unknown": unknown,
            "absent": sorted(absent),
            "currency": "USD",
            "basis": sorted(basis),
            "price_tables": [json.loads(table) for table in sorted(tables)],
            "lines": [
                {"tenant": k[0], "pipeline": k[1], "runner_class": k[2], "size": k[3], **{n: round(v, 10) for n, v in line.items()}}
                for k, line in sorted(lines.items())
            ],
        },
        "policy": {"validations": validations, "exceptions": policy_exceptions},
        "approvals": approvals,
        "digests": [{"kind": k[0], "value": k[1], "first_seen": seen} for k, seen in sorted(digests.items())],
        "entries": entry_list,
        "chain": None,
    }


def chained(record: Mapping[str, Any], sequence: int, previous_hash: str) -> dict[str, Any]:
    """``record`` with its chain set: sequence, previous hash and its own hash."""
    result = {**record, "chain": {"sequence": sequence, "previous_hash": previous_hash}}
    result["chain"]["hash"] = record_hash(result)
    return result


@dataclass(frozen=True)
class ChainProblem:
    """One break in a tenant's chain."""

    tenant: str
    sequence: int | None
    record_id: str | None
    kind: str  # altered | removed | inserted | reordered | foreign | truncated | vanished | forged | replayed
    detail: str

    def __str__(self) -> str:
        where = f"sequence {self.sequence}" if self.sequence is not None else "chain"
        return f"tenant {self.tenant!r} {where} (record {self.record_id or 'unknown'}): {self.kind}: {self.detail}"


@dataclass(frozen=True)
class Gone:
    """A record the index lists whose body is gone: its index row stands in for it in the chain's links."""

    sequence: int
    record_id: str
    hash: str
    previous_hash: str
    detail: str = "its body is gone"


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint as read: the tenant and sequence its *place* says (file or object name), and the signed
    document itself (``tenant``, ``sequence``, ``record_id``, ``hash``, ``signed_at``, ``key_id``,
    ``signature``). In a bundle the place is the document's own claim."""

    tenant: str
    sequence: int
    document: Mapping[str, Any]


@dataclass
class ChainReport:
    """What verifying one tenant's chain found.

    ``checkpoints``: ``not configured`` (no public key: the hash chain alone was checked), ``none`` (a key,
    but no valid checkpoint of this tenant), ``checked``, or ``unreadable`` (the store's verify could not
    read the checkpoint location: nothing is verified by them). ``checkpointed_through``: the sequence of the
    latest valid checkpoint; ``not_yet_checkpointed``: the sequences after it (never reported as verified);
    ``redacted``: records whose body was redacted by a later redaction record of the chain."""

    tenant: str
    records: int = 0
    problems: list[ChainProblem] = field(default_factory=list)
    checkpoints: str = "not configured"
    checkpointed_through: int | None = None
    latest_checkpoint_at: str | None = None
    not_yet_checkpointed: list[int] = field(default_factory=list)
    redacted: list[dict[str, Any]] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems

    def add(self, sequence: int | None, record_id: str | None, kind: str, detail: str) -> None:
        if not any((p.sequence, p.record_id, p.kind) == (sequence, record_id, kind) for p in self.problems):
            self.problems.append(ChainProblem(self.tenant, sequence, record_id, kind, detail))


def _redactions(records: Sequence[Mapping[str, Any] | Gone]) -> dict[tuple[str, str], Mapping[str, Any]]:
    """(redacted record id, hash of its redacted body) -> the redaction block of an intact redaction record."""
    found: dict[tuple[str, str], Mapping[str, Any]] = {}
    for item in records:
        if isinstance(item, Gone):
            continue
        block = item.get("redaction")
        if isinstance(block, Mapping) and record_hash(item) == (item.get("chain") or {}).get("hash"):
            found[(str(block.get("supersedes")), str(block.get("redacted_hash")))] = {**block, "by_record": item.get("record_id")}
    return found


def check_chain(
    tenant: str,
    records: Sequence[Mapping[str, Any] | Gone],
    *,
    checkpoints: Iterable[SignedCheckpoint] = (),
    public_key: Any = None,
    genesis: str | None = GENESIS_HASH,
) -> ChainReport:
    """Verify ``tenant``'s chain: ``records`` in storage order (a :class:`Gone` for an indexed record whose
    body is missing), against the signed ``checkpoints`` when ``public_key`` (an Ed25519 public key) is given.

    ``genesis``: the previous_hash the first record must have (None: take the first record's, for a chain
    exported from a later sequence on). The algorithm, step by step, is in docs/evidence.md.
    """
    # cryptography is imported only where checkpoints are checked
    from barecount_provider.evidence import checkpoint as cp

    report = ChainReport(tenant, records=len(records))
    # 1. checkpoints: keep those whose signature holds and whose place is their own
    valid: dict[int, Mapping[str, Any]] = {}
    listed = [c for c in checkpoints if c.tenant == tenant]
    if public_key is not None:
        report.checkpoints = "none"
        for stored in sorted(listed, key=lambda c: c.sequence):
            doc = stored.document
            if not cp.signature_valid(doc, public_key):
                report.add(
                    stored.sequence,
                    str(doc.get("record_id") or "") or None,
                    "forged",
                    f"the checkpoint of sequence {stored.sequence} does not verify with the public key "
                    f"{cp.key_id(public_key)}: forged or damaged (ignored)",
                )
                continue
            if doc.get("tenant") != stored.tenant or doc.get("sequence") != stored.sequence:
                report.add(
                    stored.sequence,
                    None,  # the record signed at this place is not known any more
                    "replayed",
                    f"the checkpoint stored as sequence {stored.sequence} is the one signed at {doc.get('signed_at')} "
                    f"for tenant {doc.get('tenant')!r} sequence {doc.get('sequence')}: an old checkpoint put in a "
                    "newer one's place (ignored)",
                )
                continue
            valid[stored.sequence] = doc
        if valid:
            report.checkpoints = "checked"
    signed_ids = {sequence: str(doc.get("record_id")) for sequence, doc in valid.items()}
    redactions = _redactions(records)

    # 2. each record's own hash, its place and its link to the one before it
    previous: Mapping[str, Any] | Gone | None = None
    seen: set[int] = set()
    by_sequence: dict[int, Mapping[str, Any] | Gone] = {}
    for item in records:
        sequence: Any
        own_hash: Any
        previous_hash: Any
        if isinstance(item, Gone):
            sequence, record_id, own_hash, previous_hash = item.sequence, item.record_id, item.hash, item.previous_hash
            report.add(sequence, record_id, "removed", item.detail)
        else:
            chain = item.get("chain") or {}
            sequence, record_id = chain.get("sequence"), str(item.get("record_id"))
            own_hash, previous_hash = chain.get("hash"), chain.get("previous_hash")
            if item.get("tenant") != tenant:
                report.add(sequence, record_id, "foreign", f"belongs to tenant {item.get('tenant')!r}")
                continue
            content_hash = record_hash(item)
            if content_hash != own_hash:
                block = item.get("redacted")
                redaction = redactions.get((record_id, content_hash)) if isinstance(block, Mapping) else None
                if redaction is not None and redaction.get("original_hash") == own_hash:
                    report.redacted.append(
                        {"sequence": sequence, "record_id": record_id, "by_record": redaction.get("by_record"),
                         "paths": list(redaction.get("paths") or ()), "at": redaction.get("at")}
                    )
                else:
                    report.add(sequence, record_id, "altered", "its content does not match its hash")
            if not isinstance(sequence, int):
                report.add(None, record_id, "inserted", "no sequence number")
                continue
        if sequence in seen:
            report.add(sequence, record_id, "inserted", "sequence number given twice")
        seen.add(sequence)
        by_sequence.setdefault(sequence, item)
        if previous is None:
            expected_sequence, expected_hash = (1, genesis) if genesis is not None else (sequence, previous_hash)
        else:
            expected_sequence, expected_hash = _place(previous)[0] + 1, _place(previous)[1]
        if sequence < expected_sequence:
            report.add(sequence, record_id, "reordered", f"comes after sequence {expected_sequence - 1} in storage")
        elif sequence > expected_sequence:
            for missing in range(expected_sequence, sequence):
                report.add(missing, signed_ids.get(missing), "removed", f"sequence {missing} is missing from the chain")
        elif previous_hash != expected_hash and not (
            # it links to the hash a checkpoint signed for its predecessor: the predecessor was rewritten
            # (named below by that checkpoint), not this record
            sequence - 1 in valid and previous_hash == valid[sequence - 1].get("hash")
        ):
            report.add(
                sequence,
                record_id,
                "inserted",
                "its previous_hash is not the hash of the record before it (this record was inserted, or the "
                "one before it was altered and re-hashed)",
            )
        previous = item

    # 3. every valid checkpoint against the record at its sequence; the tail they cover and the store lost
    head = max(by_sequence, default=0)
    if valid and not by_sequence:
        latest = max(valid)
        report.add(
            latest,
            str(valid[latest].get("record_id")),
            "vanished",
            f"the store has no record of this tenant, but the checkpoint signed at {valid[latest].get('signed_at')} "
            f"covers {latest} record(s) of it, the last one this",
        )
    for sequence, doc in sorted(valid.items()) if by_sequence else ():
        found = by_sequence.get(sequence)
        signed = f"signed at {doc.get('signed_at')} by the checkpoint of sequence {sequence}"
        if found is None:
            if sequence > head:
                report.add(sequence, str(doc.get("record_id")), "truncated",
                           f"the chain ends at sequence {head}, but this record was {signed}: the newest records were removed")
            continue
        record_id = found.record_id if isinstance(found, Gone) else str(found.get("record_id"))
        own_hash = found.hash if isinstance(found, Gone) else (found.get("chain") or {}).get("hash")
        if record_id != doc.get("record_id"):
            report.add(sequence, record_id, "altered", f"another record ({doc.get('record_id')}) was {signed}: replaced")
        elif own_hash != doc.get("hash"):
            report.add(sequence, record_id, "altered", f"its hash differs from the one {signed}: rewritten after it was sealed")
    # the hash chain links every record up to the latest checkpoint to it; the ones after are only pending
    if valid:
        latest = max(valid)
        report.checkpointed_through = latest
        report.latest_checkpoint_at = str(valid[latest].get("signed_at"))
        report.not_yet_checkpointed = sorted(sequence for sequence in by_sequence if sequence > latest)
    elif public_key is not None:
        report.not_yet_checkpointed = sorted(by_sequence)
    report.problems.sort(key=lambda p: (p.sequence if p.sequence is not None else -1, p.kind))
    return report


def _place(item: Mapping[str, Any] | Gone) -> tuple[int, Any]:
    if isinstance(item, Gone):
        return item.sequence, item.hash
    chain = item.get("chain") or {}
    return int(chain.get("sequence") or 0), chain.get("hash")


def verify_chain(tenant: str, records: Iterable[Mapping[str, Any] | Gone]) -> list[ChainProblem]:
    """Every break in ``tenant``'s hash chain (no checkpoints); ``records`` in storage order. Empty: intact.

    * **altered**: a record whose content no longer gives its own hash;
    * **removed**: a missing sequence number (named itself, never the intact record after it), or a body gone;
    * **inserted**: a record whose previous_hash does not match its predecessor though the sequence is
      contiguous, or a sequence number given twice;
    * **reordered**: sequence numbers out of order in storage.
    """
    return check_chain(tenant, list(records)).problems

