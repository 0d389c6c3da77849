"""Suite-wide set-up: a throw-away AIRFLOW_HOME before Airflow is imported, and clean config caches."""

from __future__ import annotations

import os
import tempfile

import pytest

_HOME = tempfile.mkdtemp(prefix="barecount-test-home-")
os.environ.setdefault("AIRFLOW_HOME", _HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", os.path.join(os.path.dirname(__file__), "..", "dags"))
os.environ.setdefault("AIRFLOW__BARECOUNT__SECRET_KEY", "test-secret-key-not-for-production")
os.environ.setdefault("AIRFLOW__BARECOUNT__TELEMETRY_DIR", os.path.join(_HOME, "barecount", "telemetry"))


def _clear_caches() -> None:
    from barecount_provider import config
    from barecount_provider.telemetry import metrics, tracing

    config.cache_clear()
    metrics.get_emitter.cache_clear()
    tracing.get_tracing.cache_clear()
    from barecount_provider import policy
    from barecount_provider.telemetry import redaction

    redaction.get_redactor.cache_clear()
    policy.get_policy.cache_clear()
    from barecount_provider.evidence import scheduler as evidence_scheduler
    from barecount_provider.evidence import spool as evidence_spool
    from barecount_provider.evidence import store as evidence_store

    evidence_store.clear_caches()
    evidence_spool.clear_caches()
    evidence_scheduler.clear_caches()
    from barecount_provider.recovery import budgets

    budgets.clear_caches()
    from barecount_provider.telemetry import spool

    spool._handoff = None  # decided once per process: again for each test
    for name in (spool.FORWARDER_PID_ENV, spool.FORWARDER_OWNER_ENV):
        os.environ.pop(name, None)
    spool._PENDING_LINES.clear()
    spool._PENDING_ENTRIES.clear()
    spool._PENDING_STATSD.clear()
    # Airflow's task runner sets the parsing context for its parse and never unsets it: a test that runs a task
    # in-process would otherwise tell the next test's cluster policies that they run in its task process.
    for name in ("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "_AIRFLOW_PARSING_CONTEXT_TASK_ID"):
        os.environ.pop(name, None)


@pytest.fixture(autouse=True)
def fresh_barecount_caches():
    _clear_caches()
    yield
    _clear_caches()
