"""The forwarder beside a worker: a heartbeat each round, ``--check`` for alerts (issue 21); its ``--loop``:
tests/integration/test_forwarding.py."""

from __future__ import annotations

import json
import time

from barecount_provider import cli
from barecount_provider.runtime import forwarding


def test_check_without_heartbeat_fails_with_one_line(telemetry_dir, capsys):
    assert cli.main(["telemetry", "forward", "--check"]) == 1
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1
    assert "no forwarder heartbeat" in out and str(telemetry_dir) in out


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


def test_heartbeat_write_failure_is_counted_never_raised(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(blocker / "sub"))  # a file where a dir must be
    from barecount_provider.telemetry.metrics import EMIT_FAILURES

    before = EMIT_FAILURES.counts[("spool", "heartbeat")]
    assert forwarding.write_heartbeat({"files": 0}, 2.0, failures={}) is False
    assert EMIT_FAILURES.counts[("spool", "heartbeat")] == before + 1
