"""The forwarder beside a worker: quiet by default, a heartbeat each round, ``--check`` for alerts (issue 21)."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from barecount_provider import cli
from barecount_provider.runtime import forwarding


@pytest.fixture
def telemetry_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(tmp_path))
    return tmp_path


def _one_round_then_stop() -> list[str]:
    """``--loop`` with ``--parent-pid`` of a process that is gone: one round (the last), then exit 0."""
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return ["--parent-pid", str(gone.pid)]


def test_check_without_heartbeat_fails_with_one_line(telemetry_dir, capsys):
    assert cli.main(["telemetry", "forward", "--check"]) == 1
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1
    assert "no forwarder heartbeat" in out and str(telemetry_dir) in out


def test_loop_writes_heartbeat_and_check_passes(telemetry_dir, monkeypatch, capsys):
    stop = _one_round_then_stop()
    assert cli.main(["telemetry", "forward", "--loop", "5", *stop]) == 0
    beat = json.loads((telemetry_dir / "forwarder.heartbeat").read_text())
    assert beat["pid"] == os.getpid()
    assert beat["host"] == socket.gethostname()
    assert beat["interval_s"] == 5
    assert set(beat["counts"]) >= {"files", "records", "entries"}
    assert beat["last_error"] is None
    capsys.readouterr()
    assert cli.main(["telemetry", "forward", "--check"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("forwarder ok") and len(out.splitlines()) == 1


def test_check_fails_on_a_stale_heartbeat(telemetry_dir, capsys):
    forwarding.write_heartbeat({"files": 0}, 2.0, failures={})
    beat_file = telemetry_dir / "forwarder.heartbeat"
    beat = json.loads(beat_file.read_text())
    beat["time"] = time.time() - 7  # older than 3 x 2 s
    beat_file.write_text(json.dumps(beat))
    assert cli.main(["telemetry", "forward", "--check"]) == 1
    assert "STALE" in capsys.readouterr().out
    assert cli.main(["telemetry", "forward", "--check", "--max-age", "3600"]) == 0


def test_check_names_the_last_round_failures(telemetry_dir, capsys):
    forwarding.write_heartbeat({"files": 1}, 2.0, failures={"otlp_metrics/export": 2})
    assert cli.main(["telemetry", "forward", "--check"]) == 0
    assert "otlp_metrics/export 2" in capsys.readouterr().out


def test_check_on_an_unreadable_heartbeat_fails(telemetry_dir, capsys):
    (telemetry_dir / "forwarder.heartbeat").write_text("{not json")
    assert cli.main(["telemetry", "forward", "--check"]) == 1
    assert "unreadable forwarder heartbeat" in capsys.readouterr().out


def test_loop_is_quiet_by_default_one_line_at_start(telemetry_dir, monkeypatch, capsys):
    stop = _one_round_then_stop()
    assert cli.main(["telemetry", "forward", "--loop", "5", *stop]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("BareCount forwarder: pid")
    assert "files 0" not in captured.out + captured.err  # no per-round counts


def test_loop_reports_a_round_with_problems(telemetry_dir, monkeypatch, capsys):
    stop = _one_round_then_stop()

    def failing_round(timeout_ms=None, batch=False):
        forwarding.LAST_ROUND_FAILURES = {"otlp_metrics/export": 1}
        return {"files": 1, "records": 1, "points": 1, "spans": 0, "lines": 0, "entries": 0}

    monkeypatch.setattr(forwarding, "flush_spool", failing_round)
    monkeypatch.setattr(forwarding, "LAST_ROUND_FAILURES", {})
    assert cli.main(["telemetry", "forward", "--loop", "5", *stop]) == 0
    captured = capsys.readouterr()
    assert "round with problems: otlp_metrics/export 1" in captured.err
    beat = json.loads((telemetry_dir / "forwarder.heartbeat").read_text())
    assert beat["last_error"] == "otlp_metrics/export 1"


def test_loop_verbose_prints_each_round(telemetry_dir, monkeypatch, capsys):
    stop = _one_round_then_stop()
    assert cli.main(["telemetry", "forward", "--loop", "5", "--verbose", *stop]) == 0
    assert "files 0" in capsys.readouterr().out


def test_heartbeat_write_failure_is_counted_never_raised(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(blocker / "sub"))  # a file where a dir must be
    from barecount_provider.telemetry.metrics import EMIT_FAILURES

    before = EMIT_FAILURES.counts[("spool", "heartbeat")]
    assert forwarding.write_heartbeat({"files": 0}, 2.0, failures={}) is False
    assert EMIT_FAILURES.counts[("spool", "heartbeat")] == before + 1
