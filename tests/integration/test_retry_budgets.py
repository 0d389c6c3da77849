"""Retry budgets on real databases: the ledger on SQLite and on a real PostgreSQL server (127.0.0.1), and a
retry storm of many failing tasks, decided in many processes at once, by BareCount's real retry policy.

The storm: 24 task tries of tenant ``storm`` and 6 of tenant ``calm`` fail with a transient error at the same
time, from 6 processes (as 6 workers would). ``storm``'s window budget is 10: exactly 10 of its tries are
retried, the rest fail fast with "retry budget exhausted"; every ``calm`` try is still retried.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from barecount_provider.policy import RetryBudget
from barecount_provider.recovery import budgets

pytestmark = pytest.mark.integration

POLICY = """
version: 1
defaults:
  retry_budget: {max_retries_per_task: 3, max_retries_per_run: 1000, max_retries_per_window: 100, window_seconds: 3600,
                 backoff_base_seconds: 1, backoff_max_seconds: 5, jitter: true}
tenants:
  storm:
    retry_budget: {max_retries_per_window: 10}
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    budgets.clear_caches()
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'index.db'}"
    else:
        yield request.getfixturevalue("postgres").create_database("retry")
    budgets.clear_caches()


def _budget(**overrides: Any) -> RetryBudget:
    values: dict[str, Any] = {
        "max_retries_per_task": 3,
        "max_retries_per_run": 1000,
        "max_retries_per_window": 100,
        "window_seconds": 3600,
        "backoff_base_seconds": 1.0,
        "backoff_max_seconds": 5.0,
        "jitter": False,
        "window_scope": "tenant",
    }
    values.update(overrides)
    return RetryBudget(**values)


def _request(tenant: str, run_id: str, task_id: str, try_number: int = 1) -> budgets.RetryRequest:
    return budgets.RetryRequest(tenant, "pipe", "local", "dag", run_id, task_id, -1, try_number, "transient")


# ------------------------------------------------------------------------------------------------ the ledger


def test_ledger_budgets(index_url: str) -> None:
    ledger = budgets.RetryLedger(index_url)
    per_task = _budget(max_retries_per_task=2)
    assert [ledger.spend(_request("a", "r1", "t", n), per_task).granted for n in (1, 2, 3)] == [True, True, False]
    per_run = _budget(max_retries_per_run=3)
    assert [ledger.spend(_request("a", "r2", f"t{i}"), per_run).granted for i in range(4)] == [True, True, True, False]
    window = _budget(max_retries_per_window=7, window_seconds=100)
    now = time.time() + 10_000
    # 5 granted above, long before `now`: outside the window
    assert [ledger.spend(_request("a", f"w{i}", "t"), window, now=now).granted for i in range(8)] == [True] * 7 + [False]
    assert ledger.spend(_request("a", "later", "t"), window, now=now + 101).granted
    replay = ledger.spend(_request("a", "r1", "t", 3), per_task)
    assert replay.replayed and not replay.granted and replay.budget == budgets.PER_TASK
    refused = ledger.rows(tenant="a", outcome="refused")
    assert {row["budget"] for row in refused} == {budgets.PER_TASK, budgets.PER_RUN, budgets.PER_WINDOW}


def _race(url: str, worker: int, out: Any) -> None:
    ledger = budgets.RetryLedger(url)
    limits = _budget(max_retries_per_window=25, max_retries_per_run=12)
    results = []
    for n in range(10):
        tenant = "shared"
        run_id = "one-run" if n % 2 == 0 else f"run-{worker}-{n}"
        results.append(ledger.spend(_request(tenant, run_id, f"w{worker}-t{n}"), limits).granted)
    out.put(results)


def test_ledger_is_atomic_across_processes(index_url: str) -> None:
    budgets.RetryLedger(index_url).engine.dispose()  # tables exist before the race
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    workers = [context.Process(target=_race, args=(index_url, w, out)) for w in range(6)]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=180) for _ in workers]
    for worker in workers:
        worker.join(60)
    ledger = budgets.RetryLedger(index_url)
    granted = ledger.rows(outcome="granted")
    assert sum(sum(r) for r in results) == len(granted) == 25  # the window: 60 asked, 25 granted
    assert sum(1 for row in granted if row["run_id"] == "one-run") <= 12  # the run's own budget held too


# ---------------------------------------------------------------------------------------------- the storm


def _storm_worker(url: str, policy_path: str, jobs: list[tuple[str, str]], out: Any) -> None:
    os.environ["AIRFLOW__BARECOUNT__EVIDENCE_INDEX_URL"] = url
    os.environ["AIRFLOW__BARECOUNT__POLICY_PATH"] = policy_path
    os.environ["AIRFLOW__BARECOUNT__STATSD_ON"] = "False"
    from barecount_provider.recovery.retry import BareCountRetryPolicy

    policy = BareCountRetryPolicy()
    answers = []
    for tenant, task_id in jobs:
        task = SimpleNamespace(
            task_id=task_id, dag=SimpleNamespace(dag_id=f"{tenant}_dag", tags=[f"tenant:{tenant}"], params={}, default_args={})
        )
        ti = SimpleNamespace(
            task=task,
            dag_id=task.dag.dag_id,
            run_id=f"{tenant}-run-{task_id}",
            task_id=task_id,
            map_index=-1,
            try_number=1,
            _ti_context_from_server=SimpleNamespace(should_retry=True, dag_run=SimpleNamespace(conf={})),
        )
        decision = policy.evaluate(ConnectionResetError("connection reset by peer"), 1, 4, {"ti": ti})  # type: ignore[arg-type]
        exceptions = getattr(task, "barecount_policy_exceptions", [])
        answers.append((tenant, decision.action.value, decision.reason or "", [e["rule"] for e in exceptions]))
    out.put(answers)


def test_retry_storm_stops_one_tenant_while_another_goes_on(index_url: str, tmp_path: Path) -> None:
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(POLICY)
    budgets.RetryLedger(index_url).engine.dispose()
    jobs = [("storm", f"s{i}") for i in range(24)] + [("calm", f"c{i}") for i in range(6)]
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    workers = [
        context.Process(target=_storm_worker, args=(index_url, str(policy_path), jobs[w::6], out)) for w in range(6)
    ]
    for worker in workers:
        worker.start()
    answers = [answer for _ in workers for answer in out.get(timeout=180)]
    for worker in workers:
        worker.join(60)

    storm = [a for a in answers if a[0] == "storm"]
    calm = [a for a in answers if a[0] == "calm"]
    assert sum(1 for a in storm if a[1] == "retry") == 10
    refused = [a for a in storm if a[1] == "fail"]
    assert len(refused) == 14
    for _, _, reason, rules in refused:
        assert reason == (
            "retry budget exhausted: max_retries_per_window = 10 retries of tenant 'storm' in the last 3600 s "
            "(rolling window) already spent"
        )
        assert rules == ["retry_budget"]
    assert [a[1] for a in calm] == ["retry"] * 6
    ledger = budgets.RetryLedger(index_url)
    assert len(ledger.rows(tenant="storm", outcome="granted")) == 10
    assert len(ledger.rows(tenant="storm", outcome="refused")) == 14
    assert len(ledger.rows(tenant="calm", outcome="granted")) == 6
