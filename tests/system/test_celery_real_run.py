"""BareCount on Airflow's CeleryExecutor past one machine (issue 21), simulated on loopback.

The deployment (tests/system/celery_stack.py), every server on 127.0.0.1 and started here:

* Redis (Debian's ``redis-server``, no persistence) as Celery's broker; PostgreSQL (tests/pg_server.py) with
  two databases: Airflow's metadata database (and Celery's result backend) and BareCount's evidence index;
  moto (tests/system/aws_emulator.py) for the example DAGs' AWS services and the S3 evidence store, whose
  bucket also holds the dead-letter queue (``dlq_location = s3://...``: a local one would be per machine);
* an api-server, a scheduler and a dag-processor sharing one AIRFLOW_HOME (the scheduler machine);
* two ``airflow celery worker`` "machines", ``celery-worker-a`` and ``celery-worker-b``, each with its own
  AIRFLOW_HOME, task logs and telemetry directory, ``[barecount] task_outputs = forwarder`` and
  ``barecount telemetry forward --loop 1`` beside it. Both serve the default queue and a queue of their own.
  On one machine every process would name the same host, so ``[core] hostname_callable`` points the workers
  at a small helper of the test that returns the worker's name from its environment (``BARECOUNT_TEST_WORKER_
  HOSTNAME``); Airflow's settings are its defaults otherwise (``[core] lazy_load_plugins`` stays True).

It runs, once each and at the same time: the example DAGs of ``dags/`` that ``make demo`` runs (the
``needs-aws`` ones against moto; ``needs-k8s`` ones are not run: no Kubernetes here), a 30-task fan-out, six
tasks of a tenant with a window retry budget of 3 failing on both workers, and a DAG leaking the secrets
corpus of tests/system/test_secrets_real_run.py through logging, print(), a subprocess, an exception and
sensitively named environment variables on both workers. Then it kills one worker with ``kill -9`` (its
process group, and the task process Airflow's supervisor started in a group of its own) while it runs a long
task. Checks:

* every run's record is sealed once (one index row, one body in the bucket), complete and schema-valid; the
  entries name the worker that ran each try, both workers appear (the fan-out's record has both: one of its
  tasks is routed to each worker's queue; a run of a single task has one host, by nature);
* the hash chains verify (``barecount evidence verify``) and ``barecount cost report`` sums what the records
  cost, per tenant;
* the tenant's retry budget holds across both workers: 3 retries granted in all, no more;
* the recovery example's replay delivers every dead letter its ingest sent, whichever worker ran each task;
* StatsD datagrams from both forwarders (told apart by their UDP source port), tagged by tenant; every span
  line of a run, in whichever worker's telemetry directory, has the run's trace id;
* no secret in any worker's or component's files (task logs, telemetry, spool), the bucket's objects, the
  evidence index's database dump, the StatsD lines or what ``barecount`` prints;
* ``barecount doctor`` and ``barecount telemetry forward --check`` pass on each worker machine;
* the killed worker's try: the scheduler fails it after ``[scheduler] task_instance_heartbeat_timeout``
  (30 s here), the record seals with that try failed, its entry absent (built from Airflow's records) and its
  cost unknown (``cost.complete: false``); the run's other task, and the records of the tries the killed
  worker ran before, keep their entries.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jsonschema
import psutil
import pytest

from tests import pg_server

from .aws_emulator import AwsEmulator
from .celery_stack import CeleryStack, RedisServer, WorkerSpec
from .conftest import EXAMPLE_DAGS, SYSTEM_DAGS, UdpCollector, _refused_port, system_policy
from .test_evidence_real_run import SCHEMA
from .test_secrets_real_run import SECRETS, SENSITIVE_ENV, _leaks

pytestmark = pytest.mark.system

WORKER_A = WorkerSpec(hostname="celery-worker-a", queue="worker_a")
WORKER_B = WorkerSpec(hostname="celery-worker-b", queue="worker_b")
HOSTS = {WORKER_A.hostname, WORKER_B.hostname}
BUCKET = "barecount-celery-evidence"
RECORDS_PREFIX = "barecount/evidence/records/"  # [barecount] evidence_s3_prefix's default
HEARTBEAT_TIMEOUT_S = 30

OPT_OUT_TAG = "barecount:off"
SKIPPED_TAGS = {"needs-k8s"}  # as `make demo`: no Kubernetes emulator here
FAN_OUT, RETRY_BUDGET, LEAK, LOST_WORKER = (
    "celery_fan_out",
    "celery_retry_budget",
    "secrets_leak_dag",
    "celery_lost_worker",
)
STORM_WINDOW_BUDGET = 3  # tests/system/policy.yaml: tenant storm, max_retries_per_window


@dataclass
class Deployment:
    stack: CeleryStack
    aws: AwsEmulator
    statsd: UdpCollector
    index_url: str
    runs: dict[str, str] = field(default_factory=dict)  # dag_id -> run_id
    states: dict[str, str] = field(default_factory=dict)  # dag_id -> final state
    opted_out: set[str] = field(default_factory=set)


def _cli(
    stack: CeleryStack, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``barecount ARGS`` with the configuration of the scheduler's machine (or ``env``)."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("barecount")), *args],
        env=env or stack.env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if not RedisServer.available():
        pytest.fail(
            "redis-server is not installed: scripts/system-deps.sh installs Debian's redis-server package"
        )
    if not pg_server.available():
        pytest.fail(
            "PostgreSQL is not installed: scripts/system-deps.sh installs Debian's postgresql package"
        )
    root = tmp_path_factory.mktemp("celery")
    dags = root / "dags"
    dags.mkdir()
    for path in EXAMPLE_DAGS.glob("*.py"):
        # example_health runs on a 5-minute schedule (unpausing it adds a scheduled run beside the one each
        # DAG gets here) and fails by design under the system policy (tenant netops's dependencies are down):
        # it is tested by tests/integration/test_health_operator.py and the demo.
        if path.name != "example_health.py":
            shutil.copy(path, dags / path.name)
    for name in ("celery_dags.py", "secrets_leak_dag.py"):
        shutil.copy(SYSTEM_DAGS / name, dags / name)
    cases_file = root / "secrets-cases.json"  # outside every AIRFLOW_HOME
    cases_file.write_text(json.dumps([{"kind": s.kind, "text": s.text} for s in SECRETS]))

    statsd = UdpCollector()
    redis = RedisServer()
    postgres = pg_server.PostgresServer()
    aws = AwsEmulator()
    stack: CeleryStack | None = None
    try:
        broker = redis.start()
        postgres.start()
        airflow_db = postgres.create_database("airflow")
        index_url = postgres.create_database("evidence")
        aws.start()
        aws.client("s3").create_bucket(Bucket=BUCKET)
        extra_env = {
            **aws.connection_env(),
            **SENSITIVE_ENV,
            "LEAKY_CASES_FILE": str(cases_file),
            "LEAKY_QUEUES": f"{WORKER_A.queue},{WORKER_B.queue}",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            "AIRFLOW__BARECOUNT__SECRET_KEY": "system-test-secret-key",
            "AIRFLOW__BARECOUNT__POLICY_PATH": str(system_policy(root, _refused_port())),
            "AIRFLOW__BARECOUNT__STATSD_ON": "True",
            "AIRFLOW__BARECOUNT__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__BARECOUNT__STATSD_PORT": str(statsd.port),
            "AIRFLOW__BARECOUNT__EVIDENCE_STORE": "s3",
            "AIRFLOW__BARECOUNT__EVIDENCE_S3_BUCKET": BUCKET,
            "AIRFLOW__BARECOUNT__EVIDENCE_INDEX_URL": index_url,
            "AIRFLOW__BARECOUNT__EVIDENCE_GRACE_SECONDS": "10",
            "AIRFLOW__BARECOUNT__DLQ_LOCATION": f"s3://{BUCKET}/dlq",
            "AIRFLOW__BARECOUNT__COST_LOCAL_WORKER_SLOT_HOUR_USD": "0.05",
        }
        stack = CeleryStack(
            home=root / "scheduler-home",
            dags_folder=dags,
            broker_url=broker,
            workers=[WORKER_A, WORKER_B],
            extra_env=extra_env,
            start_timeout=240,
        )
        stack.start()
        yield Deployment(stack=stack, aws=aws, statsd=statsd, index_url=index_url)
    finally:
        if stack is not None:
            stack.stop()
        aws.stop()
        postgres.stop()
        redis.stop()
        statsd.close()


def _trigger_now(stack: CeleryStack, dag_id: str) -> str:
    """A run with logical date = now (the examples template ``{{ ds }}``), as `make demo` triggers them."""
    body = {"logical_date": datetime.now(UTC).isoformat(), "conf": {}}
    return str(stack.api("POST", f"dags/{quote(dag_id, safe='')}/dagRuns", json=body).json()["dag_run_id"])


@pytest.fixture(scope="module")
def ran(deployment: Deployment) -> Deployment:
    """Every DAG run once, at the same time (the lost-worker DAG is the last test's)."""
    stack = deployment.stack
    dag_ids, errors = stack.wait_for_dags_folder()
    assert not errors, errors
    for dag_id in dag_ids:
        tags = {tag["name"] for tag in stack.api("GET", f"dags/{dag_id}").json().get("tags", [])}
        if dag_id == LOST_WORKER or tags & SKIPPED_TAGS:
            continue
        if OPT_OUT_TAG in tags:
            deployment.opted_out.add(dag_id)
        stack.unpause(dag_id)
        deployment.runs[dag_id] = _trigger_now(stack, dag_id)
    assert {FAN_OUT, RETRY_BUDGET, LEAK, "example_all_runners"} <= set(deployment.runs)
    for dag_id, run_id in deployment.runs.items():
        deployment.states[dag_id] = stack.wait_for_run(dag_id, run_id, timeout=420)
    return deployment


def _record_bodies(aws: AwsEmulator) -> list[dict[str, Any]]:
    """Every record body in the bucket (a sealed record is one object; a lost race leaves none)."""
    s3 = aws.client("s3")
    bodies = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=RECORDS_PREFIX):
        for item in page.get("Contents") or ():
            bodies.append(json.loads(s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()))
    return bodies


def _wait_for_records(
    deployment: Deployment, run_ids: set[str], timeout: float = 180
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        bodies = _record_bodies(deployment.aws)
        found = {body["run_id"] for body in bodies}
        if run_ids <= found:
            return {body["run_id"]: body for body in bodies}
        if time.monotonic() > deadline:
            raise deployment.stack.error(
                f"no evidence record of the runs {sorted(run_ids - found)} after {timeout}s"
            )
        time.sleep(2)


@pytest.fixture(scope="module")
def records(ran: Deployment) -> dict[str, dict[str, Any]]:
    """dag_id -> the record of its run (runs of opted-out DAGs have none)."""
    wanted = {run_id for dag_id, run_id in ran.runs.items() if dag_id not in ran.opted_out}
    by_run = _wait_for_records(ran, wanted)
    return {dag_id: by_run[run_id] for dag_id, run_id in ran.runs.items() if run_id in by_run}


def test_every_process_listens_on_loopback_only(deployment: Deployment) -> None:
    exposed = [s for s in deployment.stack.listening_sockets() if s["ip"] != "127.0.0.1"]
    assert not exposed, exposed


def test_the_runs_end_as_the_examples_do(ran: Deployment) -> None:
    """The runner DAGs against moto and the fan-out succeed; the retry and leak DAGs fail by design."""
    expected_failures = {RETRY_BUDGET, LEAK}
    failed = {
        dag_id: {
            f"{t['task_id']}[{t.get('map_index', -1)}]": t["state"]
            for t in ran.stack.task_instances(dag_id, ran.runs[dag_id])
        }
        for dag_id, state in ran.states.items()
        if (state == "failed") != (dag_id in expected_failures)
    }
    assert not failed, failed


def _xcom(stack: CeleryStack, dag_id: str, run_id: str, task_id: str, key: str) -> Any:
    path = f"dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/xcomEntries/{key}"
    value = stack.api("GET", path, params={"deserialize": True, "stringify": False}).json()["value"]
    return json.loads(value) if isinstance(value, str) else value


def test_the_recovery_example_replays_what_was_sent_on_any_worker(ran: Deployment) -> None:
    """The dead letters go to the shared ``[barecount] dlq_location`` (S3), wherever the sending task and the
    replay run: the replay delivers every letter the plan counted (a per-machine local queue delivered none
    when the replay ran on the other worker)."""
    run_id = ran.runs["example_recovery"]
    plan = _xcom(ran.stack, "example_recovery", run_id, "plan", "replay_plan")
    outcome = _xcom(ran.stack, "example_recovery", run_id, "replay", "replay_outcome")
    assert (plan["records"], plan["dlq"]) == (4, f"s3://{BUCKET}/dlq"), plan
    assert (outcome["status"], outcome["delivered"], outcome["failed"]) == ("complete", 4, 0), outcome


def _without_hand_made_runner_results(record: dict[str, Any]) -> dict[str, Any]:
    """The leaking DAG leaves a hand-made dict (not a runner operator's result) for its entries' runner_result,
    which the schema rightly refuses: the rest of its record is checked."""
    entries = [{**entry, "runner_result": None} for entry in record["entries"]]
    return {**record, "entries": entries}


def test_every_record_is_sealed_once_complete_and_valid(
    ran: Deployment, records: dict[str, dict[str, Any]]
) -> None:
    assert set(records) == set(ran.runs) - ran.opted_out
    bodies = Counter(body["run_id"] for body in _record_bodies(ran.aws))
    listed = _cli(ran.stack, "evidence", "list", "--json", "--limit", "500")
    assert listed.returncode == 0, listed.stderr[-3000:]
    rows = Counter(row["run_id"] for row in json.loads(listed.stdout)["records"])
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for dag_id, record in records.items():
        run_id = ran.runs[dag_id]
        assert (bodies[run_id], rows[run_id]) == (1, 1), (dag_id, bodies[run_id], rows[run_id])
        validator.validate(_without_hand_made_runner_results(record) if dag_id == LEAK else record)
        assert (record["dag_id"], record["state"]) == (dag_id, ran.states[dag_id])
        assert record["complete"] is True and record["absent"] == [], (dag_id, record["absent"])
    for dag_id in ran.opted_out:
        assert not bodies[ran.runs[dag_id]] and not rows[ran.runs[dag_id]]


def test_entries_name_the_worker_that_ran_each_try(
    ran: Deployment, records: dict[str, dict[str, Any]]
) -> None:
    hosts: set[str] = set()
    for dag_id, record in records.items():
        for entry in record["entries"]:
            if entry["source"] == "task":  # written on a worker (by its forwarder): the try ran there
                assert entry["host"] in HOSTS, (dag_id, entry["key"], entry["host"])
                assert entry["timings"]["queued_at"], (dag_id, entry["key"])
                hosts.add(entry["host"])
        # one machine is not the only one: no local-store exception on the shared store
        assert not [e for e in record["policy"]["exceptions"] if e["rule"] == "evidence_store_one_host"], (
            dag_id
        )
    assert hosts == HOSTS
    fan_out = {entry["key"]: entry for entry in records[FAN_OUT]["entries"]}
    assert (
        fan_out["split#1"]["host"] == WORKER_A.hostname and fan_out["gather#1"]["host"] == WORKER_B.hostname
    )
    mapped = [entry for entry in fan_out.values() if entry["context"]["task_id"] == "work"]
    assert sorted(entry["context"]["map_index"] for entry in mapped) == list(range(30))
    assert all(entry["source"] == "task" and entry["state"] == "success" for entry in mapped)


def test_the_chains_verify(ran: Deployment, records: dict[str, dict[str, Any]]) -> None:
    verified = _cli(ran.stack, "evidence", "verify", "--json")
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]
    report = json.loads(verified.stdout)
    assert report["intact"] is True
    chains = {chain["tenant"]: chain for chain in report["chains"]}
    assert set(chains) == {record["tenant"] for record in records.values()}


def test_cost_report_sums_what_the_records_cost(ran: Deployment, records: dict[str, dict[str, Any]]) -> None:
    reported = _cli(ran.stack, "cost", "report", "--by", "tenant", "--no-per-day", "--json")
    assert reported.returncode == 0, reported.stderr[-3000:]
    rows = {row["tenant"]: row for row in json.loads(reported.stdout)["rows"]}
    by_tenant: dict[str, float] = defaultdict(float)
    unknown: dict[str, int] = defaultdict(int)
    for record in records.values():
        by_tenant[record["tenant"]] += record["cost"]["total_usd"]
        unknown[record["tenant"]] += len(record["cost"]["unknown"]) + len(record["cost"].get("absent") or ())
    assert set(rows) == set(by_tenant)
    for tenant, total in by_tenant.items():
        assert rows[tenant]["total_usd"] == pytest.approx(total, abs=1e-9), tenant
        assert rows[tenant]["unknown_tries"] == unknown[tenant], tenant
    assert records[FAN_OUT]["cost"]["complete"] is True and records[FAN_OUT]["cost"]["total_usd"] > 0


def _worker_files(deployment: Deployment) -> dict[str, bytes]:
    """Every file each worker machine and the scheduler machine wrote, as bytes (harness files aside)."""
    from .test_secrets_real_run import HARNESS_FILES

    files: dict[str, bytes] = {}
    homes = [deployment.stack.home] + [worker.home for worker in deployment.stack.workers.values()]
    for home in homes:
        for path in sorted(home.rglob("*")):
            if path.is_file() and path.name not in HARNESS_FILES and "__pycache__" not in path.parts:
                files[f"{home.name}/{path.relative_to(home)}"] = path.read_bytes()
    return files


def test_the_leaks_were_written_on_both_workers(ran: Deployment, records: dict[str, dict[str, Any]]) -> None:
    """The control: each worker supervised every channel of the leaking DAG, and its log lines are there."""
    run_id = ran.runs[LEAK]
    for worker in ran.stack.workers.values():
        queue = worker.spec.queue
        log_text = worker.task_log_path(LEAK, run_id, f"leak_output_{queue}").read_text(errors="replace")
        for case in SECRETS:
            for channel in ("logging", "print", "subprocess"):
                assert f"{channel} [{case.kind}]" in log_text, (worker.spec.hostname, case.kind, channel)
        failed = worker.task_log_path(LEAK, run_id, f"leak_exception_{queue}").read_text(errors="replace")
        assert "RuntimeError" in failed and "load failed: " in failed
    entries = {entry["key"]: entry for entry in records[LEAK]["entries"]}
    assert {entries[f"leak_output_{spec.queue}#1"]["host"] for spec in (WORKER_A, WORKER_B)} == HOSTS


def test_no_secret_in_any_worker_file_the_bucket_or_what_barecount_prints(
    ran: Deployment, records: dict[str, dict[str, Any]]
) -> None:
    outputs = _worker_files(ran)
    for host in HOSTS:
        assert any(name.startswith(f"{ran.stack.home.name}-{host}/logs/dag_id={LEAK}") for name in outputs), (
            host
        )
        assert any(
            name.startswith(f"{ran.stack.home.name}-{host}/barecount/telemetry/") for name in outputs
        ), host
    s3 = ran.aws.client("s3")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents") or ():
            outputs[f"s3://{BUCKET}/{item['Key']}"] = s3.get_object(Bucket=BUCKET, Key=item["Key"])[
                "Body"
            ].read()
    dump = subprocess.run(
        [str(pg_server.find_binary("pg_dump")), "--data-only", ran.index_url.replace("+psycopg2", "")],
        capture_output=True,
        timeout=120,
        check=True,
    )
    outputs["the evidence index (pg_dump)"] = dump.stdout
    record_id = records[LEAK]["record_id"]
    for args in (("evidence", "show", record_id), ("evidence", "show", record_id, "--json")):
        done = _cli(ran.stack, *args)  # the shared store: the same on every machine
        outputs[f"barecount {' '.join(args)}"] = (done.stdout + done.stderr).encode()
    for worker in ran.stack.workers.values():  # each machine's own events
        done = _cli(ran.stack, "runs", "--json", env=worker.env)
        outputs[f"barecount runs --json ({worker.spec.hostname})"] = (done.stdout + done.stderr).encode()
    outputs["StatsD lines"] = "\n".join(ran.statsd.lines).encode()
    assert b"load failed: " in outputs[f"barecount evidence show {record_id} --json"]
    for worker in ran.stack.workers.values():
        assert (
            f"leak_output_{worker.spec.queue}".encode()
            in outputs[f"barecount runs --json ({worker.spec.hostname})"]
        )
    leaks = _leaks(outputs)
    assert not leaks, "\n".join(leaks)


def _forwarder_ports(stack: CeleryStack) -> dict[str, set[int]]:
    """The local UDP ports of each worker's forwarder process (its StatsD client's socket)."""
    ports = {}
    for host, worker in stack.workers.items():
        assert worker.forwarder is not None
        process = psutil.Process(worker.forwarder.pid)
        ports[host] = {conn.laddr.port for conn in process.net_connections(kind="udp")}
    return ports


def test_statsd_from_both_forwarders_tagged_by_tenant(
    ran: Deployment, records: dict[str, dict[str, Any]]
) -> None:
    ports = _forwarder_ports(ran.stack)
    assert all(ports.values()), ports
    by_forwarder: dict[str, list[str]] = {host: [] for host in ports}
    for (_, port), line in ran.statsd.datagrams():
        for host, owned in ports.items():
            if port in owned:
                by_forwarder[host].append(line)
    for host, lines in by_forwarder.items():
        tenants = {
            tag.split(":", 1)[1]
            for line in lines
            for tag in line.partition("|#")[2].split(",")
            if tag.startswith("tenant:")
        }
        assert {"acme", "storm"} <= tenants, (host, tenants, lines[:5])
        assert any(line.startswith("barecount.task.duration") for line in lines), (host, lines[:5])


def _span_lines(stack: CeleryStack) -> list[tuple[str, dict[str, Any]]]:
    """(where, span) for every span line of every machine's telemetry directory."""
    homes = {"scheduler": stack.home, **{host: worker.home for host, worker in stack.workers.items()}}
    spans = []
    for where, home in homes.items():
        path = home / "barecount" / "telemetry" / "spans.jsonl"
        if path.exists():
            spans.extend((where, json.loads(line)) for line in path.read_text().splitlines() if line.strip())
    return spans


def test_the_spans_of_a_run_share_its_trace_id_on_every_worker(
    ran: Deployment, records: dict[str, dict[str, Any]]
) -> None:
    spans = _span_lines(ran.stack)
    trace_of_run = {record["run_id"]: record["trace_id"] for record in records.values()}
    seen: dict[str, set[str]] = defaultdict(set)
    for where, span in spans:
        run_id = span["attributes"].get("airflow.dag_run.run_id")
        if run_id in trace_of_run:
            assert span["trace_id"] == trace_of_run[run_id], (where, run_id, span["name"])
            seen[run_id].add(where)
    assert seen[ran.runs[FAN_OUT]] >= HOSTS, seen[ran.runs[FAN_OUT]]


def test_the_retry_budget_holds_across_both_workers(
    ran: Deployment, records: dict[str, dict[str, Any]]
) -> None:
    tis = ran.stack.task_instances(RETRY_BUDGET, ran.runs[RETRY_BUDGET])
    assert len(tis) == 6 and all(ti["state"] == "failed" for ti in tis)
    granted = sum(ti["try_number"] - 1 for ti in tis)
    assert granted == STORM_WINDOW_BUDGET, {ti["task_id"]: ti["try_number"] for ti in tis}
    hosts = {entry["host"] for entry in records[RETRY_BUDGET]["entries"]}
    assert hosts == HOSTS, hosts


def test_doctor_and_the_forwarder_check_pass_on_each_worker(ran: Deployment) -> None:
    """docs/deployment.md's checklist, on each worker machine: masking extended at settings load (Celery
    workers load no plugin), the shared store answers a probe, the forwarder's heartbeat is recent."""
    for worker in ran.stack.workers.values():
        doctor = _cli(ran.stack, "doctor", "--json", env=worker.env)
        assert doctor.returncode == 0, doctor.stdout[-3000:] + doctor.stderr[-3000:]
        report = json.loads(doctor.stdout)
        assert report["masking"]["at_settings_load"] is True, report["masking"]
        assert report["evidence"]["probe"].startswith("ok ("), report["evidence"]
        assert BUCKET in json.dumps(report["evidence"]), report["evidence"]
        check = _cli(ran.stack, "telemetry", "forward", "--check", env=worker.env)
        assert check.returncode == 0, check.stdout + check.stderr


def _wait_for_running(
    stack: CeleryStack, dag_id: str, run_id: str, task_id: str, timeout: float = 180
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = {ti["task_id"]: ti["state"] for ti in stack.task_instances(dag_id, run_id)}
        if states.get(task_id) == "running":
            return
        if time.monotonic() > deadline:
            raise stack.error(f"{dag_id}.{task_id} not running after {timeout}s: {states}")
        time.sleep(1)


def test_a_worker_killed_mid_task_loses_only_its_try(
    ran: Deployment, records: dict[str, dict[str, Any]]
) -> None:
    """Runs last: it kills worker b. Its forwarder runs on (it is another process group)."""
    stack = ran.stack
    stack.unpause(LOST_WORKER)
    run_id = _trigger_now(stack, LOST_WORKER)
    _wait_for_running(stack, LOST_WORKER, run_id, "long_sleep")
    stack.wait_for_file(
        stack.workers[WORKER_B.hostname].task_log_path(LOST_WORKER, run_id, "long_sleep"),
        contains="long_sleep: sleeping",
        timeout=120,
    )
    stack.kill_worker(WORKER_B.hostname)
    assert stack.wait_for_run(LOST_WORKER, run_id, timeout=HEARTBEAT_TIMEOUT_S + 180) == "failed"
    record = _wait_for_records(ran, {run_id}, timeout=120)[run_id]
    jsonschema.Draft202012Validator(SCHEMA).validate(record)
    entries = {entry["key"]: entry for entry in record["entries"]}
    # the try's own entry went with the machine: built from Airflow's records at sealing, marked absent
    lost = entries["long_sleep#1"]
    assert (lost["state"], lost["source"], lost["absent"], lost["host"]) == (
        "failed",
        "airflow",
        True,
        WORKER_B.hostname,
    ), lost
    assert lost["reason"]["code"] == "heartbeat_timeout", lost  # from Airflow's audit log (docs/evidence.md)
    assert record["absent"] == ["long_sleep#1"] and record["complete"] is False
    assert lost["cost"] is None and record["cost"]["complete"] is False
    assert record["cost"]["absent"] == ["long_sleep#1"] and record["cost"]["unknown"] == []
    assert entries["steady#1"]["state"] == "success" and entries["steady#1"]["source"] == "task"
    assert entries["steady#1"]["cost"]["total_usd"] is not None
    # nothing the killed worker had run before is lost
    for dag_id, before in records.items():
        again = _wait_for_records(ran, {before["run_id"]}, timeout=5)[before["run_id"]]
        assert again["chain"]["hash"] == before["chain"]["hash"], dag_id
    verified = _cli(stack, "evidence", "verify")
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]
