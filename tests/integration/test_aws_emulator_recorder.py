"""The system tests' AWS emulator (tests/system/aws_emulator.py) in a fresh process: moto reads its request
recorder's file path once, when it is first imported, so an emulator started after another was stopped in the
same process must still be able to record (the CeleryExecutor test's emulator runs before the runner DAGs'
one when tests/system runs alone)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
from tests.system.aws_emulator import AwsEmulator

first = AwsEmulator().start()
first.stop()
second = AwsEmulator().start()
try:
    second.start_recording()
    second.client("s3").list_buckets()
    print("recorded", len(second.recorded_requests()))
finally:
    second.stop()
"""


def test_an_emulator_started_after_another_stopped_still_records(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MOTO_RECORDER_FILEPATH"}  # as in a fresh session
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["TMPDIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("recorded ") and int(done.stdout.split()[1]) >= 1, done.stdout
    assert not list(tmp_path.glob("barecount-aws-emulator-*")), "the recorder's directory is left behind"
