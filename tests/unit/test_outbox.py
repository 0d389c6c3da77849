"""The OTLP spool's journal (the outbox): every spooling process appends its record (one line) to one file
under a lock, and a forwarder seals the journal into a spool file of its own under the same lock. A torn tail
or a line that is not UTF-8 costs only itself, and a journal that cannot be used gives way to a file of the
record's own. With real processes (racing writers, a held lock, a forwarder killed with SIGKILL):
tests/integration/test_outbox.py."""

from __future__ import annotations

import json
import os

from barecount_provider import outbox
from barecount_provider.telemetry import metrics

from ..conftest import forward_once, spool_one


def test_a_torn_tail_costs_only_its_own_record_and_is_counted(spool_home):
    """A writer killed mid-write leaves a tail without its newline; the next record starts on a new line."""
    spool_one("before")
    with open(spool_home / outbox.JOURNAL, "ab") as journal:
        journal.write(b'\n{"points": [["barecount.test.point", "counter", 1.0, {"id": "to')  # killed here
    spool_one("after")
    assert forward_once(str(spool_home)) == ["before", "after"]
    assert metrics.EMIT_FAILURES.counts == {("spool", "read"): 1}


def test_a_journal_that_cannot_be_used_gives_way_to_a_file_of_the_record_s_own(spool_home):
    """A lock file that cannot be opened (here a directory in its place; in life, another user's): the
    record is written to a spool file of its own, and forwarded like the journal's."""
    os.makedirs(spool_home / outbox.JOURNAL_LOCK)
    spool_one("alone")
    names = [name for name in os.listdir(spool_home) if name.endswith(outbox.SUFFIX)]
    assert len(names) == 1 and not (spool_home / outbox.JOURNAL).exists()
    assert json.loads((spool_home / names[0]).read_text().strip())["points"][0][3] == {"id": "alone"}
    assert metrics.EMIT_FAILURES.counts == {}
    assert forward_once(str(spool_home)) == ["alone"]


def test_a_line_that_is_not_utf8_costs_only_itself_and_is_counted(spool_home):
    spool_one("before")
    with open(spool_home / outbox.JOURNAL, "ab") as journal:
        journal.write(b"\n\xff\xfe not a record\n")
    spool_one("after")
    assert forward_once(str(spool_home)) == ["before", "after"]
    assert metrics.EMIT_FAILURES.counts == {("spool", "read"): 1}
