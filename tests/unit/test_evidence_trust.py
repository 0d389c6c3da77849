"""Tamper evidence against someone who can write the store: signed checkpoints of each tenant's chain head,
verify against them (each attack named), offline bundles, a copied store, and redaction.

Everything runs on the real local store (files + SQLite index) in tmp_path, with a real Ed25519 key
(``cryptography``); the attacker edits the files and the index directly, as someone with write access would.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from barecount_provider import config
from barecount_provider.evidence import bundle as bundles
from barecount_provider.evidence import checkpoint as cp
from barecount_provider.evidence import record as rec
from barecount_provider.evidence import store as store_module
from barecount_provider.evidence.facts import TryFacts
from barecount_provider.evidence.store import EvidenceStore, LocalBodies

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "evidence.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"


def _record(run_id: str, tenant: str = "acme", n: int = 0, error: str | None = None) -> dict[str, Any]:
    ctx = {
        "tenant": tenant, "pipeline": "orders", "runner_class": "local", "size": "m", "network_profile": "public",
        "image_or_driver_digest": None, "dag_id": "orders", "run_id": run_id, "task_id": "t", "try_number": 1,
        "map_index": -1, "correlation_id": "c" * 32, "run_token": f"tok-{tenant}-{run_id}",
    }
    ended = T0 + timedelta(hours=n)
    entry = rec.build_entry(
        TryFacts(
            **ctx, state="failed" if error else "success", started_at=ended - timedelta(minutes=1), ended_at=ended,
            error={"type": "RuntimeError", "message": error} if error else None,
        )
    )
    return rec.build_record(
        dag_id="orders", run_id=run_id, tenant=tenant, pipeline="orders", state=entry["state"],
        started_at=ended - timedelta(minutes=1), ended_at=ended, correlation_id="c" * 32, entries=[entry],
    )


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _open(root: Path, key: Ed25519PrivateKey | None, checkpoints: Path) -> EvidenceStore:
    setup = cp.CheckpointSetup.fixed(
        cp.LocalCheckpoints(str(checkpoints)), private_key=key, public_key=key.public_key() if key else None
    )
    return EvidenceStore(LocalBodies(str(root)), f"sqlite:///{root / 'index.db'}", "local", setup)


@pytest.fixture
def store(tmp_path: Path, key: Ed25519PrivateKey) -> EvidenceStore:
    store_module.clear_caches()
    return _open(tmp_path / "evidence", key, tmp_path / "checkpoints")


def _chain(store: EvidenceStore, count: int, tenant: str = "acme") -> list[dict[str, Any]]:
    return [store.append(_record(f"{tenant}-r{n}", tenant, n)) for n in range(1, count + 1)]


def _db(store: EvidenceStore) -> sqlite3.Connection:
    return sqlite3.connect(store.index.url.removeprefix("sqlite:///"))


def _path(store: EvidenceStore, record_id: str) -> Path:
    path = store.body_path(record_id)
    assert path is not None
    return Path(path)


def _rewrite(store: EvidenceStore, record: dict[str, Any], change: dict[str, Any], *, rehash: bool, index: bool) -> dict[str, Any]:
    path = _path(store, record["record_id"])
    body = json.loads(path.read_text())
    body.update(change)
    if rehash:
        body["chain"]["hash"] = rec.record_hash(body)
    path.write_text(json.dumps(body))
    if index:
        with _db(store) as db:
            db.execute("UPDATE barecount_evidence_records SET hash=? WHERE record_id=?", (body["chain"]["hash"], record["record_id"]))
    return body


def _named(store: EvidenceStore, tenant: str = "acme") -> list[tuple[str, int | None, str | None]]:
    return [(p.kind, p.sequence, p.record_id) for p in store.verify(tenant)[tenant]]


# ------------------------------------------------------------------------------------- checkpoints


def test_every_seal_writes_a_signed_checkpoint_outside_the_store(store: EvidenceStore, tmp_path: Path, key: Ed25519PrivateKey) -> None:
    records = _chain(store, 3)
    files = sorted((tmp_path / "checkpoints" / "acme").iterdir())
    assert [f.name for f in files] == [f"{n:012d}.json" for n in (1, 2, 3)]
    assert not any((tmp_path / "evidence").rglob("*checkpoint*"))  # a separate place
    latest = json.loads(files[-1].read_text())
    assert (latest["tenant"], latest["sequence"], latest["record_id"], latest["hash"]) == (
        "acme", 3, records[2]["record_id"], records[2]["chain"]["hash"],
    )
    assert cp.signature_valid(latest, key.public_key())
    assert not cp.signature_valid({**latest, "sequence": 4}, key.public_key())
    report = store.verify_report("acme")["acme"]
    assert report.intact and report.checkpoints == "checked"
    assert (report.checkpointed_through, report.not_yet_checkpointed) == (3, [])


def test_without_a_key_evidence_works_and_verify_says_checkpoints_are_not_configured(tmp_path: Path) -> None:
    store = _open(tmp_path / "evidence", None, tmp_path / "checkpoints")
    _chain(store, 2)
    assert not (tmp_path / "checkpoints").exists()
    report = store.verify_report("acme")["acme"]
    assert report.intact and report.checkpoints == "not configured"
    assert report.checkpointed_through is None and report.not_yet_checkpointed == []


def test_the_key_comes_from_an_airflow_connection_and_the_public_key_from_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: Ed25519PrivateKey
) -> None:
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    monkeypatch.setenv("AIRFLOW_CONN_BARECOUNT_CHECKPOINT", json.dumps({"conn_type": "generic", "password": base64.b64encode(raw).decode()}))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    monkeypatch.setenv("AIRFLOW_CONN_BARECOUNT_CHECKPOINT_PEM", json.dumps({"conn_type": "generic", "extra": {"private_key": pem}}))
    for name, value in {
        "EVIDENCE_DIR": str(tmp_path / "evidence"),
        "EVIDENCE_STORE": "local",
        "EVIDENCE_CHECKPOINT_CONN_ID": "barecount_checkpoint",
        "EVIDENCE_CHECKPOINT_PUBLIC_KEY": cp.public_key_text(key.public_key()),
    }.items():
        monkeypatch.setenv(f"AIRFLOW__BARECOUNT__{name}", value)
    monkeypatch.delenv("AIRFLOW__BARECOUNT__EVIDENCE_INDEX_URL", raising=False)
    monkeypatch.delenv("AIRFLOW__BARECOUNT__EVIDENCE_CHECKPOINT_LOCATION", raising=False)
    config.cache_clear()
    store_module.clear_caches()
    try:
        store = store_module.open_store()
        _chain(store, 2)
        default_location = tmp_path / "evidence-checkpoints" / "acme"  # next to evidence_dir, not inside it
        assert sorted(f.name for f in default_location.iterdir()) == ["000000000001.json", "000000000002.json"]
        report = store_module.open_store().verify_report("acme")["acme"]
        assert report.checkpoints == "checked" and report.checkpointed_through == 2
        assert cp.private_key_from_connection("barecount_checkpoint_pem").public_key() == key.public_key()
    finally:
        config.cache_clear()
        store_module.clear_caches()


def test_bad_checkpoint_options_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_CHECKPOINT_PUBLIC_KEY", "c2hvcnQ=")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_CHECKPOINT_LOCATION", "s3:///prefix")
    config.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"\[barecount\] evidence_checkpoint_public_key: 'c2hvcnQ=' is not an Ed25519 public key"):
            config.evidence_checkpoint_public_key()
        with pytest.raises(ValueError, match=r"\[barecount\] evidence_checkpoint_location: 's3:///prefix' is not a directory, or s3://bucket/prefix.*names no bucket"):
            config.evidence_checkpoint_location()
    finally:
        monkeypatch.undo()
        config.cache_clear()


def test_a_bad_key_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="evidence_checkpoint_public_key: base64 of 3 bytes"):
        cp.load_public_key("YWJj")
    with pytest.raises(ValueError, match="not PEM and not base64"):
        cp.load_public_key("not a key!")


def test_checkpointing_never_breaks_a_seal_and_what_follows_is_not_yet_checkpointed(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the checkpoint directory should be")
    failing = cp.Checkpointer(lambda: key, lambda: cp.LocalCheckpoints(str(blocked)))
    good = cp.LocalCheckpoints(str(tmp_path / "checkpoints"))
    setup = cp.CheckpointSetup(cp.Checkpointer(lambda: key, lambda: good), lambda: good, key.public_key)
    store = EvidenceStore(LocalBodies(str(tmp_path / "evidence")), f"sqlite:///{tmp_path / 'index.db'}", "local", setup)
    _chain(store, 3)
    setup.signer = failing  # the checkpoint location becomes unwritable
    store.append(_record("late-1", n=4))
    store.append(_record("late-2", n=5))
    assert failing.failures == 2
    assert [row["sequence"] for row in store.index.chain_rows("acme")] == [1, 2, 3, 4, 5]  # sealed all the same
    report = store.verify_report("acme")["acme"]
    assert report.intact  # nothing broken ...
    assert (report.checkpointed_through, report.not_yet_checkpointed) == (3, [4, 5])  # ... but 4 and 5 not verified


# ------------------------------------------------------------------------------------------ attacks


def test_attack_edit_a_body(store: EvidenceStore) -> None:
    records = _chain(store, 3)
    _rewrite(store, records[1], {"state": "failed"}, rehash=False, index=False)
    assert _named(store) == [("altered", 2, records[1]["record_id"])]


def test_attack_edit_the_newest_body_and_recompute_its_hash_in_the_index(store: EvidenceStore) -> None:
    """Without checkpoints this verifies (nothing links to the newest record); the checkpoint names it."""
    records = _chain(store, 3)
    _rewrite(store, records[2], {"state": "failed"}, rehash=True, index=True)
    named = _named(store)
    assert named == [("altered", 3, records[2]["record_id"])]
    assert "differs from the one signed at" in store.verify("acme")["acme"][0].detail


def test_attack_edit_a_middle_body_and_rehash_names_that_record(store: EvidenceStore) -> None:
    records = _chain(store, 3)
    _rewrite(store, records[0], {"state": "failed"}, rehash=True, index=True)
    # the record at fault, by its checkpoint; not the intact record after it (which links to the signed hash)
    assert _named(store) == [("altered", 1, records[0]["record_id"])]


def test_attack_delete_the_newest_record_body_and_index_row(store: EvidenceStore) -> None:
    records = _chain(store, 4)
    _path(store, records[3]["record_id"]).unlink()
    with _db(store) as db:
        db.execute("DELETE FROM barecount_evidence_records WHERE record_id=?", (records[3]["record_id"],))
    (problem,) = store.verify("acme")["acme"]
    assert (problem.kind, problem.sequence, problem.record_id) == ("truncated", 4, records[3]["record_id"])
    assert "the chain ends at sequence 3" in problem.detail


def test_attack_truncate_the_chain(store: EvidenceStore) -> None:
    records = _chain(store, 5)
    for record in records[2:]:
        _path(store, record["record_id"]).unlink()
    with _db(store) as db:
        db.execute("DELETE FROM barecount_evidence_records WHERE tenant='acme' AND sequence>=3")
    assert _named(store) == [("truncated", n, records[n - 1]["record_id"]) for n in (3, 4, 5)]


def test_attack_delete_a_whole_tenant(store: EvidenceStore) -> None:
    _chain(store, 2, tenant="globex")
    victims = _chain(store, 3)
    shutil.rmtree(Path(str(store.body_path(victims[0]["record_id"]))).parent)
    with _db(store) as db:
        db.execute("DELETE FROM barecount_evidence_records WHERE tenant='acme'")
    results = store.verify()  # every tenant: the vanished one is still named
    assert results["globex"] == []
    (problem,) = results["acme"]
    assert (problem.kind, problem.sequence, problem.record_id) == ("vanished", 3, victims[2]["record_id"])


def test_attack_reorder(store: EvidenceStore) -> None:
    records = _chain(store, 4)
    with _db(store) as db:  # swap the 2nd and 3rd in the index
        db.execute("UPDATE barecount_evidence_records SET sequence=-1 WHERE record_id=?", (records[1]["record_id"],))
        db.execute("UPDATE barecount_evidence_records SET sequence=2 WHERE record_id=?", (records[2]["record_id"],))
        db.execute("UPDATE barecount_evidence_records SET sequence=3 WHERE record_id=?", (records[1]["record_id"],))
    assert sorted(_named(store)) == [("reordered", 2, records[2]["record_id"]), ("reordered", 3, records[1]["record_id"])]


def test_attack_replay_an_old_checkpoint(store: EvidenceStore, tmp_path: Path) -> None:
    """Truncate the chain, then put an old (genuine) checkpoint in the newest one's place."""
    records = _chain(store, 4)
    _path(store, records[3]["record_id"]).unlink()
    with _db(store) as db:
        db.execute("DELETE FROM barecount_evidence_records WHERE record_id=?", (records[3]["record_id"],))
    directory = tmp_path / "checkpoints" / "acme"
    shutil.copy(directory / "000000000003.json", directory / "000000000004.json")
    problems = store.verify("acme")["acme"]
    assert [(p.kind, p.sequence) for p in problems] == [("replayed", 4)]
    assert "an old checkpoint put in a newer one's place" in problems[0].detail


def test_attack_forge_a_checkpoint_without_the_key(store: EvidenceStore, tmp_path: Path) -> None:
    records = _chain(store, 3)
    forged_body = _rewrite(store, records[2], {"state": "failed"}, rehash=True, index=True)
    forger = Ed25519PrivateKey.generate()
    forged = cp.sign(forger, "acme", 3, records[2]["record_id"], forged_body["chain"]["hash"])
    (tmp_path / "checkpoints" / "acme" / "000000000003.json").write_text(json.dumps(forged))
    report = store.verify_report("acme")["acme"]
    assert [(p.kind, p.sequence) for p in report.problems] == [("forged", 3)]
    assert report.not_yet_checkpointed == [3]  # the rewritten record is never reported as verified


# ------------------------------------------------------------------------------- bundle, copied store


def test_export_and_verify_a_bundle_offline(store: EvidenceStore, tmp_path: Path, key: Ed25519PrivateKey) -> None:
    _chain(store, 4)
    bundle = json.loads(json.dumps(bundles.export_bundle(store, "acme")))
    shutil.rmtree(tmp_path / "evidence")  # no index, no store
    report, source = bundles.verify_bundle(bundle, key.public_key())
    assert report.intact and source == "given" and report.checkpointed_through == 4


def test_a_bundle_since_a_time_starts_mid_chain_and_verifies(store: EvidenceStore) -> None:
    _chain(store, 5)
    bundle = json.loads(json.dumps(bundles.export_bundle(store, "acme", T0 + timedelta(hours=3))))
    assert (bundle["first_sequence"], bundle["last_sequence"]) == (3, 5)
    report, source = bundles.verify_bundle(bundle)
    assert report.intact and source == "bundle"


@pytest.mark.parametrize(
    "tamper, expected",
    [
        ("edit", ("altered", 2)),
        ("drop_newest", ("truncated", 4)),
        ("rehash_newest", ("altered", 4)),
    ],
)
def test_a_tampered_bundle_is_named(store: EvidenceStore, key: Ed25519PrivateKey, tamper: str, expected: tuple[str, int]) -> None:
    _chain(store, 4)
    bundle = json.loads(json.dumps(bundles.export_bundle(store, "acme")))
    if tamper == "edit":
        bundle["records"][1]["state"] = "failed"
    elif tamper == "drop_newest":
        bundle["records"].pop()
    else:
        bundle["records"][3]["state"] = "failed"
        bundle["records"][3]["chain"]["hash"] = rec.record_hash(bundle["records"][3])
    report, _source = bundles.verify_bundle(bundle, key.public_key())
    assert [(p.kind, p.sequence) for p in report.problems] == [expected]


def test_a_bundle_whose_key_was_swapped_fails_against_the_published_key(store: EvidenceStore, key: Ed25519PrivateKey) -> None:
    _chain(store, 2)
    bundle = json.loads(json.dumps(bundles.export_bundle(store, "acme")))
    forger = Ed25519PrivateKey.generate()
    bundle["records"][1]["state"] = "failed"
    bundle["records"][1]["chain"]["hash"] = rec.record_hash(bundle["records"][1])
    bundle["checkpoints"][1] = cp.sign(forger, "acme", 2, bundle["records"][1]["record_id"], bundle["records"][1]["chain"]["hash"])
    bundle["public_key"] = cp.public_key_text(forger.public_key())
    report, _source = bundles.verify_bundle(bundle, key.public_key())  # the auditor's published key
    assert ("forged", 2) in [(p.kind, p.sequence) for p in report.problems]


def test_a_copied_store_verifies_as_itself(store: EvidenceStore, tmp_path: Path, key: Ed25519PrivateKey) -> None:
    records = _chain(store, 3)
    with _db(store) as db:  # an index written before keys were relative: absolute paths of the original
        for record in records[:2]:
            db.execute(
                "UPDATE barecount_evidence_records SET location=? WHERE record_id=?",
                (str(_path(store, record["record_id"])), record["record_id"]),
            )
    shutil.copytree(tmp_path / "evidence", tmp_path / "copy")
    copy = _open(tmp_path / "copy", None, tmp_path / "checkpoints")
    copy.checkpoints.use_public_key(key.public_key())
    # the original is damaged: the copy does not read it
    _rewrite(store, records[0], {"state": "failed"}, rehash=False, index=False)
    _path(store, records[1]["record_id"]).unlink()
    assert copy.verify("acme") == {"acme": []}
    # and a change to the copy is found in the copy
    copy_path = Path(str(copy.body_path(records[2]["record_id"])))
    assert str(copy_path).startswith(str(tmp_path / "copy"))
    body = json.loads(copy_path.read_text())
    body["state"] = "failed"
    copy_path.write_text(json.dumps(body))
    assert [(p.kind, p.sequence) for p in copy.verify("acme")["acme"]] == [("altered", 3)]


def test_the_index_keeps_store_relative_keys(store: EvidenceStore, tmp_path: Path) -> None:
    (record,) = _chain(store, 1)
    row = store.index.row(record["record_id"])
    assert row is not None and row["location"].startswith("records/acme/") and not os.path.isabs(row["location"])


# ------------------------------------------------------------------------------------------- redact


def test_redact_replaces_the_secret_keeps_the_chain_verifiable_and_records_who(store: EvidenceStore, tmp_path: Path) -> None:
    leaked = store.append(_record("leak", n=1, error=f"boto failed with key {SECRET} in it"))
    after = store.append(_record("after", n=2))
    redaction = store.redact(leaked["record_id"], values=[SECRET], reason=f"AWS key {SECRET} leaked in an error", by="alice")
    # the secret is nowhere in the store or the checkpoints any more
    for path in [*tmp_path.rglob("*.json")]:
        assert SECRET not in path.read_text(), path
    body = store.get(leaked["record_id"])
    assert body is not None and body["chain"] == leaked["chain"]
    assert body["entries"][0]["error"]["message"] == "boto failed with key [REDACTED] in it"
    assert body["redacted"]["paths"] == ["entries[0].error.message"] and body["redacted"]["by_record"] == redaction["record_id"]
    # the redaction record: chained, checkpointed, with the exception entry (who, what, when, never the value)
    assert redaction["chain"]["sequence"] == 3 and redaction["chain"]["previous_hash"] == after["chain"]["hash"]
    (exception,) = redaction["policy"]["exceptions"]
    assert (exception["rule"], exception["by"], exception["paths"], exception["record_id"]) == (
        "evidence.redaction", "alice", ["entries[0].error.message"], leaked["record_id"],
    )
    assert exception["at"] == redaction["redaction"]["at"] and "[REDACTED]" in exception["reason"]
    VALIDATOR.validate(redaction)
    VALIDATOR.validate(body)
    report = store.verify_report("acme")["acme"]
    assert report.intact and report.checkpointed_through == 3
    assert [(r["sequence"], r["record_id"], r["by_record"]) for r in report.redacted] == [(1, leaked["record_id"], redaction["record_id"])]
    assert store.integrity(body)["status"] == "redacted"


def test_a_redacted_body_changed_afterwards_or_a_made_up_redaction_is_altered(store: EvidenceStore) -> None:
    leaked = store.append(_record("leak", n=1, error=f"key {SECRET}"))
    other = store.append(_record("other", n=2))
    store.redact(leaked["record_id"], values=[SECRET], reason="leak", by="alice")
    _rewrite(store, leaked, {"state": "success"}, rehash=False, index=False)
    # a body given a `redacted` block with no redaction record behind it
    _rewrite(store, other, {"state": "failed", "redacted": {"by_record": "0" * 32, "at": "now", "paths": ["state"]}}, rehash=False, index=False)
    assert sorted(_named(store)) == [("altered", 1, leaked["record_id"]), ("altered", 2, other["record_id"])]


def test_redact_refuses_what_it_cannot_do(store: EvidenceStore) -> None:
    (record,) = _chain(store, 1)
    with pytest.raises(ValueError, match="holds no such value"):
        store.redact(record["record_id"], values=["not-in-it"], reason="x", by="alice")
    with pytest.raises(ValueError, match="needs a --reason"):
        store.redact(record["record_id"], values=["orders"], reason=" ", by="alice")
    with pytest.raises(ValueError, match="matches the empty string"):
        store.redact(record["record_id"], patterns=["x*"], reason="x", by="alice")
    with pytest.raises(ValueError, match="not a regular expression"):
        store.redact(record["record_id"], patterns=["[unclosed"], reason="x", by="alice")
    with pytest.raises(LookupError):
        store.redact("f" * 32, values=["x"], reason="x", by="alice")


# ------------------------------------------------------------------------------- the documented algorithm


def _reference_verifier() -> Any:
    """The reference implementation printed in docs/evidence.md ("Verifying a chain yourself"), as printed."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "evidence.md").read_text()
    code = text.split("<!-- reference-verifier -->\n```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 50
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/evidence.md", "exec"), namespace)  # the documentation's own code
    return namespace["verify"]


def test_the_documented_algorithm_verifies_bundles_as_the_command_does(store: EvidenceStore, key: Ed25519PrivateKey) -> None:
    verify = _reference_verifier()
    leaked = store.append(_record("leak", n=1, error=f"x {SECRET}"))
    _chain(store, 3)
    store.redact(leaked["record_id"], values=[SECRET], reason="leak", by="alice")
    setup = store.checkpoints
    setup.signer = None
    store.append(_record("unsigned", n=9))
    public = cp.public_key_text(key.public_key())
    bundle = json.loads(json.dumps(bundles.export_bundle(store, "acme")))
    assert verify(bundle, public) == ([], 5, [6])
    report, _source = bundles.verify_bundle(bundle, key.public_key())
    assert report.intact and (report.checkpointed_through, report.not_yet_checkpointed) == (5, [6])
    edited = json.loads(json.dumps(bundle))
    edited["records"][2]["state"] = "failed"
    assert verify(edited, public)[0] == [(3, "altered")]
    truncated = json.loads(json.dumps(bundle))
    del truncated["records"][4:]
    assert (5, "signed record missing (truncated)") in verify(truncated, public)[0]
    forged = json.loads(json.dumps(bundle))
    forged["checkpoints"][0]["hash"] = "f" * 64
    assert verify(forged, public)[0] == [(1, "forged checkpoint")]


def test_unreadable_checkpoints_verify_nothing_and_never_fail_the_call(store: EvidenceStore, key: Ed25519PrivateKey) -> None:
    _chain(store, 2)

    class Down:
        def put(self, checkpoint: Any) -> None:
            raise ConnectionError("bucket unreachable")

        def read_all(self) -> list[Any]:
            raise ConnectionError("bucket unreachable")

    store._checkpoints = cp.CheckpointSetup(None, Down, key.public_key)
    report = store.verify_report("acme")["acme"]
    assert report.intact and report.checkpoints == "unreadable"
    assert (report.checkpointed_through, report.not_yet_checkpointed) == (None, [1, 2])
