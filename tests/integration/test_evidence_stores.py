"""The production evidence store against real servers: S3 bodies on moto in server mode (Object Lock
retention on records), the index on a real PostgreSQL started for the test on 127.0.0.1, concurrent writers
on that index, and an S3 store that is down (spool, then flush when it is back)."""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from barecount_provider import config
from barecount_provider.evidence import record as rec
from barecount_provider.evidence import spool as spool_module
from barecount_provider.evidence import store as store_module
from barecount_provider.evidence.facts import TryFacts
from barecount_provider.evidence.store import EvidenceStore, RecordFilter, S3Bodies
from tests import pg_server

from .conftest import MOTO_CONN_ID, MotoServer

pytestmark = pytest.mark.integration

BUCKET = "barecount-evidence-test"
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


@pytest.fixture
def fresh_index(postgres: pg_server.PostgresServer) -> Iterator[str]:
    """An empty index database for one test."""
    url = postgres.create_database("evidence")
    store_module.clear_caches()
    yield url
    store_module.clear_caches()


@pytest.fixture(scope="module")
def bucket(moto_server: MotoServer) -> str:
    moto_server.client("s3").create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
    return BUCKET


@pytest.fixture
def s3_config(monkeypatch: pytest.MonkeyPatch, bucket: str, tmp_path: Path) -> None:
    for name, value in {
        "EVIDENCE_STORE": "s3",
        "EVIDENCE_S3_BUCKET": bucket,
        "EVIDENCE_S3_PREFIX": f"run-{tmp_path.name}",
        "EVIDENCE_S3_OBJECT_LOCK_DAYS": "1",
        "EVIDENCE_AWS_CONN_ID": MOTO_CONN_ID,
        "EVIDENCE_DIR": str(tmp_path / "evidence"),
    }.items():
        monkeypatch.setenv(f"AIRFLOW__BARECOUNT__{name}", value)
    config.cache_clear()


def _entry(task_id: str, run_id: str = "r1") -> dict[str, Any]:
    ctx = {
        "tenant": "acme", "pipeline": "orders", "runner_class": "local", "size": "m", "network_profile": "public",
        "image_or_driver_digest": None, "dag_id": "orders", "run_id": run_id, "task_id": task_id, "try_number": 1,
        "map_index": -1, "correlation_id": "c" * 32, "run_token": f"tok-{run_id}-{task_id}",
    }
    return rec.build_entry(TryFacts(**ctx, state="success", started_at=T0, ended_at=T0 + timedelta(seconds=2)))


def _record(run_id: str, entries: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return rec.build_record(
        dag_id="orders", run_id=run_id, tenant="acme", pipeline="orders", state="success", started_at=T0,
        ended_at=T0 + timedelta(minutes=1), correlation_id="c" * 32, entries=entries or [_entry("t", run_id)],
    )


def test_s3_bodies_and_postgresql_index(moto_server: MotoServer, s3_config: None, fresh_index: str) -> None:
    store = store_module.open_store(index_url=fresh_index)
    assert isinstance(store.bodies, S3Bodies) and store.index.engine.dialect.name == "postgresql"
    for task_id in ("a", "b"):
        store.put_entry(_entry(task_id))
    store.put_entry(_entry("a"))  # written twice: one object (its key is its id)
    entries = store.entries_for_run("orders", "r1")
    assert sorted(entry["context"]["task_id"] for entry in entries) == ["a", "b"]

    records = [store.append(_record(f"r{n}", entries if n == 1 else None)) for n in range(1, 4)]
    assert store.append(_record("r1"))["chain"] == records[0]["chain"]  # stored once
    assert store.verify("acme") == {"acme": []}
    assert store.get(records[1]["record_id"]) == records[1]
    rows, total = store.list_records(RecordFilter(tenant="acme"), limit=2)
    assert total == 3 and len(rows) == 2

    s3 = moto_server.client("s3")
    key = store.index.row(records[0]["record_id"])["location"].removeprefix(f"s3://{BUCKET}/")  # type: ignore[index]
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(hours=23)

    # tampering with an S3 object is caught
    body = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body["state"] = "failed"
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(body).encode())
    (problem,) = store.verify("acme")["acme"]
    assert (problem.kind, problem.sequence) == ("altered", 1)


def test_s3_down_spools_and_flush_delivers_each_entry_once(
    moto_server: MotoServer, s3_config: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    down = "aws_down"
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{down.upper()}",
        json.dumps({"conn_type": "aws", "login": "testing", "password": "testing",
                    "extra": {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"}}),
    )
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_AWS_CONN_ID", down)
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_STORE_TIMEOUT_MS", "300")
    config.cache_clear()
    entries = [_entry(f"t{n}", run_id="down") for n in range(3)]
    assert [spool_module.write_entry(entry) for entry in entries] == ["spooled"] * 3
    assert len(spool_module.spooled()) == 3

    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_AWS_CONN_ID", MOTO_CONN_ID)  # the store is back
    config.cache_clear()
    store = store_module.open_store(index_url=f"sqlite:///{tmp_path / 'index.db'}")
    result = spool_module.flush(store)
    assert (result.delivered, result.remaining, result.failed) == (3, 0, 0)
    assert spool_module.flush(store).delivered == 0
    keys = moto_server.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"run-{tmp_path.name}/entries/orders/down/")
    assert sorted(item["Key"].rsplit("/", 1)[-1] for item in keys["Contents"]) == sorted(
        f"tok-down-t{n}.json" for n in range(3)
    )


def _append(url: str, root: str, writer: int, count: int) -> None:
    store_module.clear_caches()
    store = EvidenceStore(store_module.LocalBodies(root), url, "local")
    for n in range(count):
        store.append(_record(f"w{writer}-{n}"))


def test_concurrent_writers_on_postgresql_produce_one_chain(fresh_index: str, tmp_path: Path) -> None:
    """Four processes (four machines) share the PostgreSQL index: the conditional insert serialises them."""
    root = str(tmp_path / "bodies")
    assert EvidenceStore(store_module.LocalBodies(root), fresh_index, "local").index is not None  # tables first
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_append, args=(fresh_index, root, n, 20)) for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(180)
        assert worker.exitcode == 0
    store_module.clear_caches()
    store = EvidenceStore(store_module.LocalBodies(root), fresh_index, "local")
    assert [row["sequence"] for row in store.index.chain_rows("acme")] == list(range(1, 81))
    assert store.verify("acme") == {"acme": []}
