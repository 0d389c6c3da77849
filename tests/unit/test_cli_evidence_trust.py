"""`barecount evidence verify` against signed checkpoints, `evidence export` / `verify --bundle`, and
`evidence redact`, on a local store in tmp_path with the signing key in an Airflow connection (env var)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from barecount_provider import cli, config
from barecount_provider.evidence import checkpoint as cp
from barecount_provider.evidence import store as store_module
from barecount_provider.evidence.store import EvidenceStore, open_store

from .test_api import build_run, fill_store

SECRET = "hunter2-very-secret-db-password"


def _configure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: Ed25519PrivateKey | None, *, sign: bool = True) -> None:
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(tmp_path / "evidence"))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_STORE", "local")
    monkeypatch.delenv("AIRFLOW__BARECOUNT__EVIDENCE_INDEX_URL", raising=False)
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_CHECKPOINT_LOCATION", str(tmp_path / "shipped-elsewhere"))
    if key is not None:
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        monkeypatch.setenv("AIRFLOW_CONN_BARECOUNT_CHECKPOINT", json.dumps({"conn_type": "generic", "password": base64.b64encode(raw).decode()}))
        monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_CHECKPOINT_PUBLIC_KEY", cp.public_key_text(key.public_key()))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_CHECKPOINT_CONN_ID", "barecount_checkpoint" if (key and sign) else "")
    config.cache_clear()
    store_module.clear_caches()


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: Ed25519PrivateKey) -> Iterator[EvidenceStore]:
    _configure(monkeypatch, tmp_path, key)
    yield open_store()
    config.cache_clear()
    store_module.clear_caches()


@pytest.fixture
def filled(store: EvidenceStore) -> dict[str, list[dict[str, Any]]]:
    return fill_store(store)


def test_verify_says_how_far_the_signed_checkpoints_reach_and_what_is_not_yet_checkpointed(
    filled: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: Ed25519PrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["evidence", "verify", "--tenant", "team_b"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tenant 'team_b': 4 record(s), chain intact; signed checkpoints verify it through sequence 4 (signed 20")
    assert "not yet checkpointed" not in out and "not configured" not in out
    _configure(monkeypatch, tmp_path, key, sign=False)  # the signer is gone: later records are not checkpointed
    open_store().append(build_run("b_orders", 5, "team_b", "orders", "dedicated", "l", 2.0))
    open_store().append(build_run("b_orders", 6, "team_b", "orders", "dedicated", "l", 2.0))
    assert cli.main(["evidence", "verify", "--tenant", "team_b", "--json"]) == 0
    (chain,) = json.loads(capsys.readouterr().out)["chains"]
    assert (chain["checkpoints"], chain["checkpointed_through"], chain["not_yet_checkpointed"]) == ("checked", 4, [5, 6])
    assert cli.main(["evidence", "verify", "--tenant", "team_b"]) == 0
    assert "; not yet checkpointed: sequence 5-6" in capsys.readouterr().out


def test_verify_names_a_deleted_newest_record_and_a_vanished_tenant(
    store: EvidenceStore, filled: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    newest = filled["a_billing"][-1]
    Path(str(store.body_path(newest["record_id"]))).unlink()
    with sqlite3.connect(store.index.url.removeprefix("sqlite:///")) as db:
        db.execute("DELETE FROM barecount_evidence_records WHERE record_id=?", (newest["record_id"],))
        db.execute("DELETE FROM barecount_evidence_records WHERE tenant='mixed'")
    assert cli.main(["evidence", "verify"]) == 1
    err = capsys.readouterr().err
    assert f"tenant 'team_a' sequence 9 (record {newest['record_id']}): truncated: the chain ends at sequence 8" in err
    assert "tenant 'mixed': 0 record(s), 1 BROKEN" in err
    assert "tenant 'mixed' sequence 2 (record " in err and "vanished: the store has no record of this tenant" in err


def test_export_and_verify_the_bundle_without_the_store(
    store: EvidenceStore, filled: Any, tmp_path: Path, key: Ed25519PrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "team_a.bundle.json"
    assert cli.main(["evidence", "export", "--tenant", "team_a", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote 9 record(s) of tenant 'team_a' (sequences 1-9) and 9 checkpoint(s) to {out}")
    bundle = json.loads(out.read_text())
    assert bundle["public_key"] == cp.public_key_text(key.public_key()) and bundle["key_id"] == cp.key_id(key.public_key())
    for path in (tmp_path / "evidence").rglob("*"):  # no store, no index
        if path.is_file():
            path.unlink()
    public = tmp_path / "published.pub"
    public.write_text(cp.public_key_text(key.public_key()))
    assert cli.main(["evidence", "verify", "--bundle", str(out), "--public-key", str(public)]) == 0
    text = capsys.readouterr().out
    assert "tenant 'team_a': 9 record(s), chain intact; signed checkpoints verify it through sequence 9" in text
    # tampered: one record edited in the bundle
    bundle["records"][4]["state"] = "success" if bundle["records"][4]["state"] == "failed" else "failed"
    out.write_text(json.dumps(bundle))
    assert cli.main(["evidence", "verify", "--bundle", str(out), "--json"]) == 1
    (chain,) = json.loads(capsys.readouterr().out)["chains"]
    assert [(p["kind"], p["sequence"], p["record_id"]) for p in chain["problems"]] == [
        ("altered", 5, bundle["records"][4]["record_id"])
    ]


def test_export_since_and_the_bundle_key_is_named_when_none_is_given(
    store: EvidenceStore, filled: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b.json"
    assert cli.main(["evidence", "export", "--tenant", "team_b", "--since", "2026-11-21T06:00:00+00:00", "--out", str(out)]) == 0
    assert "(sequences 2-4)" in capsys.readouterr().out
    monkeypatch.delenv("AIRFLOW__BARECOUNT__EVIDENCE_CHECKPOINT_PUBLIC_KEY")
    config.cache_clear()
    assert cli.main(["evidence", "verify", "--bundle", str(out)]) == 0
    assert "checked with the bundle's own public key" in capsys.readouterr().out


def test_bad_bundles_keys_and_tenants_are_one_line_errors(store: EvidenceStore, filled: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["evidence", "verify", "--bundle", str(tmp_path / "missing.json")]) == 2
    assert capsys.readouterr().err.strip().startswith("barecount: --bundle ")
    (tmp_path / "junk.json").write_text("{not json")
    assert cli.main(["evidence", "verify", "--bundle", str(tmp_path / "junk.json")]) == 2
    assert "not JSON" in capsys.readouterr().err
    (tmp_path / "other.json").write_text("{}")
    assert cli.main(["evidence", "verify", "--bundle", str(tmp_path / "other.json")]) == 2
    assert "not an evidence bundle" in capsys.readouterr().err
    assert cli.main(["evidence", "verify", "--public-key", "abc"]) == 2
    assert "--public-key: " in capsys.readouterr().err
    assert cli.main(["evidence", "export", "--tenant", "team_a", "--out", str(tmp_path / "no-such-dir" / "x.json")]) == 2
    assert capsys.readouterr().err.strip().startswith("barecount: --out ")
    assert cli.main(["evidence", "export", "--tenant", "nobody", "--out", str(tmp_path / "x.json")]) == 1
    assert capsys.readouterr().err.strip() == "barecount evidence export: no evidence record of tenant 'nobody'"


def test_redact_from_the_command_line(
    store: EvidenceStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = build_run("a_orders", 1, "team_a", "orders", "serverless", "s", 0.1)
    run["entries"][0]["error"] = {"type": "OperationalError", "message": f"could not connect: password={SECRET}"}
    leaked = store.append(run)
    monkeypatch.setenv("LEAKED_VALUE", SECRET)
    argv = ["evidence", "redact", leaked["record_id"], "--value-env", "LEAKED_VALUE", "--reason", "DB password in an error", "--by", "alice"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    assert out.startswith(f"record {leaked['record_id']}: 1 field(s) redacted: entries[0].error.message")
    assert "(sequence 2) by alice at " in out
    assert not [p for p in tmp_path.rglob("*.json") if SECRET in p.read_text()]
    assert cli.main(["evidence", "verify", "--tenant", "team_a"]) == 0
    text = capsys.readouterr().out
    assert "chain intact; signed checkpoints verify it through sequence 2" in text
    assert f"sequence 1 (record {leaked['record_id']}): redacted at " in text
    assert cli.main(["evidence", "redact", "f" * 32, "--value", "x", "--reason", "r"]) == 1
    assert capsys.readouterr().err.strip() == f"barecount evidence redact: no evidence record {'f' * 32}"
    assert cli.main(["evidence", "redact", leaked["record_id"], "--reason", "r"]) == 2
    assert "nothing to redact" in capsys.readouterr().err
