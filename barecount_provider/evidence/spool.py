"""Nothing is lost: a task try's entry goes to the store, or to a local spool when the store cannot take it.

``write_entry`` (called by the task process at the end of each try) puts the entry in the store with a
bounded time: each store call is limited by ``[barecount] evidence_store_timeout_ms`` (S3: connect and read
timeouts, no retry). On any failure the entry is written to ``<evidence_dir>/spool/`` with an atomic write
(temporary file + rename: a process killed mid-write leaves no torn entry), counted in
``barecount.emit.failed`` (``evidence/store``) and never raised into the task.

The spool is delivered later, automatically by the next task that reaches the store (at most
``FLUSH_BATCH`` entries, within one more timeout) and on demand by ``barecount evidence flush``. Delivery is
exactly once in effect: an entry's key in the store is its id (the try's run token), so delivering it again
rewrites the same entry; a spooled file is deleted only after the store accepted it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from barecount_provider import config, selfmetrics
from barecount_provider.evidence.store import EvidenceStore, atomic_write_json, open_store

log = logging.getLogger(__name__)

FLUSH_BATCH = 20
STALE_TEMPORARY_SECONDS = 3600  # a .tmp- file older than this was left by a killed writer


def spool_dir() -> str:
    return os.path.join(config.evidence_dir(), "spool")


def spool_path(entry_id: str) -> str:
    return os.path.join(spool_dir(), urllib.parse.quote(entry_id, safe="") + ".json")


def spool(entry: Mapping[str, Any]) -> str:
    path = spool_path(str(entry["entry_id"]))
    atomic_write_json(path, entry)
    return path


def spooled() -> list[str]:
    """The spooled entries, oldest first (complete files only)."""
    try:
        entries = [item for item in os.scandir(spool_dir()) if item.name.endswith(".json") and not item.name.startswith(".tmp-")]
    except FileNotFoundError:
        return []
    return [item.path for item in sorted(entries, key=lambda item: (item.stat().st_mtime, item.name))]


@dataclass
class FlushResult:
    delivered: int = 0
    failed: int = 0
    remaining: int = 0
    error: str | None = None


def flush(store: EvidenceStore | None = None, *, limit: int | None = None, deadline: float | None = None) -> FlushResult:
    """Deliver spooled entries to the store, oldest first; stop at the first failure, ``limit`` entries or
    ``deadline`` (time.monotonic()). A delivered entry's spool file is deleted after the store took it."""
    result = FlushResult()
    paths = spooled()
    _sweep_temporaries()
    if not paths:
        return result
    try:
        store = store or open_store()
    except Exception as err:
        result.failed, result.remaining, result.error = 1, len(paths), f"{type(err).__name__}: {err}"
        return result
    for index, path in enumerate(paths):
        if (limit is not None and result.delivered >= limit) or (deadline is not None and time.monotonic() > deadline):
            result.remaining = len(paths) - index
            return result
        try:
            with open(path, encoding="utf-8") as file:
                entry = json.load(file)
        except FileNotFoundError:  # another flusher delivered it
            continue
        except ValueError as err:  # cannot happen with atomic writes; kept aside, never lost
            log.warning("BareCount: unreadable spooled evidence entry %s: %s", path, err)
            os.replace(path, path + ".unreadable")
            result.failed += 1
            continue
        try:
            store.put_entry(entry)
        except Exception as err:
            result.failed += 1
            result.remaining = len(paths) - index
            result.error = f"{type(err).__name__}: {err}"
            return result
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        result.delivered += 1
    return result


def _sweep_temporaries() -> None:
    now = time.time()
    try:
        for item in os.scandir(spool_dir()):
            if item.name.startswith(".tmp-") and now - item.stat().st_mtime > STALE_TEMPORARY_SECONDS:
                os.unlink(item.path)
    except OSError:
        pass


def write_entry(entry: Mapping[str, Any]) -> str:
    """Store ``entry`` (bounded), or spool it. Returns ``stored`` or ``spooled``; never raises."""
    timeout_ms = config.evidence_store_timeout_ms()
    try:
        store = _task_store(config.evidence_store(), timeout_ms)
        store.put_entry(entry)
    except Exception as err:
        log.warning("BareCount could not store the evidence entry (spooled for later delivery): %s", err)
        selfmetrics.failure("evidence", "store")
        try:
            spool(entry)
        except Exception:
            log.warning("BareCount could not spool the evidence entry either", exc_info=True)
            return "lost"
        return "spooled"
    if os.path.isdir(spool_dir()) and spooled():
        flush(store, limit=FLUSH_BATCH, deadline=time.monotonic() + timeout_ms / 1000.0)
    return "stored"


@functools.lru_cache(maxsize=2)
def _task_store(kind: str, timeout_ms: int) -> EvidenceStore:
    """This process's store for entries, built once (an S3 client costs ~100 ms to build)."""
    return open_store(kind=kind, timeout_ms=timeout_ms)


def clear_caches() -> None:
    _task_store.cache_clear()
