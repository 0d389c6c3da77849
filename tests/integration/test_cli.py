"""The `barecount` command with a real StatsD listener (UDP) and as the installed command (a subprocess)."""

from __future__ import annotations

import socket

import pytest

from barecount_provider import cli, config

pytestmark = pytest.mark.integration


def test_doctor_is_happy_with_a_listening_statsd(monkeypatch, capsys):
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    try:
        monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_ON", "True")
        monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_PORT", str(listener.getsockname()[1]))
        config.cache_clear()
        assert cli.main(["doctor"]) == 0
        assert "OK" in capsys.readouterr().out
    finally:
        listener.close()


def test_no_traceback_from_the_installed_command(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "AIRFLOW__BARECOUNT__EVIDENCE_DIR": str(tmp_path / "evidence")}
    for argv in (["evidence", "list", "--offset", str(2**64)], ["dlq", "list", "--until", "9999-12-31T23:59:59-01:00"]):
        out = subprocess.run(
            [sys.executable, "-m", "barecount_provider.cli", *argv], capture_output=True, text=True, env=env, timeout=120
        )
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr
        assert out.stderr.strip().splitlines()[-1].startswith(f"barecount {argv[0]} {argv[1]}: error: argument {argv[2]}:")
