"""``barecount.emit.failed`` stays visible when every metric sink is down: noted in the component's log and the
file sink (at most one note a minute per process), and shown by ``barecount doctor``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from barecount_provider import cli, config
from barecount_provider.telemetry import metrics
from barecount_provider.telemetry.metrics import COUNTER, EMIT_FAILURES, Emitter, note_failures


class DownSink:
    """A metric sink whose every send fails (a StatsD or OTLP endpoint that is down)."""

    name = "statsd"

    def send(self, points):
        raise OSError("connection refused")

    def flush(self, timeout_ms):
        raise OSError("connection refused")


@pytest.fixture
def telemetry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(tmp_path / "telemetry"))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__FILE_SINK_ON", "True")
    config.cache_clear()
    EMIT_FAILURES.counts.clear()
    EMIT_FAILURES.unnoted.clear()
    EMIT_FAILURES.noted_at = None
    yield tmp_path / "telemetry"
    EMIT_FAILURES.counts.clear()
    EMIT_FAILURES.unnoted.clear()
    EMIT_FAILURES.noted_at = None
    config.cache_clear()


@pytest.fixture
def logged():
    """The messages of BareCount's metrics logger (whatever the logging configuration propagates)."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(metrics.__name__)
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_failures_are_noted_in_the_file_sink_and_the_log_when_every_metric_sink_is_down(telemetry, logged) -> None:
    emitter = Emitter([DownSink()])
    emitter.emit([("barecount.task.finished", COUNTER, 1, {"tenant": "acme"})] * 2)
    emitter.emit([("barecount.task.finished", COUNTER, 1, {"tenant": "acme"})])
    emitter.flush(10)
    # reporting them sends barecount.emit.failed to the sink that is down: one more failure, noted with them
    emitter.report_failures()
    [line] = _lines(telemetry / "emit_failures.jsonl")
    assert line["kind"] == "emit_failed" and line["total"] == 4
    assert line["counts"] == {"statsd/flush": 1, "statsd/send": 3}
    [note] = [message for message in logged if "failure(s) of its own" in message]
    assert note.startswith("BareCount: 4 failure(s) of its own since the last note (barecount.emit.failed")
    assert note.endswith("statsd/flush 1, statsd/send 3")


def test_at_most_one_note_a_minute_with_the_count_since_the_last(telemetry) -> None:
    path = telemetry / "emit_failures.jsonl"
    EMIT_FAILURES.record("statsd", "send")
    assert note_failures(now=1000.0) == 1
    for _ in range(5):
        EMIT_FAILURES.record("statsd", "send")
    assert note_failures(now=1030.0) == 0  # within the minute: held
    EMIT_FAILURES.record("otlp_metrics", "export")
    assert note_failures(now=1059.0) == 0
    assert note_failures(now=1061.0) == 6
    assert note_failures(now=2000.0) == 0  # nothing new: no line
    assert [(line["total"], line["counts"]) for line in _lines(path)] == [
        (1, {"statsd/send": 1}),
        (6, {"otlp_metrics/export": 1, "statsd/send": 5}),
    ]


def test_with_the_file_sink_off_the_note_goes_to_the_log_only(telemetry, monkeypatch, logged) -> None:
    monkeypatch.setenv("AIRFLOW__BARECOUNT__FILE_SINK_ON", "False")
    config.cache_clear()
    EMIT_FAILURES.record("statsd", "send")
    assert note_failures(now=1.0) == 1
    assert not (telemetry / "emit_failures.jsonl").exists()
    assert any("1 failure(s) of its own" in message for message in logged)


def test_a_note_that_cannot_be_written_never_raises(telemetry) -> None:
    telemetry.parent.joinpath("telemetry").write_text("a file where the directory should be")
    EMIT_FAILURES.record("statsd", "send")
    assert note_failures(now=1.0) == 1


def test_doctor_shows_the_failures_noted_in_the_file_sink(telemetry, monkeypatch, capsys) -> None:
    EMIT_FAILURES.record("statsd", "send")
    EMIT_FAILURES.record("statsd", "send")
    note_failures(now=1.0)
    EMIT_FAILURES.record("otlp_metrics", "export")
    note_failures(now=100.0)
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_ON", "False")
    config.cache_clear()
    cli.main(["doctor"])
    out = capsys.readouterr().out
    section = out.split("Own failures (barecount.emit.failed)\n", 1)[1].splitlines()
    assert section[0].startswith(f"  {telemetry / 'emit_failures.jsonl'}: 3 failure(s) noted from ")
    assert section[1] == "    by sink/stage: statsd/send 2, otlp_metrics/export 1"


def test_doctor_says_when_none_were_noted(telemetry, monkeypatch, capsys) -> None:
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_ON", "False")
    config.cache_clear()
    cli.main(["doctor"])
    out = capsys.readouterr().out
    assert f"Own failures (barecount.emit.failed)\n  {telemetry / 'emit_failures.jsonl'}: none noted\n" in out
