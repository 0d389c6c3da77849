"""The forwarder's ``--loop`` (its parent process gone: one round, then exit): quiet by default, a heartbeat
each round that ``--check`` reads (issue 21)."""

from __future__ import annotations

import json
import os
import socket

import pytest

from barecount_provider import cli
from barecount_provider.runtime import forwarding

pytestmark = pytest.mark.integration


def _one_round_then_stop() -> list[str]:
    """``--loop`` with ``--parent-pid`` of a process that is gone: one round (the last), then exit 0."""
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return ["--parent-pid", str(gone.pid)]


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
