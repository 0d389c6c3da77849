"""KubernetesExecutor's configuration (docs/deployment.md), tested on its task side: no cluster here.

Under the KubernetesExecutor each task try runs in a pod of its own, with nothing beside it: no forwarder, no
disk shared with the scheduler. So the task process itself must write everything of its try to places the
scheduler reads over the network: ``[barecount] task_outputs = task``, the S3 evidence store and a PostgreSQL
index. This project has no Kubernetes cluster, so a subprocess stands in for the pod: a fresh AIRFLOW_HOME
(its own telemetry and evidence directories), the AWS connection from its environment (as from a Secret),
Airflow's metadata database shared (as every pod shares the deployment's), and ``dag.test()`` of an example
DAG running the task tries (each through the Task SDK's in-process supervisor). No forwarder runs anywhere.

Then this process, standing in for the scheduler with directories of its own, finds the tries' entries in
the bucket (moto in server mode) and the retry decision in the PostgreSQL index, seals the run's record from
them, and verifies the chain; the StatsD points and the span lines are the task process's own.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from barecount_provider import config, outbox
from barecount_provider.evidence import store as store_module
from barecount_provider.recovery.budgets import RetryLedger
from barecount_provider.runtime import forwarding
from barecount_provider.runtime import sealing as evidence_scheduler

from .conftest import MOTO_CONN_ID, MotoServer

pytestmark = pytest.mark.integration

BUCKET = "barecount-kubernetes-pod-test"
PREFIX = "pod-evidence"
DAG_ID = "example_zero_code"
EXAMPLE = Path(__file__).resolve().parents[2] / "dags" / "example_zero_code.py"
TASK_TRIES = {("extract", 1), ("transform", 1), ("transform", 2), ("leaky", 1), ("load", 1)}
"""The tries of the example that end in a task process (``notify_on_failure`` is skipped by its trigger rule)."""

POLICY = """
version: 1
defaults:
  retry_budget: {backoff_base_seconds: 1, backoff_max_seconds: 1}
"""
"""The built-in policy with a short backoff: `transform`'s retry waits a second, not 30."""

POD_SCRIPT = textwrap.dedent(
    """
    import json, sys

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=sys.argv[1])  # Airflow's parse: the cluster policy applies
    run = bag.get_dag("example_zero_code").test()
    with open(sys.argv[2], "w") as out:
        json.dump({"run_id": run.run_id, "state": str(run.state)}, out)
    """
)


def _settings(bucket: str, index_url: str, policy_path: Path) -> dict[str, str]:
    """What docs/deployment.md sets for the KubernetesExecutor, equal on every machine."""
    return {
        "AIRFLOW__BARECOUNT__POLICY_PATH": str(policy_path),
        "AIRFLOW__BARECOUNT__TASK_OUTPUTS": "task",
        "AIRFLOW__BARECOUNT__EVIDENCE_STORE": "s3",
        "AIRFLOW__BARECOUNT__EVIDENCE_S3_BUCKET": bucket,
        "AIRFLOW__BARECOUNT__EVIDENCE_S3_PREFIX": PREFIX,
        "AIRFLOW__BARECOUNT__EVIDENCE_AWS_CONN_ID": MOTO_CONN_ID,
        "AIRFLOW__BARECOUNT__EVIDENCE_INDEX_URL": index_url,
    }


@pytest.fixture
def statsd_socket() -> Iterator[socket.socket]:
    """A UDP socket on loopback that the pod's StatsD sink sends to; read once the pod has exited."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock
    finally:
        sock.close()


def _received(sock: socket.socket) -> list[str]:
    """Every StatsD line waiting in the socket (the sender has exited: nothing more comes)."""
    sock.setblocking(False)
    lines: list[str] = []
    while True:
        try:
            data = sock.recv(65535)
        except BlockingIOError:
            return lines
        lines.extend(data.decode(errors="replace").splitlines())


def _run_pod(
    home: Path, settings: dict[str, str], statsd_port: int, result: Path
) -> subprocess.CompletedProcess[str]:
    """The example DAG's tries in a process of their own, configured as a pod would be."""
    from airflow.configuration import conf

    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AIRFLOW__BARECOUNT__", "BARECOUNT_", "AIRFLOW_HOME", "AWS_", "OTEL_"))
    }
    env = {
        **inherited,
        "AIRFLOW_HOME": str(home),
        # the deployment's metadata database (PostgreSQL in a cluster): here the suite's, already migrated
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": conf.get("database", "sql_alchemy_conn"),
        "AIRFLOW__BARECOUNT__SECRET_KEY": config.secret_key(),  # equal on every machine (docs/deployment.md)
        **settings,
        "AIRFLOW__BARECOUNT__STATSD_ON": "True",
        "AIRFLOW__BARECOUNT__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__BARECOUNT__STATSD_PORT": str(statsd_port),
    }
    return subprocess.run(
        [sys.executable, "-c", POD_SCRIPT, str(EXAMPLE), str(result)],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _json_lines(path: Path) -> list[dict[str, Any]]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


def _files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


def test_a_subprocess_standing_in_for_a_kubernetes_pod_writes_its_tries_to_s3_and_postgresql_for_the_scheduler_to_seal(
    moto_server: MotoServer,
    postgres: Any,
    airflow_db: None,
    statsd_socket: socket.socket,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    moto_server.client("s3").create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(POLICY)
    settings = _settings(BUCKET, postgres.create_database("pod_index"), policy_path)
    pod_home = tmp_path / "pod"
    pod_home.mkdir()
    result = tmp_path / "pod-result.json"

    pod = _run_pod(pod_home, settings, statsd_socket.getsockname()[1], result)
    assert pod.returncode == 0, pod.stdout[-3000:] + pod.stderr[-3000:]
    run = json.loads(result.read_text())
    assert run["state"] == "success", run
    run_id = run["run_id"]
    statsd_lines = _received(statsd_socket)

    # The pod's own disk: telemetry and evidence under its AIRFLOW_HOME, nothing waiting for a forwarder.
    telemetry, evidence = pod_home / "barecount" / "telemetry", pod_home / "barecount" / "evidence"
    assert outbox.records_waiting(str(telemetry / "spool")) == []
    assert _files_under(telemetry / "spool") == []
    assert not (telemetry / forwarding.HEARTBEAT_FILE).exists()  # no forwarder round ran
    assert _files_under(evidence / "spool") == []  # every entry reached the bucket at once
    events = [e for e in _json_lines(telemetry / "events.jsonl") if e.get("run_id") == run_id]
    task_events = {
        (e["task_id"], e["try_number"]): e
        for e in events
        if e["kind"] == "task_try" and e["source"] == "task"
    }
    assert set(task_events) == TASK_TRIES
    assert all(e["sinks"].get("written_by") != "forwarder" for e in task_events.values())

    # This process stands in for the scheduler: its own directories, the same store settings.
    scheduler_home = tmp_path / "scheduler"
    for name, value in {
        **settings,
        "AIRFLOW__BARECOUNT__EVIDENCE_DIR": str(scheduler_home / "evidence"),
        "AIRFLOW__BARECOUNT__TELEMETRY_DIR": str(scheduler_home / "telemetry"),
    }.items():
        monkeypatch.setenv(name, value)
    config.cache_clear()
    store_module.clear_caches()
    evidence_scheduler.clear_caches()

    # The entries: in the bucket, one per try that ended in the task process, each written by that process.
    s3 = moto_server.client("s3")
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/entries/{DAG_ID}/")
    keys = [item["Key"] for item in listed.get("Contents") or ()]
    entries = [json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()) for key in keys]
    from_tasks = {
        (e["context"]["task_id"], e["context"]["try_number"]): e for e in entries if e["source"] == "task"
    }
    assert set(from_tasks) == TASK_TRIES, keys
    assert all(e["cost"] is not None for e in from_tasks.values())  # costed by the task process itself

    # The retry of `transform`: decided by the task process in the PostgreSQL index (budgets shared by pods).
    ledger = RetryLedger(settings["AIRFLOW__BARECOUNT__EVIDENCE_INDEX_URL"])
    try:
        retries = ledger.rows(run_id=run_id)
    finally:
        ledger.engine.dispose()
    assert [(row["task_id"], row["try_number"], row["outcome"]) for row in retries] == [
        ("transform", 1, "granted")
    ]

    # The record: sealed from the bucket's entries, indexed in PostgreSQL, and it verifies.
    record = evidence_scheduler.seal_run(DAG_ID, run_id, grace_seconds=0)
    assert record is not None and record["complete"] is True and record["absent"] == [], record
    assert {
        (e["context"]["task_id"], e["context"]["try_number"])
        for e in record["entries"]
        if e["source"] == "task"
    } == TASK_TRIES
    store = store_module.open_store()
    assert store.index.engine.dialect.name == "postgresql"
    row = store.index.row(record["record_id"])
    assert row is not None and row["location"].startswith(f"s3://{BUCKET}/{PREFIX}/records/acme/")
    reports = store.verify_report("acme")
    assert reports["acme"].intact, reports["acme"].problems
    sealed = {e["entry_id"] for e in record["entries"] if e["source"] == "task"}
    assert sealed == {e["entry_id"] for e in from_tasks.values()}  # the bucket's, read over the network

    # Spans and StatsD: sent by the task process (no forwarder ran), one span and one point per try.
    spans = [s for s in _json_lines(telemetry / "spans.jsonl") if s["name"].startswith("task_try ")]
    traced = {(e["trace"]["trace_id"], e["trace"]["span_id"]) for e in from_tasks.values()}
    assert {(s["trace_id"], s["span_id"]) for s in spans} >= traced and len(traced) == len(TASK_TRIES)
    finished = [_tags(line) for line in statsd_lines if line.startswith("barecount.task.finished:")]
    by_task = sorted((tags["task_id"], tags["state"]) for tags in finished if tags["state"] != "skipped")
    assert by_task == [  # notify_on_failure's skip: taken by dag.test()'s scheduler side, in the same process
        ("extract", "success"), ("leaky", "success"), ("load", "success"), ("transform", "success"), ("transform", "up_for_retry"),
    ]  # fmt: skip
    assert {tags["tenant"] for tags in finished} == {"acme"}


def _tags(statsd_line: str) -> dict[str, str]:
    """The tags of a DogStatsD line (``name:1|c|#k:v,k:v``)."""
    _, _, tags = statsd_line.partition("|#")
    return dict(tag.split(":", 1) for tag in tags.split(",") if tag)


class _OtlpReceiver:
    """An OTLP/HTTP traces endpoint on loopback that keeps the names of the spans it receives."""

    def __init__(self) -> None:
        import http.server
        import threading

        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        names: list[str] = []
        self.span_names = names

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        names.extend(span.name for span in scope_spans.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_a_pod_with_forward_spool_at_exit_exports_its_otlp_spans_itself(
    moto_server: MotoServer,
    postgres: Any,
    airflow_db: None,
    statsd_socket: socket.socket,
    tmp_path: Path,
) -> None:
    """With OTLP traces, a task process spools its spans for a forwarder; a pod has none beside it. With
    ``forward_spool_at_exit`` the task process forwards its spool at its end: the spans reach the collector
    and nothing is left in the pod's spool."""
    moto_server.client("s3").create_bucket(Bucket=BUCKET + "-otlp", ObjectLockEnabledForBucket=True)
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(POLICY)
    receiver = _OtlpReceiver()
    try:
        settings = {
            **_settings(BUCKET + "-otlp", postgres.create_database("pod_index_otlp"), policy_path),
            "AIRFLOW__BARECOUNT__TRACES_ON": "True",
            "AIRFLOW__BARECOUNT__TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
            "AIRFLOW__BARECOUNT__FORWARD_SPOOL_AT_EXIT": "True",
        }
        pod_home = tmp_path / "pod"
        pod_home.mkdir()
        pod = _run_pod(pod_home, settings, statsd_socket.getsockname()[1], tmp_path / "pod-result.json")
        assert pod.returncode == 0, pod.stdout[-3000:] + pod.stderr[-3000:]
    finally:
        receiver.close()
    spool_dir = pod_home / "barecount" / "telemetry" / "spool"
    assert outbox.records_waiting(str(spool_dir)) == []
    tries = sorted(name for name in receiver.span_names if name.startswith("task_try "))
    assert len(tries) == len(TASK_TRIES), receiver.span_names
