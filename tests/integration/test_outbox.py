"""The OTLP spool's journal (the outbox) with real processes: nothing is lost or read twice while writers and a
forwarder race, a held lock delays the sealing by a bounded time, and files claimed by a forwarder killed with
SIGKILL are taken over at once."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from barecount_provider import outbox
from barecount_provider.telemetry import metrics

from ..conftest import forward_once, spool_one

pytestmark = pytest.mark.integration

WRITERS = 4
RECORDS_PER_WRITER = 150


def _writer(index: int) -> None:
    # A slow write (1 ms between the journal's opening and the write) widens the window in which a
    # forwarder that did not wait for the lock would seal and read the journal before the write lands.
    real_write = os.write

    def slow_write(fd: int, data: bytes) -> int:
        time.sleep(0.001)
        return real_write(fd, data)

    os.write = slow_write  # this child process only
    for number in range(RECORDS_PER_WRITER):
        spool_one(f"{index}-{number}")


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
        seen.extend(forward_once(str(spool_home)))
        rounds += 1
    for process in writers:
        process.join()
        assert process.exitcode == 0
    seen.extend(forward_once(str(spool_home)))  # what came after the last round during the race
    expected = [f"{index}-{number}" for index in range(WRITERS) for number in range(RECORDS_PER_WRITER)]
    assert sorted(seen) == sorted(expected)  # every record, once
    assert rounds > 1
    # the spool's own failures (a background thread left by an earlier test may count its sinks meanwhile)
    assert {key: n for key, n in metrics.EMIT_FAILURES.counts.items() if key[0] == "spool"} == {}
    assert outbox.records_waiting(str(spool_home)) == []


def _hold_lock(directory: str, ready, release) -> None:
    fd = os.open(os.path.join(directory, outbox.JOURNAL_LOCK), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    ready.set()
    release.wait(30)
    os.close(fd)


def test_a_journal_whose_lock_is_held_waits_for_the_next_round(spool_home):
    """A writer that holds the lock (stopped mid-write) delays the sealing by at most its wait, and the
    journal's records leave with the next round."""
    spool_one("waiting")
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
    assert forward_once(str(spool_home)) == ["waiting"]
    assert not (spool_home / outbox.JOURNAL).exists()


def test_files_claimed_by_a_forwarder_killed_with_sigkill_are_taken_over_at_once(spool_home):
    """A forwarder killed (SIGKILL) between claiming its files and forwarding them leaves them in its
    ``.forwarding-<pid>`` directory: the next forwarder takes them over in its first round, not after
    ``STALE_CLAIM_SECONDS`` (the claim is seconds old). A live forwarder's fresh claim is left alone."""
    spool_one("left-behind")
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
        assert forward_once(str(spool_home)) == []  # its forwarder still runs: nothing taken over yet
    finally:
        victim.kill()
        victim.wait()
    assert forward_once(str(spool_home)) == ["left-behind"]
    assert (live_claim / "other.jsonl").exists()
