"""The retry ledger on SQLite holds its window budget when processes (spawned) spend from it at once."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest

from barecount_provider.recovery import budgets

from ..unit.test_retry import budget, request

pytestmark = pytest.mark.integration


def _spend_in_process(url: str, tenant: str, worker: int, tries: int, out: Any) -> None:
    ledger = budgets.RetryLedger(url)
    limits = budget(max_retries_per_window=7, max_retries_per_run=1000)
    granted = 0
    for n in range(tries):
        granted += ledger.spend(request(f"w{worker}-{n}", tenant=tenant, run_id=f"run-{worker}"), limits).granted
    out.put((tenant, granted))


def test_ledger_holds_across_processes(index_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    budgets.get_ledger(index_url)  # tables exist before the race
    out = context.Queue()
    workers = [context.Process(target=_spend_in_process, args=(index_url, "acme", w, 5, out)) for w in range(4)]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(60)
    assert sum(granted for _, granted in results) == 7  # 20 asked, exactly the window's 7 granted
    assert len(budgets.get_ledger(index_url).rows(outcome="granted")) == 7
