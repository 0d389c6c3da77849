"""Connections stored in Airflow's metadata database, outside a task, and `barecount doctor` probing the store
it is configured with: S3 on moto in server mode, the AWS connection (and the checkpoint key's connection)
created in the migrated metadata database of the suite's AIRFLOW_HOME, no AWS credentials in the environment
and no ``AIRFLOW_CONN_*`` variable for them.

Before BareCount resolved connections itself, the store, the forwarder and doctor asked the Task SDK, which
outside a task does not read the metadata database: ``NoCredentialsError`` at the first S3 call, and doctor
said OK without touching the bucket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from barecount_provider import cli, config
from barecount_provider.cli import doctor as cli_doctor
from barecount_provider.evidence import record as rec
from barecount_provider.evidence import store as store_module
from barecount_provider.evidence.facts import TryFacts

from .conftest import FAKE_KEYS, REGION, MotoServer

pytestmark = pytest.mark.integration

BUCKET = "barecount-doctor-test"
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")


@pytest.fixture(scope="module")
def bucket(moto_server: MotoServer) -> str:
    moto_server.client("s3").create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
    return BUCKET


def _add_connection(conn_id: str, **fields: Any) -> None:
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    with create_session() as session:
        session.add(Connection(conn_id=conn_id, **fields))


def _delete_connection(conn_id: str) -> None:
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == conn_id).delete()


@pytest.fixture
def db_connections(airflow_db: None, moto_server: MotoServer) -> Iterator[dict[str, str]]:
    """An AWS connection to moto and a checkpoint key connection, both only in the metadata database."""
    suffix = uuid.uuid4().hex[:8]
    aws, key = f"aws_in_db_{suffix}", f"checkpoint_key_in_db_{suffix}"
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _add_connection(
        aws,
        conn_type="aws",
        login=FAKE_KEYS["aws_access_key_id"],
        password=FAKE_KEYS["aws_secret_access_key"],
        extra=json.dumps({"endpoint_url": moto_server.endpoint, "region_name": REGION}),
    )
    _add_connection(key, conn_type="generic", password=pem.decode())
    try:
        yield {"aws": aws, "key": key}
    finally:
        _delete_connection(aws)
        _delete_connection(key)


@pytest.fixture
def no_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS credentials but the connection's: none in the environment, no shared files, no instance metadata."""
    for name in AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3_from_db(
    monkeypatch: pytest.MonkeyPatch, bucket: str, tmp_path: Path, db_connections: dict[str, str], no_aws_env: None
) -> Iterator[dict[str, str]]:
    settings = {
        "EVIDENCE_STORE": "s3",
        "EVIDENCE_S3_BUCKET": bucket,
        "EVIDENCE_S3_PREFIX": f"run-{tmp_path.name}",
        "EVIDENCE_S3_OBJECT_LOCK_DAYS": "1",
        "EVIDENCE_AWS_CONN_ID": db_connections["aws"],
        "EVIDENCE_DIR": str(tmp_path / "evidence"),
        "TELEMETRY_DIR": str(tmp_path / "telemetry"),
    }
    for name, value in settings.items():
        monkeypatch.setenv(f"AIRFLOW__BARECOUNT__{name}", value)
    config.cache_clear()
    store_module.clear_caches()
    yield {**db_connections, "prefix": settings["EVIDENCE_S3_PREFIX"]}
    config.cache_clear()
    store_module.clear_caches()


def _facts(task_id: str, run_id: str) -> TryFacts:
    ctx = {
        "tenant": "acme", "pipeline": "orders", "runner_class": "local", "size": "m", "network_profile": "public",
        "image_or_driver_digest": None, "dag_id": "orders", "run_id": run_id, "task_id": task_id, "try_number": 1,
        "map_index": -1, "correlation_id": "c" * 32, "run_token": f"tok-{run_id}-{task_id}",
    }  # fmt: skip
    return TryFacts(**ctx, state="success", started_at=T0, ended_at=T0 + timedelta(seconds=2))


def _entry(task_id: str, run_id: str) -> dict[str, Any]:
    return rec.build_entry(_facts(task_id, run_id))


def test_the_store_reaches_the_bucket_with_a_connection_from_the_metadata_database(
    moto_server: MotoServer, s3_from_db: dict[str, str]
) -> None:
    assert not any(name.startswith("AIRFLOW_CONN_AWS_IN_DB") for name in os.environ)
    store = store_module.open_store()
    location = store.put_entry(_entry("a", "db-conn"))
    key = location.removeprefix(f"s3://{BUCKET}/")
    assert key.startswith(f"{s3_from_db['prefix']}/entries/orders/db-conn/")
    moto_server.client("s3").head_object(Bucket=BUCKET, Key=key)  # raises when the object is not there


def test_the_forwarder_stores_a_handed_off_entry_with_a_connection_from_the_metadata_database(
    moto_server: MotoServer, s3_from_db: dict[str, str]
) -> None:
    from barecount_provider.runtime.entries import deliver_entry

    # a try's facts as the forwarder reads them from a task process's outbox record
    assert deliver_entry(msgspec.to_builtins(_facts("b", "forwarded"))) == "stored"  # "spooled" when the bucket is out of reach
    listed = moto_server.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"{s3_from_db['prefix']}/entries/orders/forwarded/")
    assert listed["KeyCount"] == 1


def test_doctor_probes_the_bucket_and_the_checkpoint_location(
    moto_server: MotoServer, s3_from_db: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_CHECKPOINT_CONN_ID", s3_from_db["key"])
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_CHECKPOINT_LOCATION", f"s3://{BUCKET}/{s3_from_db['prefix']}-checkpoints")
    config.cache_clear()
    assert cli.main(["doctor", "--json"]) == 0, capsys.readouterr().out
    evidence = json.loads(capsys.readouterr().out)["evidence"]
    assert evidence["problem"] is None
    assert evidence["bucket"] == BUCKET and evidence["aws_conn_id"] == s3_from_db["aws"]
    assert evidence["index"].startswith("sqlite:///") and evidence["index"].endswith("index.db")
    probe_prefix = f"{s3_from_db['prefix']}/doctor-probe/"
    assert evidence["probe"].startswith(f"ok (wrote, read back and deleted s3://{BUCKET}/{probe_prefix}")
    checkpoints = evidence["checkpoints"]
    assert checkpoints["problem"] is None and checkpoints["key"] == f"ok (Airflow connection {s3_from_db['key']!r})"
    assert checkpoints["probe"].startswith(f"ok (wrote, read back and deleted s3://{BUCKET}/{s3_from_db['prefix']}-checkpoints/doctor-probe/")
    s3 = moto_server.client("s3")
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=probe_prefix)["KeyCount"] == 0  # the probe is gone
    versions = s3.list_object_versions(Bucket=BUCKET, Prefix=probe_prefix)
    assert len(versions.get("Versions") or ()) == 1  # it was written (versioned bucket: one version, one delete marker)

    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"store: s3 s3://{BUCKET}/{s3_from_db['prefix']} (bucket {BUCKET}, connection {s3_from_db['aws']!r})" in out
    assert f"probe: ok (wrote, read back and deleted s3://{BUCKET}/{probe_prefix}" in out
    assert f"checkpoints: s3://{BUCKET}/{s3_from_db['prefix']}-checkpoints (key: Airflow connection {s3_from_db['key']!r})" in out


def test_doctor_fails_when_the_bucket_cannot_be_written(
    s3_from_db: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_S3_BUCKET", "barecount-no-such-bucket")
    config.cache_clear()
    assert cli.main(["doctor", "--json"]) == 1
    evidence = json.loads(capsys.readouterr().out)["evidence"]
    assert evidence["bucket"] == "barecount-no-such-bucket"
    assert evidence["problem"].startswith("UNREACHABLE: NoSuchBucket")


def test_doctor_waits_for_a_store_slower_than_the_task_budget_and_says_so(
    s3_from_db: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # 1 ms is shorter than any round trip to the emulated S3: a task would spool; doctor still probes it
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_STORE_TIMEOUT_MS", "1")
    config.cache_clear()
    assert cli.main(["doctor", "--json"]) == 0, capsys.readouterr().out
    evidence = json.loads(capsys.readouterr().out)["evidence"]
    assert evidence["problem"] is None
    assert evidence["probe"].startswith(f"ok (wrote, read back and deleted s3://{BUCKET}/")
    assert "WARNING: took " in evidence["probe"]
    assert "above [barecount] evidence_store_timeout_ms = 1: tasks will spool their entries" in evidence["probe"]


def test_doctor_fails_when_the_connection_is_nowhere(
    s3_from_db: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_AWS_CONN_ID", "aws_defined_nowhere")
    config.cache_clear()
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "UNREACHABLE: NoCredentialsError" in out and "(bucket barecount-doctor-test, connection 'aws_defined_nowhere')" in out


def test_doctor_probes_the_local_store_and_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evidence_dir = tmp_path / "evidence"
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(evidence_dir))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(tmp_path / "telemetry"))
    config.cache_clear()
    store_module.clear_caches()
    try:
        assert cli.main(["doctor", "--json"]) == 0
        evidence = json.loads(capsys.readouterr().out)["evidence"]
        assert evidence["probe"].startswith("ok (wrote, read back and deleted doctor-probe-")
        assert evidence["store"] == f"local {evidence_dir}" and evidence["problem"] is None
        assert evidence["checkpoints"]["status"].startswith("off")
        assert not [name for name in os.listdir(evidence_dir) if "doctor-probe" in name]  # nothing left
        assert cli.main(["doctor", "--json"]) == 0  # again, in the same process
        assert json.loads(capsys.readouterr().out)["evidence"]["probe"].startswith("ok (")
    finally:
        config.cache_clear()
        store_module.clear_caches()


def _barecount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "barecount_provider.cli", *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_json_output_is_alone_on_stdout_with_the_s3_store_and_a_connection_from_the_metadata_database(
    moto_server: MotoServer, s3_from_db: dict[str, str]
) -> None:
    store = store_module.open_store()
    entries = [_entry("a", "listed")]
    store.put_entry(entries[0])
    record = store.append(
        rec.build_record(
            dag_id="orders", run_id="listed", tenant="acme", pipeline="orders", state="success", started_at=T0,
            ended_at=T0 + timedelta(minutes=1), correlation_id="c" * 32, entries=entries,
        )
    )  # fmt: skip
    store_module.clear_caches()

    listed = _barecount("evidence", "list", "--json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert [row["record_id"] for row in json.loads(listed.stdout)["records"]] == [record["record_id"]]
    # Airflow did log (the amazon provider's line about the connection it found): on stderr, not stdout
    assert f"AWS Connection (conn_id='{s3_from_db['aws']}'" in listed.stderr

    shown = _barecount("evidence", "show", record["record_id"], "--json")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert json.loads(shown.stdout)["record_id"] == record["record_id"]

    verified = _barecount("evidence", "verify", "--json")
    assert verified.returncode == 0, verified.stderr[-2000:]
    assert json.loads(verified.stdout)["intact"] is True  # every body read back from the bucket

    costs = _barecount("cost", "report", "--since", "2026-11-01", "--json")
    assert costs.returncode == 0, costs.stderr[-2000:]
    json.loads(costs.stdout)

    doctor = _barecount("doctor", "--json")
    assert doctor.returncode == 0, doctor.stdout[-2000:] + doctor.stderr[-2000:]
    assert json.loads(doctor.stdout)["evidence"]["probe"].startswith("ok (")
    assert f"AWS Connection (conn_id='{s3_from_db['aws']}'" in doctor.stderr



def test_doctor_says_the_probe_is_left_where_its_delete_is_refused(tmp_path: Path) -> None:
    """As on a bucket whose policy or Object Lock refuses the delete (moto enforces neither: a local store
    that refuses it stands in)."""

    class Undeletable(store_module.LocalBodies):
        def delete(self, location: str) -> None:
            raise PermissionError("delete refused")

    status = cli_doctor._probe_bodies(Undeletable(str(tmp_path)))
    assert status.startswith("ok (wrote and read back doctor-probe-")
    assert status.endswith("left there, delete refused: PermissionError: delete refused)")
    assert len([name for name in os.listdir(tmp_path) if name.startswith("doctor-probe-")]) == 1


def test_a_task_and_the_sealing_reach_the_bucket_with_a_connection_from_the_metadata_database(
    moto_server: MotoServer, s3_from_db: dict[str, str]
) -> None:
    """In a task (dag.test(): the Task SDK's in-process supervisor) the connection comes through the Task SDK;
    the sealing, outside a task, through Airflow's own lookup: both reach the bucket."""
    import importlib.util

    from barecount_provider.runtime import sealing as evidence

    path = Path(__file__).resolve().parents[2] / "dags" / "example_zero_code.py"
    spec = importlib.util.spec_from_file_location("barecount_example_zero_code_s3", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    evidence.clear_caches()
    run = module.dag.test()
    record = evidence.seal_run(module.dag.dag_id, run.run_id, grace_seconds=0)
    assert record is not None and record["complete"] is True and record["absent"] == []
    entries = moto_server.client("s3").list_objects_v2(
        Bucket=BUCKET, Prefix=f"{s3_from_db['prefix']}/entries/{module.dag.dag_id}/"
    )
    written_by_tasks = [entry for entry in record["entries"] if entry["source"] == "task"]
    assert entries["KeyCount"] == len(written_by_tasks) > 0, [entry["source"] for entry in record["entries"]]
    evidence.clear_caches()


def _lambda_function(moto_server: MotoServer, name: str) -> None:
    """A Lambda function on moto that echoes its event (moto's simple backend: no Docker)."""
    import io
    import zipfile

    trust = json.dumps({"Version": "2012-10-17", "Statement": []})
    role = moto_server.client("iam").create_role(RoleName=f"{name}-role", AssumeRolePolicyDocument=trust)

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("app.py", "def handler(event, context):\n    return event\n")
    code = {"ZipFile": archive.getvalue()}
    moto_server.client("lambda").create_function(
        FunctionName=name, Runtime="python3.11", Role=role["Role"]["Arn"], Handler="app.handler", Code=code
    )


def test_dead_letter_queues_and_replay_targets_reach_aws_with_a_connection_from_the_metadata_database(
    moto_server: MotoServer, bucket: str, db_connections: dict[str, str], no_aws_env: None, tmp_path: Path
) -> None:
    """The DLQ hook (SQS and S3 backends) and the SQS and Lambda replay targets outside a task, as the
    ``barecount dlq`` / ``replay`` commands use them: the AWS connection only in the metadata database."""
    from barecount_provider.hooks.dlq import DeadLetterQueueHook
    from barecount_provider.recovery.ledger import ReplayLedger
    from barecount_provider.recovery.replay import LambdaTarget, Replayer, SqsTarget

    aws, suffix = db_connections["aws"], uuid.uuid4().hex[:8]
    sqs = moto_server.client("sqs")
    dlq_url = sqs.create_queue(QueueName=f"orders-dlq-{suffix}")["QueueUrl"]
    target_url = sqs.create_queue(QueueName=f"orders-in-{suffix}")["QueueUrl"]
    function = f"orders-reload-{suffix}"
    _lambda_function(moto_server, function)

    identity: dict[str, Any] = {"aws_conn_id": aws, "tenant": "acme", "pipeline": "orders"}
    queue = DeadLetterQueueHook("sqs", dlq_url, emit_metrics=False, **identity)
    keys = queue.send([{"order": i} for i in range(3)], error=ValueError("amount missing"))
    attributes = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "3"
    segments = DeadLetterQueueHook("s3", f"s3://{bucket}/dlq-{suffix}", emit_metrics=False, **identity)
    segments.send([{"order": 9}], error="bad")
    assert [s.depth for s in segments.stats()] == [1]

    ledger = ReplayLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        moto_server.start_recording()
        for target in (LambdaTarget(function, aws_conn_id=aws), SqsTarget(target_url, aws_conn_id=aws)):
            outcome = Replayer(queue.backend, target, ledger, remove_delivered=False).run()
            assert (outcome.status, outcome.delivered) == ("complete", 3), target.identity()
    finally:
        ledger.dispose()
    invoked = [r for r in moto_server.recorded_requests() if f"/functions/{function}/invocations" in r["url"]]
    assert len(invoked) == 3
    received = sqs.receive_message(QueueUrl=target_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
    delivered = [m["MessageAttributes"]["idempotency_key"]["StringValue"] for m in received["Messages"]]
    assert sorted(delivered) == sorted(keys)


def test_the_barecount_command_reads_and_replays_a_dead_letter_queue_with_a_connection_from_the_metadata_database(
    moto_server: MotoServer,
    db_connections: dict[str, str],
    no_aws_env: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    aws, suffix = db_connections["aws"], uuid.uuid4().hex[:8]
    sqs = moto_server.client("sqs")
    dlq_url = sqs.create_queue(QueueName=f"payments-dlq-{suffix}")["QueueUrl"]
    target_url = sqs.create_queue(QueueName=f"payments-in-{suffix}")["QueueUrl"]
    # a message as SQS's redrive dead-letters it: no BareCount envelope
    sqs.send_message(QueueUrl=dlq_url, MessageBody=json.dumps({"payment": 1}))
    queue = ["--dlq", dlq_url, "--aws-conn-id", aws, "--tenant", "acme", "--pipeline", "payments"]

    assert cli.main(["dlq", "stats", *queue, "--json"]) == 0
    assert [row["depth"] for row in json.loads(capsys.readouterr().out)["queues"]] == [1]
    ledger_url = ["--ledger-url", f"sqlite:///{tmp_path / 'ledger.db'}"]
    assert cli.main(["replay", "run", *queue, "--target", f"sqs:{target_url}", *ledger_url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["delivered"] == 1
    (message,) = sqs.receive_message(QueueUrl=target_url)["Messages"]
    assert json.loads(message["Body"])["payload"] == {"payment": 1}
