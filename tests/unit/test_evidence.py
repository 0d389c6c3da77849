"""Evidence: records and entries against the JSON Schema, the hash chain and its tampering, the local store
(files + SQLite index), the spool, and the assembler's grace period. Concurrent writers and a writer killed
mid-write (real processes) are in tests/integration/test_evidence.py."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from barecount_provider import config
from barecount_provider.evidence import assemble as assemble_module
from barecount_provider.evidence import record as rec
from barecount_provider.evidence import spool as spool_module
from barecount_provider.evidence import store as store_module
from barecount_provider.evidence.facts import TryFacts
from barecount_provider.evidence.store import EvidenceStore, LocalBodies, RecordFilter

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "evidence.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def _ctx(dag_id: str = "orders", run_id: str = "r1", task_id: str = "t", try_number: int = 1, **overrides: Any) -> dict[str, Any]:
    return {
        "tenant": "acme",
        "pipeline": "orders",
        "runner_class": "local",
        "size": "m",
        "network_profile": "public",
        "image_or_driver_digest": None,
        "dag_id": dag_id,
        "run_id": run_id,
        "task_id": task_id,
        "try_number": try_number,
        "map_index": -1,
        "correlation_id": "c" * 32,
        "run_token": f"tok-{dag_id}-{run_id}-{task_id}-{try_number}",
        **overrides,
    }


def _cost(total: float | None) -> dict[str, Any]:
    return {
        "runtime_hours": 0.001,
        "compute_usd": total or 0.0,
        "storage_usd": 0.0,
        "transfer_usd": 0.0,
        "total_usd": total,
        "currency": "USD",
        "basis": "list-price estimate",
        "price_table": {"name": "aws-us-east-1-list", "version": "2026-11"},
    }


def _entry(task_id: str = "t", state: str = "success", run_id: str = "r1", cost: float | None = 0.5, **kw: Any) -> dict[str, Any]:
    facts = TryFacts(
        **_ctx(task_id=task_id, run_id=run_id, **kw),
        state=state,
        started_at=T0,
        ended_at=T0 + timedelta(seconds=3),
        trace={"trace_id": "a" * 32, "span_id": "b" * 16, "sampled": True},
        policy_validations=[{"rule": "max_size", "outcome": "passed", "limit": "l", "requested": "m"}],
    )
    return rec.build_entry(facts, cost=_cost(cost))


def _record(run_id: str = "r1", tenant: str = "acme", entries: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return rec.build_record(
        dag_id="orders",
        run_id=run_id,
        tenant=tenant,
        pipeline="orders",
        state="success",
        started_at=T0,
        ended_at=T0 + timedelta(minutes=1),
        correlation_id="c" * 32,
        entries=entries if entries is not None else [_entry(run_id=run_id), _entry("u", run_id=run_id, cost=0.25)],
        trace_id="a" * 32,
    )


@pytest.fixture
def store(tmp_path: Path) -> EvidenceStore:
    store_module.clear_caches()
    return EvidenceStore(LocalBodies(str(tmp_path / "evidence")), f"sqlite:///{tmp_path / 'evidence' / 'index.db'}", "local")


# ------------------------------------------------------------------------------------- record and schema


def test_record_with_its_chain_validates_and_rolls_up_cost(store: EvidenceStore) -> None:
    stored = store.append(_record())
    VALIDATOR.validate(stored)
    assert stored["chain"]["sequence"] == 1 and stored["chain"]["previous_hash"] == rec.GENESIS_HASH
    assert stored["cost"]["total_usd"] == 0.75
    assert stored["cost"]["basis"] == ["list-price estimate"]
    (line,) = stored["cost"]["lines"]
    assert (line["tenant"], line["runner_class"], line["total_usd"]) == ("acme", "local", 0.75)
    assert stored["metrics"] == {"tries": 2, "by_state": {"success": 2}}
    assert [entry["key"] for entry in stored["entries"]] == ["t#1", "u#1"]


def test_an_unknown_cost_makes_the_total_unknown_never_zero() -> None:
    record = _record(entries=[_entry(), _entry("u", cost=None)])
    assert record["cost"]["total_usd"] == 0.5  # the known part
    assert record["cost"]["complete"] is False and record["cost"]["unknown"] == ["u#1"]


def test_schema_rejects_a_record_missing_its_chain_or_with_a_bad_entry() -> None:
    record = rec.chained(_record(), 1, rec.GENESIS_HASH)
    broken = {key: value for key, value in record.items() if key != "chain"}
    assert not VALIDATOR.is_valid(broken)
    bad_entry = json.loads(json.dumps(record))
    bad_entry["entries"][0]["context"]["runner_class"] = "mainframe"
    assert not VALIDATOR.is_valid(bad_entry)


def test_a_record_written_twice_is_stored_once(store: EvidenceStore) -> None:
    first = store.append(_record())
    again = store.append(_record())
    assert again["chain"] == first["chain"]
    rows, total = store.list_records(RecordFilter())
    assert total == 1 and len(rows) == 1


# ---------------------------------------------------------------------------------------------- chain


def _chain_of(store: EvidenceStore, count: int, tenant: str = "acme") -> list[dict[str, Any]]:
    return [store.append(_record(run_id=f"{tenant}-r{n}", tenant=tenant)) for n in range(1, count + 1)]


def test_intact_chains_verify(store: EvidenceStore) -> None:
    _chain_of(store, 5)
    _chain_of(store, 2, tenant="globex")
    assert store.verify() == {"acme": [], "globex": []}


def _db(store: EvidenceStore) -> sqlite3.Connection:
    return sqlite3.connect(store.index.url.removeprefix("sqlite:///"))


def test_an_altered_record_is_named(store: EvidenceStore) -> None:
    records = _chain_of(store, 4)
    path = Path(str(store.body_path(records[1]["record_id"])))
    body = json.loads(path.read_text())
    body["cost"]["total_usd"] = 0.01  # cheaper on paper
    path.write_text(json.dumps(body))
    problems = store.verify("acme")["acme"]
    assert [(p.kind, p.sequence, p.record_id) for p in problems] == [("altered", 2, records[1]["record_id"])]
    assert "altered" in str(problems[0]) and records[1]["record_id"] in str(problems[0])


def test_an_altered_and_rehashed_record_breaks_the_next_link(store: EvidenceStore) -> None:
    records = _chain_of(store, 3)
    path = Path(str(store.body_path(records[0]["record_id"])))
    body = json.loads(path.read_text())
    body["state"] = "failed"
    body["chain"]["hash"] = rec.record_hash(body)
    path.write_text(json.dumps(body))
    with _db(store) as db:  # the forger also fixes the index
        db.execute("UPDATE barecount_evidence_records SET hash=? WHERE record_id=?", (body["chain"]["hash"], body["record_id"]))
    problems = store.verify("acme")["acme"]
    assert [(p.kind, p.sequence) for p in problems] == [("inserted", 2)]
    assert "altered and re-hashed" in problems[0].detail


def test_a_removed_record_is_named(store: EvidenceStore) -> None:
    records = _chain_of(store, 4)
    with _db(store) as db:
        db.execute("DELETE FROM barecount_evidence_records WHERE record_id=?", (records[2]["record_id"],))
    problems = store.verify("acme")["acme"]
    # the missing sequence is named, never the intact record after it
    assert [(p.kind, p.sequence, p.record_id) for p in problems] == [("removed", 3, None)]
    assert "sequence 3 is missing" in problems[0].detail


def test_a_gone_body_names_that_record_and_not_the_intact_one_after_it(store: EvidenceStore) -> None:
    """Before: the intact record 3 was also named "removed" (its predecessor's body was gone)."""
    records = _chain_of(store, 4)
    os.unlink(str(store.body_path(records[1]["record_id"])))
    problems = store.verify("acme")["acme"]
    assert [(p.kind, p.sequence, p.record_id) for p in problems] == [("removed", 2, records[1]["record_id"])]
    assert "its body records/acme/" in problems[0].detail and str(store.bodies.root) not in problems[0].detail  # type: ignore[attr-defined]


def test_an_inserted_record_is_named(store: EvidenceStore) -> None:
    records = _chain_of(store, 3)
    forged = rec.chained(_record(run_id="forged"), 2, "f" * 64)  # claims a place in the middle
    path = Path(str(store.body_path(records[1]["record_id"]))).with_name("forged.json")
    path.write_text(json.dumps(forged))
    with _db(store) as db:
        db.execute("UPDATE barecount_evidence_records SET sequence=-sequence-1 WHERE tenant='acme' AND sequence>=2")
        db.execute("UPDATE barecount_evidence_records SET sequence=-sequence WHERE tenant='acme' AND sequence<0")
        db.execute(
            "INSERT INTO barecount_evidence_records (record_id, tenant, sequence, previous_hash, hash, pipeline, dag_id, "
            "run_id, state, complete, ended_epoch, location) VALUES (?, 'acme', 2, ?, ?, 'orders', 'orders', 'forged', "
            "'success', 1, 0, ?)",
            (forged["record_id"], forged["chain"]["previous_hash"], forged["chain"]["hash"], str(path)),
        )
    problems = store.verify("acme")["acme"]
    kinds = [(p.kind, p.record_id) for p in problems]
    assert ("inserted", forged["record_id"]) in kinds


def test_reordered_records_are_named(store: EvidenceStore) -> None:
    records = _chain_of(store, 4)
    with _db(store) as db:  # swap the 2nd and 3rd in storage order
        db.execute("UPDATE barecount_evidence_records SET sequence=-1 WHERE record_id=?", (records[1]["record_id"],))
        db.execute("UPDATE barecount_evidence_records SET sequence=2 WHERE record_id=?", (records[2]["record_id"],))
        db.execute("UPDATE barecount_evidence_records SET sequence=3 WHERE record_id=?", (records[1]["record_id"],))
    problems = store.verify("acme")["acme"]
    assert problems, "a reordering must not verify"
    assert {p.kind for p in problems} <= {"altered", "reordered", "inserted", "removed"}
    assert {p.record_id for p in problems} & {records[1]["record_id"], records[2]["record_id"]}


# ----------------------------------------------------------------------------------------------- spool


def test_store_down_spools_then_flush_delivers_exactly_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(tmp_path / "evidence"))
    config.cache_clear()
    entries = [_entry(task_id=f"t{n}") for n in range(3)]

    class Down:
        def put_entry(self, entry: Any) -> str:
            raise ConnectionError("store unreachable")

    monkeypatch.setattr(spool_module, "open_store", lambda **kwargs: Down())
    assert [spool_module.write_entry(entry) for entry in entries] == ["spooled"] * 3
    assert len(spool_module.spooled()) == 3

    store_module.clear_caches()
    store = EvidenceStore(LocalBodies(str(tmp_path / "evidence")), f"sqlite:///{tmp_path / 'evidence' / 'index.db'}", "local")
    delivered: list[str] = []
    original = store.put_entry

    def counting(entry: Any) -> str:
        delivered.append(entry["entry_id"])
        return original(entry)

    monkeypatch.setattr(store, "put_entry", counting)
    result = spool_module.flush(store)
    assert (result.delivered, result.failed, result.remaining) == (3, 0, 0)
    assert spool_module.spooled() == []
    assert sorted(delivered) == sorted(entry["entry_id"] for entry in entries)
    assert spool_module.flush(store).delivered == 0  # nothing left: never delivered twice
    assert sorted(e["entry_id"] for e in store.entries_for_run("orders", "r1")) == sorted(delivered)


def test_the_next_task_that_reaches_the_store_delivers_the_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(tmp_path / "evidence"))
    config.cache_clear()
    store_module.clear_caches()
    spool_module.spool(_entry(task_id="late"))
    assert spool_module.write_entry(_entry(task_id="now")) == "stored"
    store = store_module.open_store()
    assert sorted(e["context"]["task_id"] for e in store.entries_for_run("orders", "r1")) == ["late", "now"]
    assert spool_module.spooled() == []


# -------------------------------------------------------------------------------------------- assembler


def _rows(*tries: tuple[str, int, str, bool]) -> list[dict[str, Any]]:
    return [
        {
            "task_id": task_id,
            "map_index": -1,
            "try_number": try_number,
            "state": state,
            "queued_dttm": T0,
            "start_date": T0 if ran else None,
            "end_date": T0 + timedelta(seconds=3),
            "pid": 1 if ran else None,
        }
        for task_id, try_number, state, ran in tries
    ]


def _pending(run_id: str = "r1", ended_at: datetime | None = None) -> assemble_module.PendingRun:
    return assemble_module.PendingRun(
        dag_id="orders",
        run_id=run_id,
        tenant="acme",
        pipeline="orders",
        state="success",
        started_at=T0,
        ended_at=ended_at or T0 + timedelta(minutes=1),
    )


def test_assembler_waits_for_late_entries_then_seals_with_what_is_absent(store: EvidenceStore) -> None:
    rows = _rows(("t", 1, "failed", True), ("t", 2, "success", True), ("u", 1, "success", True), ("skip", 0, "skipped", False))
    store.put_entry(_entry("t", "failed", try_number=1))
    store.put_entry(_entry("t", "success", try_number=2))
    expected = assemble_module.expected_tries(rows)
    grace = timedelta(seconds=60)
    run = _pending()
    assert assemble_module.assemble(store, run, expected, now=run.ended_at + timedelta(seconds=5), grace=grace) is None
    record = assemble_module.assemble(store, run, expected, now=run.ended_at + timedelta(seconds=61), grace=grace)
    assert record is not None
    VALIDATOR.validate(record)
    assert record["complete"] is False and record["absent"] == ["u#1"]
    by_key = {entry["key"]: entry for entry in record["entries"]}
    assert set(by_key) == {"t#1", "t#2", "u#1", "skip#0"}
    assert by_key["u#1"]["source"] == "airflow" and by_key["u#1"]["absent"] is True
    assert by_key["skip#0"]["source"] == "airflow" and by_key["skip#0"]["absent"] is False
    assert by_key["skip#0"]["state"] == "skipped"
    assert by_key["t#1"]["source"] == "task"


def test_assembler_seals_at_once_when_every_entry_is_there(store: EvidenceStore) -> None:
    store.put_entry(_entry("t"))
    assembler = assemble_module.Assembler(lambda: store, lambda d, r: _rows(("t", 1, "success", True)), lambda: 3600)
    record = assembler.run_finished(_pending())
    assert record is not None and record["complete"] is True
    assert assembler.pending == {}


def test_assembler_tick_retries_until_the_entry_arrives(store: EvidenceStore) -> None:
    assembler = assemble_module.Assembler(lambda: store, lambda d, r: _rows(("t", 1, "success", True)), lambda: 3600)
    assert assembler.run_finished(_pending(ended_at=datetime.now(UTC))) is None  # within the grace period
    assert list(assembler.pending) == [("orders", "r1")]
    store.put_entry(_entry("t"))
    (record,) = assembler.tick()
    assert record["complete"] is True and assembler.pending == {}


def test_assembler_never_raises_and_keeps_the_run_pending(store: EvidenceStore) -> None:
    errors: list[str] = []

    def broken_reader(dag_id: str, run_id: str) -> list[dict[str, Any]]:
        raise RuntimeError("database gone")

    assembler = assemble_module.Assembler(lambda: store, broken_reader, lambda: 0, on_error=errors.append)
    assert assembler.run_finished(_pending()) is None
    assert errors == ["assemble"] and list(assembler.pending) == [("orders", "r1")]


def test_a_digest_keeps_when_it_was_first_seen_across_the_tenants_records(store: EvidenceStore) -> None:
    def with_digest(run_id: str, started: datetime) -> dict[str, Any]:
        entry = rec.build_entry(
            TryFacts(
                **_ctx(run_id=run_id),
                state="success",
                started_at=started,
                ended_at=started + timedelta(seconds=1),
                runner_result={"digests": {"image_digest": "sha256:" + "ab" * 32}},
            )
        )
        return _record(run_id=run_id, entries=[entry])

    first = store.append(with_digest("early", T0))
    later = store.append(with_digest("late", T0 + timedelta(days=3)))
    (digest_first,) = first["digests"]
    (digest_later,) = later["digests"]
    assert digest_first["first_seen"] == T0.isoformat() and digest_first["first_record_id"] == first["record_id"]
    assert digest_later["first_seen"] == T0.isoformat()  # seen before, in the earlier run
    assert digest_later["first_record_id"] == first["record_id"]
    assert store.verify("acme") == {"acme": []}
