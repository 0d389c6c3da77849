"""The Evidence API on a real Airflow 3.3 API server: mounted by the plugin under /barecount, behind Airflow's
authentication and its DAG permissions, with ``[core] multi_team`` on.

This test runs its own stack: multi-team mode, three DAG bundles (``team_a_dags`` owned by team ``team_a``,
``team_b_dags`` by ``team_b``, ``shared_dags`` by no team; teams created with ``airflow teams sync`` right
after the migration, before any component starts) and SimpleAuthManager users ``admin`` (admin),
``alice`` (viewer, team_a), ``bob`` (viewer, team_b) and ``carol`` (viewer, no team). The evidence store
(``[barecount] evidence_dir`` of the stack) is filled by the test with the records of tests/unit/test_api.py
(PLAN): the records' tenants are the teams (tenant = team), plus a tenant ``mixed`` with records of a
teamless DAG and of a team_b DAG.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from barecount_provider.evidence import store as store_module
from barecount_provider.evidence.store import EvidenceStore, LocalBodies

from ..unit.test_api import DAG_TEAMS, expected, fill_store
from .stack import ADMIN_PASSWORD, ADMIN_USER, AirflowStack

pytestmark = pytest.mark.system

PASSWORDS = {ADMIN_USER: ADMIN_PASSWORD, "alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
USERS = f"{ADMIN_USER}:admin,alice:viewer:team_a,bob:viewer:team_b,carol:viewer"
BUNDLES = {"team_a_dags": "team_a", "team_b_dags": "team_b", "shared_dags": None}

DAG_SOURCE = '''
from datetime import datetime

from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG(dag_id="{dag_id}", start_date=datetime(2026, 1, 1), schedule=None, tags=["tenant:{tenant}"]):
    EmptyOperator(task_id="work")
'''


class MultiTeamStack(AirflowStack):
    """The system stack with its users' passwords known and the teams created before anything starts."""

    def _prepare_home(self) -> None:
        super()._prepare_home()
        self._passwords_file.write_text(json.dumps(PASSWORDS) + "\n")

    def cli(self, *args: str, timeout: float = 120.0, log_name: str | None = None) -> Any:
        result = super().cli(*args, timeout=timeout, log_name=log_name)
        if args[:2] == ("db", "migrate"):
            super().cli("teams", "sync", timeout=timeout, log_name="teams-sync")
        return result


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    home = tmp_path_factory.mktemp("api-airflow-home")
    folders = {name: tmp_path_factory.mktemp(name) for name in BUNDLES}
    bundle_of_team = {team: name for name, team in BUNDLES.items()}
    for dag_id, team in DAG_TEAMS.items():
        tenant = team or "mixed"
        source = textwrap.dedent(DAG_SOURCE).replace("{dag_id}", dag_id).replace("{tenant}", tenant)
        (folders[bundle_of_team[team]] / f"{dag_id}.py").write_text(source)
    bundles = [
        {
            "name": name,
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(folders[name]), "refresh_interval": 2},
            **({"team_name": team} if team else {}),
        }
        for name, team in BUNDLES.items()
    ]
    extra_env = {
        "AIRFLOW__CORE__MULTI_TEAM": "True",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": USERS,
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
        "AIRFLOW__BARECOUNT__EVIDENCE_DIR": str(home / "barecount" / "evidence"),
        "AIRFLOW__BARECOUNT__SECRET_KEY": "api-system-test-secret",
    }
    with MultiTeamStack(home=home, dags_folder=folders["shared_dags"], extra_env=extra_env) as running:
        for dag_id in DAG_TEAMS:
            running.wait_for_dag(dag_id)
        yield running


@pytest.fixture(scope="module")
def records(stack: AirflowStack) -> dict[str, list[dict[str, Any]]]:
    """The stack's evidence store, filled (the API server reads the same files and SQLite index)."""
    root = Path(stack.env["AIRFLOW__BARECOUNT__EVIDENCE_DIR"])
    store_module.clear_caches()
    store = EvidenceStore(LocalBodies(str(root)), f"sqlite:///{root / 'index.db'}", "local")
    try:
        return fill_store(store)
    finally:
        store.index.engine.dispose()
        store_module.clear_caches()


def _client(stack: AirflowStack, username: str | None) -> httpx.Client:
    headers = {}
    if username is not None:
        response = httpx.post(
            f"{stack.base_url}/auth/token", json={"username": username, "password": PASSWORDS[username]}, timeout=30
        )
        assert response.status_code in (200, 201), response.text
        headers["Authorization"] = f"Bearer {response.json()['access_token']}"
    return httpx.Client(base_url=f"{stack.base_url}/barecount", headers=headers, timeout=30)


@pytest.fixture(scope="module")
def clients(stack: AirflowStack, records: Any) -> Iterator[dict[str, httpx.Client]]:
    made = {name: _client(stack, None if name == "anonymous" else name) for name in ("anonymous", *PASSWORDS)}
    yield made
    for client in made.values():
        client.close()


def _all(client: httpx.Client, path: str = "/evidence", **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Every page of a listing, 4 at a time (pagination over HTTP)."""
    rows: list[dict[str, Any]] = []
    total = -1
    while True:
        response = client.get(path, params={**params, "limit": 4, "offset": len(rows)})
        assert response.status_code == 200, response.text
        page = response.json()
        assert total in (-1, page["total_entries"])
        total = page["total_entries"]
        if not page["records"]:
            return rows, total
        rows.extend(page["records"])


def test_every_endpoint_needs_airflows_token_and_the_openapi_is_published(stack: AirflowStack, clients: Any) -> None:
    anonymous = clients["anonymous"]
    for path in ("/evidence", "/evidence/verify", "/evidence/" + "0" * 32, "/cost", "/health"):
        response = anonymous.get(path)
        assert response.status_code == 401, path
        assert response.json() == {"detail": "Not authenticated"}
    heartbeat = anonymous.post("/agents/some-agent/heartbeat", json={"version": "1"})
    assert heartbeat.status_code == 401 and heartbeat.json() == {"detail": "Not authenticated"}
    forged = anonymous.get("/evidence", headers={"Authorization": "Bearer not-a-jwt"})
    assert forged.status_code == 403 and forged.json() == {"detail": "Invalid JWT token"}
    document = anonymous.get("/openapi.json").json()
    assert {
        "/evidence", "/evidence/verify", "/evidence/{record_id}", "/cost", "/health", "/agents/{name}/heartbeat"
    } == set(document["paths"])
    assert document["servers"] == [{"url": "/barecount"}]
    assert anonymous.get("/docs").status_code == 200  # Swagger UI ([api] enable_swagger_ui)
    # the plugin registers the app under /barecount, as Airflow's plugin listing shows
    plugins = stack.api("GET", "plugins").json()["plugins"]
    (barecount,) = [plugin for plugin in plugins if plugin["name"] == "barecount"]
    assert [(app["url_prefix"], app["name"]) for app in barecount["fastapi_apps"]] == [
        ("/barecount", "BareCount Evidence API")
    ]


def test_each_user_sees_only_the_evidence_of_the_dags_airflow_lets_them_read(clients: Any, records: Any) -> None:
    visible = {
        ADMIN_USER: set(DAG_TEAMS),
        "alice": {"a_orders", "a_billing", "shared_report"},
        "bob": {"b_orders", "b_audit", "shared_report"},
        "carol": {"shared_report"},  # no team: only the teamless bundle's DAG
    }
    for user, dags in visible.items():
        rows, total = _all(clients[user])
        assert {row["dag_id"] for row in rows} == dags, user
        assert total == len(rows) == len({row["record_id"] for row in rows}) == expected(dags), user
    # a filter on another team's DAG or tenant gives nothing, not an error
    assert clients["alice"].get("/evidence", params={"dag_id": "b_orders"}).json() == {"records": [], "total_entries": 0}
    assert clients["alice"].get("/evidence", params={"tenant": "team_b"}).json()["total_entries"] == 0


def test_a_record_of_another_teams_dag_is_not_found(clients: Any, records: Any) -> None:
    theirs = records["b_orders"][0]["record_id"]
    served = clients["bob"].get(f"/evidence/{theirs}")
    assert served.headers["X-BareCount-Integrity"] == "ok"
    assert {k: v for k, v in served.json().items() if k != "integrity"} == records["b_orders"][0]
    for user in ("alice", "carol"):
        response = clients[user].get(f"/evidence/{theirs}")
        assert response.status_code == 404
        assert response.json() == {"detail": f"The evidence record with record_id: `{theirs}` was not found"}
    assert clients[ADMIN_USER].get(f"/evidence/{theirs}").status_code == 200
    assert clients[ADMIN_USER].get("/evidence/" + "f" * 32).status_code == 404


def test_filters_and_pages_over_http(clients: Any, records: Any) -> None:
    alice = clients["alice"]
    rows, total = _all(alice, tenant="team_a", state="success", since="2026-11-21T00:00:00Z", until="2026-11-23")
    assert total == 5 and {row["dag_id"] for row in rows} == {"a_orders", "a_billing"}
    assert all("2026-11-21" <= row["ended_at"] < "2026-11-23" and row["state"] == "success" for row in rows)
    assert [row["ended_at"] for row in rows] == sorted((row["ended_at"] for row in rows), reverse=True)
    assert alice.get("/evidence", params={"pipeline": "billing"}).json()["total_entries"] == 3
    assert alice.get("/evidence", params={"limit": 1001}).status_code == 422


def test_verify_and_cost_respect_the_teams(clients: Any, records: Any) -> None:
    admin = clients[ADMIN_USER].get("/evidence/verify").json()
    assert admin["intact"] is True and [c["tenant"] for c in admin["chains"]] == ["mixed", "team_a", "team_b"]
    alice = clients["alice"].get("/evidence/verify").json()
    assert [c["tenant"] for c in alice["chains"]] == ["team_a"] and alice["skipped"] == 2
    assert clients["alice"].get("/evidence/verify", params={"tenant": "mixed"}).status_code == 403
    assert clients["alice"].get("/evidence/verify", params={"tenant": "team_b"}).status_code == 404
    assert clients["bob"].get("/evidence/verify", params={"tenant": "mixed"}).json()["intact"] is True
    cost = clients["bob"].get("/cost", params={"by": "tenant", "per_day": "false"}).json()
    assert {row["tenant"]: row["total_usd"] for row in cost["rows"]} == pytest.approx({"mixed": 1.0, "team_b": 8.0})
    by_runner = clients["alice"].get("/cost", params={"by": ["runner_class", "size"], "per_day": "false"}).json()
    assert {(r["runner_class"], r["size"]) for r in by_runner["rows"]} == {("serverless", "s"), ("container", "m"), ("local", "xs")}
