"""Evidence with real processes: concurrent writers (spawned) on one index make one chain, and a writer killed
mid-write leaves no torn entry."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from barecount_provider.evidence import store as store_module
from barecount_provider.evidence.store import EvidenceStore, LocalBodies

from ..unit.test_evidence import _record

pytestmark = pytest.mark.integration


def _append_many(index_url: str, root: str, writer: int, count: int) -> None:
    store_module.clear_caches()
    store = EvidenceStore(LocalBodies(root), index_url, "local")
    for n in range(count):
        store.append(_record(run_id=f"w{writer}-{n}"))


def test_concurrent_writers_on_one_index_produce_one_chain(tmp_path: Path) -> None:
    """Four processes (think four machines sharing the index) append 15 records each to one tenant."""
    root = str(tmp_path / "evidence")
    url = f"sqlite:///{tmp_path / 'evidence' / 'index.db'}"
    store_module.clear_caches()
    assert EvidenceStore(LocalBodies(root), url, "local").index is not None  # create the tables once
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_append_many, args=(url, root, n, 15)) for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    store_module.clear_caches()
    store = EvidenceStore(LocalBodies(root), url, "local")
    rows = store.index.chain_rows("acme")
    assert [row["sequence"] for row in rows] == list(range(1, 61))
    assert store.verify("acme") == {"acme": []}
    # the losers of a race deleted their bodies: one body per record
    assert len(list((Path(root) / "records" / "acme").glob("*.json"))) == 60


WRITER = """
import sys, itertools
from barecount_provider.evidence.store import atomic_write_json
big = {"payload": "x" * 2_000_000}
for n in itertools.count():
    atomic_write_json(f"{sys.argv[1]}/entry-{n % 5}.json", {**big, "n": n})
"""


def test_a_process_killed_mid_write_leaves_no_torn_entry(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)])
    deadline = time.monotonic() + 60  # a loaded machine starts Python slowly: wait for the writing, not a fixed time
    while time.monotonic() < deadline and len(list(tmp_path.glob("entry-*.json"))) < 2:
        time.sleep(0.05)
    time.sleep(0.3)  # and kill it amid later writes
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = list(tmp_path.glob("entry-*.json"))
    assert written, "the writer wrote nothing before it was killed"
    for path in written:
        assert json.loads(path.read_text())["payload"] == "x" * 2_000_000  # complete, or not there at all
