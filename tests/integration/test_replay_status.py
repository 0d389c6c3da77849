"""`barecount replay status` on replays run in processes of their own: a replay whose process was killed is
shown interrupted (and resumable), never "running" forever; each JSON command prints JSON alone on stdout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from barecount_provider.cli import main
from barecount_provider.recovery.ledger import ReplayLedger
from barecount_provider.recovery.letters import make_letter
from barecount_provider.recovery.segments import LocalSegments, SegmentBackend

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DELIVERED: list[str] = []


def blocking_target(payload: object, key: str) -> None:
    """The killed replay's target: never returns (the test kills the process while it delivers)."""
    time.sleep(3600)


def quick_target(payload: object, key: str) -> None:
    DELIVERED.append(key)


def _queue(path: Path, n: int) -> None:
    queue = SegmentBackend(LocalSegments(str(path), segment_bytes=4096, durable=False), "local")
    queue.put([make_letter({"n": i}, tenant="acme", pipeline="orders", error=ValueError("v"), idempotency_key=f"k{i}") for i in range(n)])


def _status(ledger_url: str, capsys, *extra: str) -> dict:
    assert main(["replay", "status", "--ledger-url", ledger_url, "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_replay_killed_with_sigkill_is_shown_interrupted_and_a_new_run_resumes_it(tmp_path: Path, capsys) -> None:
    dlq, ledger_url = tmp_path / "dlq", f"sqlite:///{tmp_path / 'ledger.db'}"
    _queue(dlq, 3)
    common = ["--dlq", str(dlq), "--ledger-url", ledger_url, "--replay-id", "orders-replay", "--batch-size", "3"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        [sys.executable, "-m", "barecount_provider.cli", "replay", "run", *common,
         "--target", f"callable:{__name__}:blocking_target"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        ledger = ReplayLedger(ledger_url)
        deadline = time.monotonic() + 60
        while not ledger.counts("orders-replay")["in_flight"]:  # the batch is claimed: delivery has begun
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
            assert time.monotonic() < deadline, "the replay never claimed its batch"
            time.sleep(0.05)
        (running,) = _status(ledger_url, capsys)["scopes"][0]["runs"]
        assert running["state"] == "running" and running["pid"] == child.pid
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    (killed,) = _status(ledger_url, capsys)["scopes"][0]["runs"]
    assert (killed["state"], killed["recorded_state"], killed["resumable"]) == ("interrupted", "running", True)
    assert main(["replay", "status", "--ledger-url", ledger_url]) == 0
    assert "interrupted (its process is gone; resumable" in capsys.readouterr().out
    # resumable: the next run takes over the batch the killed one held and delivers it
    assert main(["replay", "run", *common, "--target", f"callable:{__name__}:quick_target", "--json"]) == 0
    outcome = json.loads(capsys.readouterr().out)
    assert (outcome["delivered"], outcome["redelivered"]) == (3, 3) and sorted(DELIVERED) == ["k0", "k1", "k2"]
    states = sorted(run["state"] for run in _status(ledger_url, capsys)["scopes"][0]["runs"])
    assert states == ["finished", "interrupted"]
    ledger.dispose()


def test_every_json_command_prints_json_alone_on_stdout_and_its_logs_on_stderr(tmp_path: Path) -> None:
    """Each command in a process of its own (Airflow configures its logging at import, onto stdout)."""
    dlq, ledger_url = tmp_path / "dlq", f"sqlite:///{tmp_path / 'ledger.db'}"
    _queue(dlq, 2)
    home = tmp_path / "airflow-home"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    queue_args = ["--dlq", str(dlq), "--ledger-url", ledger_url, "--target", f"callable:{__name__}:quick_target"]
    commands = [
        ["replay", "plan", *queue_args, "--json"],
        ["replay", "run", *queue_args, "--json"],
        ["replay", "status", "--ledger-url", ledger_url, "--json"],
        ["dlq", "stats", "--dlq", str(dlq), "--json"],
        ["evidence", "list", "--json"],
    ]
    for command in commands:
        done = subprocess.run(
            [sys.executable, "-m", "barecount_provider.cli", *command], cwd=ROOT, env=env, capture_output=True,
            text=True, timeout=120,
        )
        assert done.returncode == 0, (command, done.stderr[-2000:])
        try:
            json.loads(done.stdout)
        except ValueError as err:
            raise AssertionError(f"{command}: stdout is not one JSON document ({err}): {done.stdout[:500]!r}") from None
    replayed = subprocess.run(
        [sys.executable, "-m", "barecount_provider.cli", "replay", "run", *queue_args, "--replay-id", "again", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert replayed.returncode == 0 and json.loads(replayed.stdout)["scope_id"] == "again"
    assert "Replay again" in replayed.stderr  # the progress lines are there, on stderr
