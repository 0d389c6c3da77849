"""Handing a try's outputs to the forwarder with real processes and sockets: who writes a try's outputs while a
forwarder lives (a process, a fork of the scheduler), a dead forwarder started again, and the StatsD points a
handed-off try's forwarder sends to a real UDP listener.

Named after the hand-off, not one module: it tests the task side, the outbox and the forwarder together on
purpose."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from barecount_provider import outbox
from barecount_provider.runtime import forwarding
from barecount_provider.telemetry import metrics

from ..unit.test_handoff import SECRET, _run_try

pytestmark = pytest.mark.integration


def _handoff_with(monkeypatch, mode: str, pid: str | None = None, owner: str | None = None) -> bool:
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TASK_OUTPUTS", mode)
    for name, value in ((outbox.FORWARDER_PID_ENV, pid), (outbox.FORWARDER_OWNER_ENV, owner)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    from barecount_provider import config

    config.cache_clear()
    monkeypatch.setattr(outbox, "_handoff", None)
    return outbox.handoff()


def test_who_writes_a_tries_outputs_follows_task_outputs_and_a_live_forwarder(monkeypatch):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = str(sleeper.pid)
        assert _handoff_with(monkeypatch, "task", alive) is False
        assert _handoff_with(monkeypatch, "forwarder") is True
        assert _handoff_with(monkeypatch, "auto") is False  # no forwarder named
        assert _handoff_with(monkeypatch, "auto", alive) is True
        assert _handoff_with(monkeypatch, "auto", alive, owner=str(os.getpid())) is False  # the scheduler itself
        assert _handoff_with(monkeypatch, "auto", "not-a-pid") is False
    finally:
        sleeper.kill()
        sleeper.wait()
    assert _handoff_with(monkeypatch, "auto", str(sleeper.pid)) is False  # the forwarder died
    assert _handoff_with(monkeypatch, "sometimes") is False  # a bad value: the task writes them itself


def test_the_scheduler_names_its_forwarder_to_the_processes_it_forks(home, monkeypatch):
    from barecount_provider.runtime import scheduler_side

    monkeypatch.setattr(forwarding, "FORWARD_INTERVAL_SECONDS", 600.0)
    side = scheduler_side.SchedulerSide()
    assert side.start_forwarder()  # no OTLP: started for the handed-off outputs (task_outputs = auto)
    try:
        assert os.environ[outbox.FORWARDER_PID_ENV] == str(side._forwarder.process.pid)
        assert outbox.handoff() is False  # the scheduler writes its own outputs
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the forked child reports through the pipe
            os.write(write, b"1" if outbox.handoff() else b"0")
            os._exit(0)
        os.waitpid(child, 0)
        assert os.read(read, 1) == b"1"  # a process forked from now on hands off
    finally:
        side.stop()
    assert outbox.FORWARDER_PID_ENV not in os.environ


def test_a_dead_forwarder_is_started_again_and_named_anew(home, monkeypatch):
    from barecount_provider.runtime import scheduler_side

    monkeypatch.setattr(forwarding, "FORWARD_INTERVAL_SECONDS", 600.0)
    side = scheduler_side.SchedulerSide()
    assert side.start_forwarder()
    try:
        first = side._forwarder.process
        first.kill()
        first.wait()
        assert side.check_forwarder()
        assert side._forwarder.process.pid != first.pid
        assert os.environ[outbox.FORWARDER_PID_ENV] == str(side._forwarder.process.pid)
        assert metrics.EMIT_FAILURES.counts[("spool", "forwarder_died")] == 1
        assert not side.check_forwarder()  # running: nothing to do
    finally:
        side.stop()
    assert not side.check_forwarder()  # stopped with its scheduler side: never started again
    assert outbox.FORWARDER_PID_ENV not in os.environ


def _datagram_lines(sock) -> list[str]:
    """Every StatsD line waiting on ``sock`` (a real UDP socket), without waiting for more."""
    import socket

    lines: list[str] = []
    while True:
        try:
            data = sock.recv(65535, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return lines
        lines.extend(data.decode().splitlines())


@pytest.mark.parametrize("outputs", ["forwarder", "task"])
def test_a_handed_off_try_s_statsd_points_are_sent_by_the_forwarder(home, monkeypatch, outputs):
    """Handed off, the end of a try costs the task process no datagram: its StatsD points go with the spool
    file it writes anyway, already cleaned and redacted, and the forwarder sends them. The start is sent by
    the task process itself (a try killed before its end is still counted as started)."""
    import socket

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_ON", "True")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_PORT", str(server.getsockname()[1]))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TASK_OUTPUTS", outputs)
    try:
        _run_try("load", ValueError(f"login failed: password={SECRET}"))
        from_task = _datagram_lines(server)
        forwarding.flush_spool()
        from_forwarder = _datagram_lines(server)
    finally:
        server.close()
    # The try's own points (the evidence entry's cost points come from whoever costs it: see above).
    names = lambda lines: sorted(n for n in (line.split(":", 1)[0] for line in lines) if n.startswith("barecount.task."))  # noqa: E731
    finished = ["barecount.task.cpu_time", "barecount.task.duration", "barecount.task.failures",
                "barecount.task.finished", "barecount.task.io_read", "barecount.task.io_write",
                "barecount.task.peak_memory"]
    if outputs == "forwarder":
        assert names(from_task) == ["barecount.task.started"]
        assert names(from_forwarder) == finished
    else:
        assert names(from_task) == sorted(["barecount.task.started", *finished])
        assert from_forwarder == []
    finished_line = next(line for line in from_task + from_forwarder if line.startswith("barecount.task.finished:"))
    assert finished_line.startswith("barecount.task.finished:1|c|#")
    assert "tenant:acme" in finished_line and "pipeline:orders" in finished_line and "state:failed" in finished_line
    assert "run_id" not in finished_line and "correlation_id" not in finished_line
    assert metrics.EMIT_FAILURES.total() == 0


def test_a_try_s_hooks_run_no_import_machinery_of_importlib(home, monkeypatch):
    """``from package import module`` inside a function runs importlib's Python code (``_handle_fromlist``)
    on every call, code that is cold in a forked task process: the hooks of a try (started, succeeded, failed
    and retried, handed off, with StatsD and the OTLP spool) never go through it after the first try."""
    import importlib._bootstrap as bootstrap
    import socket

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_ON", "True")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_PORT", str(server.getsockname()[1]))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__OTLP_METRICS_ON", "True")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TASK_OUTPUTS", "forwarder")
    try:
        _run_try("warm", ValueError("first"))  # the first try may import what it needs
        _run_try("warm_ok")
        calls: list[tuple[str, tuple[str, ...]]] = []
        original = bootstrap._handle_fromlist

        def spy(module, fromlist, *args, **kwargs):
            calls.append((module.__name__, tuple(fromlist)))
            return original(module, fromlist, *args, **kwargs)

        monkeypatch.setattr(bootstrap, "_handle_fromlist", spy)
        _run_try("load")
        _run_try("fails", ValueError(f"password={SECRET}"))
        monkeypatch.setattr(bootstrap, "_handle_fromlist", original)
    finally:
        server.close()
    assert calls == []
    assert len(outbox.records_waiting()) == 4  # the tries did run, handed off
