"""Signed checkpoints in S3 with Object Lock (COMPLIANCE), written through the amazon provider's S3Hook, on
moto in server mode: every seal writes a locked checkpoint object, a locked version cannot be deleted, and
verify reads them back (a replayed one, PUT as a newer version of a newer key, is named)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from barecount_provider.evidence import checkpoint as cp
from barecount_provider.evidence import record as rec
from barecount_provider.evidence import store as store_module
from barecount_provider.evidence.store import EvidenceStore, LocalBodies

from .conftest import MOTO_CONN_ID, MotoServer

pytestmark = pytest.mark.integration

BUCKET = "barecount-checkpoints-test"
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def _record(run_id: str) -> dict[str, Any]:
    return rec.build_record(
        dag_id="orders", run_id=run_id, tenant="acme", pipeline="orders", state="success", started_at=T0,
        ended_at=T0 + timedelta(minutes=1), correlation_id="c" * 32, entries=[],
    )


def test_checkpoints_in_an_object_locked_bucket(moto_server: MotoServer, tmp_path: Path) -> None:
    s3 = moto_server.client("s3")
    s3.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
    key = Ed25519PrivateKey.generate()
    prefix = f"run-{tmp_path.name}"
    location = cp.open_location(f"s3://{BUCKET}/{prefix}", aws_conn_id=MOTO_CONN_ID, lock_days=1)
    assert isinstance(location, cp.S3Checkpoints)
    setup = cp.CheckpointSetup(cp.Checkpointer(lambda: key, lambda: location), lambda: location, key.public_key)
    store_module.clear_caches()
    store = EvidenceStore(LocalBodies(str(tmp_path / "evidence")), f"sqlite:///{tmp_path / 'index.db'}", "local", setup)
    records = [store.append(_record(f"r{n}")) for n in range(1, 4)]

    objects = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")["Contents"]
    assert sorted(item["Key"] for item in objects) == [f"{prefix}/acme/{n:012d}.json" for n in (1, 2, 3)]
    head = s3.head_object(Bucket=BUCKET, Key=f"{prefix}/acme/000000000003.json")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(hours=23)
    signed = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}/acme/000000000003.json")["Body"].read())
    assert (signed["record_id"], signed["hash"]) == (records[2]["record_id"], records[2]["chain"]["hash"])
    with pytest.raises(s3.exceptions.ClientError, match="AccessDenied"):
        s3.delete_object(Bucket=BUCKET, Key=f"{prefix}/acme/000000000003.json", VersionId=head["VersionId"])

    report = store.verify_report("acme")["acme"]
    assert report.intact and (report.checkpoints, report.checkpointed_through) == ("checked", 3)

    # an old checkpoint PUT over the newest one (a new version: the locked one stays): the replay is named
    old = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/acme/000000000002.json")["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/acme/000000000003.json", Body=old)
    assert [(p.kind, p.sequence) for p in store.verify("acme")["acme"]] == [("replayed", 3)]
