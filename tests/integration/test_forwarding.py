"""The forwarder's ``--loop`` (its parent process gone: one round, then exit): quiet by default, a heartbeat
each round that ``--check`` reads (issue 21); the forwarder process the scheduler starts, ending with its
scheduler, and ``barecount telemetry forward`` exporting the spool to a real OTLP/HTTP collector."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from barecount_provider import cli
from barecount_provider.runtime import forwarding, task_side

from ..unit.test_outbox_sinks import _records, _ti

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


@pytest.fixture
def collector():
    """A real OTLP/HTTP collector on 127.0.0.1: answers 200 and keeps the paths it was sent."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[str] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(endpoint=f"http://127.0.0.1:{server.server_address[1]}", received=received)
    server.shutdown()
    server.server_close()


def _wait_for(condition, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_the_scheduler_forwards_the_spool_from_a_child_process(otlp_config, collector, monkeypatch):
    """The scheduler side starts `barecount telemetry forward --loop` as a child process: it exports the
    spool to a real collector; stopping it makes a last round and the process exits 0."""
    from barecount_provider.runtime import scheduler_side

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
    # One round at start, then none before the stop: the second try can only leave through the last round
    # (with the usual 2 s, a periodic round could take it first, and the count below would race it).
    monkeypatch.setattr(forwarding, "FORWARD_INTERVAL_SECONDS", 600.0)
    side = scheduler_side.SchedulerSide()
    monkeypatch.setattr(side, "prepare", lambda: None)
    ti = _ti("load")
    task_side.on_try_running(ti)
    task_side.on_try_finished(ti, "success")
    assert _records(otlp_config)
    assert side.start_forwarder()
    process = side._forwarder.process
    try:
        # Both exports of the round (they run concurrently: the spans' may arrive first), and the spool empty.
        assert _wait_for(
            lambda: {"/v1/traces", "/v1/metrics"} <= set(collector.received) and not _records(otlp_config)
        )
        ti = _ti("publish")  # spooled while the forwarder waits: its stop makes a last round
        task_side.on_try_running(ti)
        task_side.on_try_finished(ti, "success")
        sent = collector.received.count("/v1/traces")
    finally:
        side.stop()
    assert process.poll() == 0
    assert collector.received.count("/v1/traces") == sent + 1 and _records(otlp_config) == []
    assert not side.start_forwarder()  # once per scheduler side


def test_the_forwarder_process_ends_when_its_scheduler_is_gone(otlp_config, collector, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
    scheduler = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    forwarder = subprocess.Popen(
        [sys.executable, "-m", "barecount_provider.cli", "telemetry", "forward", "--quiet", "--loop", "0.2",
         "--parent-pid", str(scheduler.pid)],
        stdout=subprocess.DEVNULL,
    )
    try:
        ti = _ti("load")
        task_side.on_try_running(ti)
        task_side.on_try_finished(ti, "success")
        assert _wait_for(lambda: "/v1/traces" in collector.received)
        assert forwarder.poll() is None
        scheduler.kill()
        scheduler.wait()
        assert forwarder.wait(timeout=30) == 0
    finally:
        for process in (scheduler, forwarder):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_barecount_telemetry_forward_exports_the_spool_to_a_real_collector(otlp_config, collector, monkeypatch, capsys):
    """Where no scheduler runs, `barecount telemetry forward` exports the spool: a real HTTP collector on
    127.0.0.1 receives the spans and the points, and the spool is empty afterwards."""
    import json

    from barecount_provider import cli

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
    for index in range(2):
        ti = _ti(f"t{index}")
        task_side.on_try_running(ti)
        task_side.on_try_finished(ti, "success")
    assert len(_records(otlp_config)) == 2
    assert cli.main(["telemetry", "forward", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["records"] == 2 and result["spans"] == 2 and result["points"] > 0
    assert sorted(set(collector.received)) == ["/v1/metrics", "/v1/traces"]
    assert _records(otlp_config) == []
