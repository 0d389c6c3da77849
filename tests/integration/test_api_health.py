"""``GET /barecount/health`` on Airflow's own metadata database (``airflow db migrate`` in the suite's
AIRFLOW_HOME): "every DAG Airflow knows" is read from the ``dag`` table, and the auth manager's
``get_authorized_dag_ids`` and revoked-token check run unreplaced. The rest of the rule, with the DAG → team
mapping given: tests/unit/test_api_health.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from barecount_provider.evidence.store import EvidenceStore, LocalBodies
from barecount_provider.health import records
from barecount_provider.health.result import Dependency, HealthResult

pytestmark = pytest.mark.integration

DAG_ID = "barecount_health_api_probe"


@pytest.fixture
def known_dag(airflow_db: None) -> Iterator[str]:
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.utils.session import create_session

    with create_session() as session:
        if session.get(DagBundleModel, "barecount-health-test") is None:
            session.add(DagBundleModel(name="barecount-health-test"))
            session.flush()
        if session.get(DagModel, DAG_ID) is None:
            session.add(DagModel(dag_id=DAG_ID, bundle_name="barecount-health-test", fileloc="/dev/null"))
    yield DAG_ID
    with create_session() as session:
        row = session.get(DagModel, DAG_ID)
        if row is not None:
            session.delete(row)


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    from airflow.api_fastapi import app as airflow_app
    from airflow.api_fastapi.auth.managers.base_auth_manager import BaseAuthManager
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
    from fastapi.testclient import TestClient

    from barecount_provider.api.app import create_app

    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "integration-jwt-secret-" + "0123456789abcdef" * 4)
    BaseAuthManager._get_token_signer.cache_clear()
    BaseAuthManager._get_token_validator.cache_clear()
    previous = airflow_app._AuthManagerState.instance
    manager = SimpleAuthManager()
    airflow_app._AuthManagerState.instance = manager
    records.clear_caches()
    root = tmp_path / "evidence"
    store = EvidenceStore(LocalBodies(str(root)), f"sqlite:///{root / 'index.db'}", "local")
    dependency = Dependency(kind="url", id="tcp://db:5432", tenant="acme", network_profile="on_prem")
    records.save_results([HealthResult(status="healthy", dependency=dependency, latency_ms=1.0, detail="ok")], url=store.index.url)
    try:
        with TestClient(create_app(lambda: store)) as test_client:
            yield test_client, manager
    finally:
        airflow_app._AuthManagerState.instance = previous
        BaseAuthManager._get_token_signer.cache_clear()
        BaseAuthManager._get_token_validator.cache_clear()
        records.clear_caches()


def _headers(manager: Any, username: str, role: str | None) -> dict[str, str]:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return {"Authorization": f"Bearer {manager.generate_jwt(SimpleAuthManagerUser(username=username, role=role))}"}


def test_every_dag_is_read_from_airflows_database(known_dag: str) -> None:
    from barecount_provider.api.app import _all_dag_ids

    assert known_dag in _all_dag_ids()


def test_a_user_who_may_read_every_dag_sees_every_tenant_and_one_without_a_role_nothing(known_dag: str, client: Any) -> None:
    test_client, manager = client
    admin = test_client.get("/health", headers=_headers(manager, "admin", "ADMIN"))
    assert admin.status_code == 200, admin.text
    assert admin.json()["tenants"] is None and [r["dependency"]["id"] for r in admin.json()["results"]] == ["tcp://db:5432"]
    nobody = test_client.get("/health", headers=_headers(manager, "nobody", None))
    assert nobody.status_code == 200 and nobody.json() == {"results": [], "agents": [], "tenants": [], "total_entries": 0}
