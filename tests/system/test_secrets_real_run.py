"""No secret in any output of a real run: a corpus of more than 40 kinds of secrets (the unit tests' corpus,
values of sensitively named environment variables, bare AWS secret access keys in sentences and exception
messages) goes through a DAG written to leak them (tests/system/dags/secrets_leak_dag.py: the task logger,
print(), a subprocess, an exception message and its cause, a runner's result left for the evidence entry) on
a real stack of its own (api-server, scheduler, dag-processor, LocalExecutor, SQLite). Then every file the
run produced is read as bytes: task logs, component logs, BareCount's telemetry files and spool, evidence
bodies and index, Airflow's metadata database; and what the Evidence API serves, what the ``barecount``
command prints and the StatsD lines. A failure names the secret's kind, how it was injected and where it was
found.
"""

from __future__ import annotations

import json
import random
import shutil
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_redaction import CORPUS

from .conftest import SYSTEM_DAGS, UdpCollector
from .stack import AirflowStack

pytestmark = pytest.mark.system

DAG_ID = "secrets_leak_dag"
INJECTED = (
    "the task logger, print(), a subprocess's output (leak_output); an exception message and its cause "
    "(leak_exception); a runner's result for the evidence entry (leak_output)"
)

_RNG = random.Random(20261207)
_B64 = string.ascii_letters + string.digits + "+/"
_ALNUM = string.ascii_letters + string.digits


def _rand(alphabet: str, length: int) -> str:
    return "".join(_RNG.choice(alphabet) for _ in range(length))


# Values of sensitively named variables, in the environment of every process of the stack. Nothing in them
# that a value pattern knows: only their registration with the masker hides them.
SENSITIVE_ENV = {
    "DB_PASSWORD": "Zq8-" + _rand(_ALNUM, 18),
    "PAYMENTS_API_KEY": "pk-" + _rand(_ALNUM, 24),
    "ACME_SECRET_SAUCE": "sauce-" + _rand(_ALNUM, 16),
    "SERVICE_TOKEN": "svc-" + _rand(_ALNUM, 20),
    "PARTNER_CREDENTIALS": "cred-" + _rand(_ALNUM, 16),
    "SFTP_PASSPHRASE": "phrase-" + _rand(_ALNUM, 14),
}


@dataclass(frozen=True)
class Secret:
    kind: str
    text: str  # the secret in its natural context, as the DAG leaks it
    secrets: tuple[str, ...]  # what must never come out


def _secrets() -> list[Secret]:
    cases = [Secret(case.kind, case.text, case.secrets) for case in CORPUS]
    for name, value in SENSITIVE_ENV.items():
        cases.append(
            Secret(f"env_{name.lower()}", f"connecting as etl with {value} (from ${name})", (value,))
        )
    key_id = "AK" + "IA" + _rand(string.ascii_uppercase + string.digits, 16)
    for kind, template in (
        ("aws_bare_key_in_sentence", "using the aws secret {key} for the upload"),
        ("aws_bare_key_with_key_id", "boto3 client ({key_id}, {key}) created"),
        ("aws_bare_key_in_exception", "ClientError: SignatureDoesNotMatch, credential {key} rejected"),
    ):
        key = _rand(_B64, 39) + "Q"
        cases.append(Secret(kind, template.format(key=key, key_id=key_id), (key,)))
    return cases


SECRETS = _secrets()

# Written by this test or its harness, not by the run (the harness's list of the stack's environment and
# the auth manager's password file).
HARNESS_FILES = {"stack.env", "simple_auth_manager_passwords.json"}


@pytest.fixture(scope="module")
def leaky_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AirflowStack, UdpCollector]]:
    home = tmp_path_factory.mktemp("airflow-home-secrets")
    dags = tmp_path_factory.mktemp("dags-secrets")
    shutil.copy(SYSTEM_DAGS / "secrets_leak_dag.py", dags)
    cases_file = tmp_path_factory.mktemp("secrets-corpus") / "cases.json"  # outside AIRFLOW_HOME
    cases_file.write_text(json.dumps([{"kind": s.kind, "text": s.text} for s in SECRETS]))
    collector = UdpCollector()
    extra_env = {
        **SENSITIVE_ENV,
        "LEAKY_CASES_FILE": str(cases_file),
        "AIRFLOW__BARECOUNT__SECRET_KEY": "system-test-secret-key",
        "AIRFLOW__BARECOUNT__STATSD_ON": "True",
        "AIRFLOW__BARECOUNT__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__BARECOUNT__STATSD_PORT": str(collector.port),
        "AIRFLOW__BARECOUNT__EVIDENCE_GRACE_SECONDS": "5",
    }
    try:
        with AirflowStack(home=home, dags_folder=dags, extra_env=extra_env) as stack:
            yield stack, collector
    finally:
        collector.close()


def _cli(stack: AirflowStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**stack.env, "AIRFLOW_HOME": str(stack.home)}
    return subprocess.run(
        [str(Path(sys.executable).with_name("barecount")), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def leaked_run(leaky_stack: tuple[AirflowStack, UdpCollector]) -> dict[str, Any]:
    """The run, once it failed, its record was sealed and the forwarder wrote the tries' outputs."""
    stack, _collector = leaky_stack
    stack.wait_for_dag(DAG_ID)
    stack.unpause(DAG_ID)
    run_id = stack.trigger(DAG_ID)
    assert stack.wait_for_run(DAG_ID, run_id, timeout=300) == "failed"
    deadline = time.monotonic() + 150
    record_id, listed = None, None
    while time.monotonic() < deadline and record_id is None:
        listed = _cli(stack, "evidence", "list", "--dag", DAG_ID, "--json")
        if listed.returncode == 0:
            record_id = next(
                (r["record_id"] for r in json.loads(listed.stdout)["records"] if r["run_id"] == run_id), None
            )
        time.sleep(1.0)
    assert record_id, (
        f"no evidence record: {listed.stdout if listed else ''} {listed.stderr if listed else ''}"
    )
    events = stack.home / "barecount" / "telemetry" / "events.jsonl"
    stack.wait_for_file(events, timeout=60, contains='"task_id":"leak_exception"')
    time.sleep(3)  # the forwarder's round that wrote the event also wrote the span line and the points
    return {"run_id": run_id, "record_id": record_id}


def _run_files(stack: AirflowStack) -> dict[str, bytes]:
    """Every file under AIRFLOW_HOME but the harness's own, as bytes (SQLite databases and their journals
    included)."""
    files: dict[str, bytes] = {}
    for path in sorted(stack.home.rglob("*")):
        if path.is_file() and path.name not in HARNESS_FILES and "__pycache__" not in path.parts:
            files[str(path.relative_to(stack.home))] = path.read_bytes()
    return files


def _forms(secret: str) -> set[bytes]:
    """How a secret would appear in a file: as is, and escaped in JSON."""
    return {secret.encode(), json.dumps(secret)[1:-1].encode()}


def _leaks(outputs: dict[str, bytes]) -> list[str]:
    found = []
    for case in SECRETS:
        for secret in case.secrets:
            for where, data in outputs.items():
                if any(form in data for form in _forms(secret)):
                    found.append(f"{case.kind} (injected via {INJECTED}) found in {where}")
    return found


def test_the_corpus_has_at_least_forty_kinds():
    kinds = {case.kind for case in SECRETS}
    assert len(kinds) >= 40
    assert {kind for kind in kinds if kind.startswith("env_")} and {
        k for k in kinds if k.startswith("aws_bare")
    }


def test_the_run_leaked_through_every_channel(
    leaky_stack: tuple[AirflowStack, UdpCollector], leaked_run: dict
):
    """The control: the lines were written (redacted), the exception reached the span and the evidence."""
    stack, _ = leaky_stack
    log_text = stack.task_log_path(DAG_ID, leaked_run["run_id"], "leak_output").read_text()
    for case in SECRETS:
        for channel in ("logging", "print", "subprocess"):
            assert f"{channel} [{case.kind}]" in log_text, f"{case.kind}: no line from {channel}"
    failed_log = stack.task_log_path(DAG_ID, leaked_run["run_id"], "leak_exception").read_text()
    assert "RuntimeError" in failed_log and "load failed: " in failed_log
    spans = (stack.home / "barecount" / "telemetry" / "spans.jsonl").read_text()
    assert "load failed: " in spans and "***" in spans
    record = json.loads(_cli(stack, "evidence", "show", leaked_run["record_id"], "--json").stdout)
    entries = {entry["key"]: entry for entry in record["entries"]}
    assert "load failed: " in entries["leak_exception#1"]["error"]["message"]
    assert entries["leak_output#1"]["runner_result"]["billed_duration_ms"] == 1200


def test_no_secret_in_any_file_the_run_produced(
    leaky_stack: tuple[AirflowStack, UdpCollector], leaked_run: dict
):
    stack, _ = leaky_stack
    files = _run_files(stack)
    assert "airflow.db" in files and any(name.startswith("logs/dag_id=") for name in files)
    assert any(name.startswith("logs-scheduler") for name in files)
    assert any(name.startswith("barecount/evidence/") for name in files)
    assert any(name.startswith("barecount/telemetry/") for name in files)
    leaks = _leaks(files)
    assert not leaks, "\n".join(leaks)


def test_no_secret_in_what_is_served_printed_or_sent(
    leaky_stack: tuple[AirflowStack, UdpCollector], leaked_run: dict
):
    stack, collector = leaky_stack
    outputs: dict[str, bytes] = {}
    served = stack.api("GET", f"/barecount/evidence/{leaked_run['record_id']}")
    outputs["GET /barecount/evidence/{record_id}"] = served.content
    outputs["GET /barecount/evidence"] = stack.api(
        "GET", "/barecount/evidence", params={"dag_id": DAG_ID}
    ).content
    for args in (
        ("evidence", "show", leaked_run["record_id"]),
        ("evidence", "show", leaked_run["record_id"], "--json"),
        ("runs",),
        ("runs", "--json"),
    ):
        done = _cli(stack, *args)
        outputs["barecount " + " ".join(args)] = (done.stdout + done.stderr).encode()
    outputs["StatsD lines"] = "\n".join(collector.lines).encode()
    assert b"load failed: " in outputs["GET /barecount/evidence/{record_id}"]
    leaks = _leaks(outputs)
    assert not leaks, "\n".join(leaks)
