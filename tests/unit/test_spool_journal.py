"""The OTLP spool's journal: every spooling process appends its record (one line) to one file under a lock,
and a forwarder seals the journal into a spool file of its own under the same lock. Proven with real
processes: nothing is lost or read twice while writers and a forwarder race, a torn tail costs only
itself, a held lock delays the sealing by a bounded time, and a journal that cannot be used gives way to a
file of the record's own."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from barecount_provider import outbox
from barecount_provider.runtime import forwarding
from barecount_provider.telemetry import metrics, outbox_sinks

WRITERS = 4
RECORDS_PER_WRITER = 150


@pytest.fixture
def spool_home(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__OTLP_METRICS_ON", "True")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__FILE_SINK_ON", "False")
    metrics.EMIT_FAILURES.counts.clear()
    yield tmp_path / "spool"
    outbox._PENDING_POINTS.clear()


def _spool_one(tag: str) -> None:
    outbox_sinks.SpoolMetricSink().send([("barecount.test.point", "counter", 1.0, {"id": tag})])
    outbox.write_pending()


def _writer(index: int) -> None:
    # A slow write (1 ms between the journal's opening and the write) widens the window in which a
    # forwarder that did not wait for the lock would seal and read the journal before the write lands.
    real_write = os.write

    def slow_write(fd: int, data: bytes) -> int:
        time.sleep(0.001)
        return real_write(fd, data)

    os.write = slow_write  # this child process only
    for number in range(RECORDS_PER_WRITER):
        _spool_one(f"{index}-{number}")


def _forward_once(directory: str) -> list[str]:
    """One forwarder round without exporting: claim (sealing the journal first), read, remove."""
    paths = forwarding._claim(directory, forwarding.MAX_FILES_PER_ROUND)
    found = forwarding._read(paths)
    for path in paths:
        os.unlink(path)
    return [tags["id"] for _, _, _, tags in found.points]


def test_racing_writers_and_a_sealing_forwarder_lose_nothing_and_read_nothing_twice(spool_home):
    """Four processes append 600 records while a forwarder seals and reads the journal as fast as it can."""
    os.makedirs(spool_home, exist_ok=True)
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_writer, args=(index,)) for index in range(WRITERS)]
    for process in writers:
        process.start()
    seen: list[str] = []
    rounds = 0
    while any(process.is_alive() for process in writers):
        seen.extend(_forward_once(str(spool_home)))
        rounds += 1
    for process in writers:
        process.join()
        assert process.exitcode == 0
    seen.extend(_forward_once(str(spool_home)))  # what came after the last round during the race
    expected = [f"{index}-{number}" for index in range(WRITERS) for number in range(RECORDS_PER_WRITER)]
    assert sorted(seen) == sorted(expected)  # every record, once
    assert rounds > 1
    # the spool's own failures (a background thread left by an earlier test may count its sinks meanwhile)
    assert {key: n for key, n in metrics.EMIT_FAILURES.counts.items() if key[0] == "spool"} == {}
    assert outbox.records_waiting(str(spool_home)) == []


def test_a_torn_tail_costs_only_its_own_record_and_is_counted(spool_home):
    """A writer killed mid-write leaves a tail without its newline; the next record starts on a new line."""
    _spool_one("before")
    with open(spool_home / outbox.JOURNAL, "ab") as journal:
        journal.write(b'\n{"points": [["barecount.test.point", "counter", 1.0, {"id": "to')  # killed here
    _spool_one("after")
    assert _forward_once(str(spool_home)) == ["before", "after"]
    assert metrics.EMIT_FAILURES.counts == {("spool", "read"): 1}


def _hold_lock(directory: str, ready, release) -> None:
    fd = os.open(os.path.join(directory, outbox.JOURNAL_LOCK), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    ready.set()
    release.wait(30)
    os.close(fd)


def test_a_journal_whose_lock_is_held_waits_for_the_next_round(spool_home):
    """A writer that holds the lock (stopped mid-write) delays the sealing by at most its wait, and the
    journal's records leave with the next round."""
    _spool_one("waiting")
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(spool_home), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        started = time.monotonic()
        outbox.seal_journal(str(spool_home), wait_s=0.05)
        waited = time.monotonic() - started
        assert (spool_home / outbox.JOURNAL).exists()  # not sealed: its writer may still be writing
        assert waited >= 0.05
    finally:
        release.set()
        holder.join(30)
    assert _forward_once(str(spool_home)) == ["waiting"]
    assert not (spool_home / outbox.JOURNAL).exists()


def test_a_journal_that_cannot_be_used_gives_way_to_a_file_of_the_record_s_own(spool_home):
    """A lock file that cannot be opened (here a directory in its place; in life, another user's): the
    record is written to a spool file of its own, and forwarded like the journal's."""
    os.makedirs(spool_home / outbox.JOURNAL_LOCK)
    _spool_one("alone")
    names = [name for name in os.listdir(spool_home) if name.endswith(outbox.SUFFIX)]
    assert len(names) == 1 and not (spool_home / outbox.JOURNAL).exists()
    assert json.loads((spool_home / names[0]).read_text().strip())["points"][0][3] == {"id": "alone"}
    assert metrics.EMIT_FAILURES.counts == {}
    assert _forward_once(str(spool_home)) == ["alone"]


def test_a_line_that_is_not_utf8_costs_only_itself_and_is_counted(spool_home):
    _spool_one("before")
    with open(spool_home / outbox.JOURNAL, "ab") as journal:
        journal.write(b"\n\xff\xfe not a record\n")
    _spool_one("after")
    assert _forward_once(str(spool_home)) == ["before", "after"]
    assert metrics.EMIT_FAILURES.counts == {("spool", "read"): 1}


def test_files_claimed_by_a_forwarder_killed_with_sigkill_are_taken_over_at_once(spool_home):
    """A forwarder killed (SIGKILL) between claiming its files and forwarding them leaves them in its
    ``.forwarding-<pid>`` directory: the next forwarder takes them over in its first round, not after
    ``STALE_CLAIM_SECONDS`` (the claim is seconds old). A live forwarder's fresh claim is left alone."""
    _spool_one("left-behind")
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_claim = spool_home / f".forwarding-{victim.pid}"
        dead_claim.mkdir()
        (pending,) = [p for p in spool_home.iterdir() if p.name.endswith(outbox.SUFFIX)] or [None]
        if pending is None:  # still in the journal: seal it the way a forwarder does, then move it
            outbox.seal_journal(str(spool_home))
            (pending,) = [p for p in spool_home.iterdir() if p.name.endswith(outbox.SUFFIX)]
        os.rename(pending, dead_claim / pending.name)
        live_claim = spool_home / f".forwarding-{os.getppid()}"  # a process that runs (this one's parent)
        live_claim.mkdir()
        (live_claim / "other.jsonl").write_text("")
        assert _forward_once(str(spool_home)) == []  # its forwarder still runs: nothing taken over yet
    finally:
        victim.kill()
        victim.wait()
    assert _forward_once(str(spool_home)) == ["left-behind"]
    assert (live_claim / "other.jsonl").exists()
