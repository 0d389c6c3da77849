"""The agents' heartbeat and the health endpoints of BareCount's API (``POST /agents/{name}/heartbeat``,
``GET /health``) through FastAPI's TestClient, with Airflow's own authentication.

What is real: the app, Airflow's ``get_user`` dependency, JWTs signed and validated by Airflow's signer,
SimpleAuthManager's role and team checks, a policy parsed from YAML, the health records and the evidence
index in SQLite. What is replaced, as in test_api.py (whose fixtures these are): the DAG → team mapping and
the revoked token table, and here the list of every DAG id Airflow knows (``all_dag_ids``, the DAG ids of
test_api.DAG_TEAMS).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from barecount_provider import selfmetrics
from barecount_provider.db.schema import agent_heartbeats_table
from barecount_provider.evidence.store import EvidenceStore
from barecount_provider.health import records
from barecount_provider.health.result import Dependency, HealthResult
from barecount_provider.policy import PolicyError, parse_policy
from tests.unit.test_api import DAG_TEAMS, _token, auth, fill_store, store, users  # noqa: F401  (fixtures)

POLICY = """
version: 1
tenants:
  team_a:
    network_profiles:
      on_prem:
        dependencies:
          agents: [{name: dc1-agent, max_heartbeat_age_seconds: 60}]
  team_b:
    network_profiles:
      on_prem:
        dependencies:
          agents: [{name: dc1-agent, max_heartbeat_age_seconds: 300}, {name: dc2-agent}]
      vpn:
        dependencies:
          agents: [{name: dc2-agent, max_heartbeat_age_seconds: 90}]
  quiet:
    declared_by: {teams: [team_a]}
"""


@pytest.fixture
def policy() -> Any:
    return parse_policy(POLICY, "policy.yaml")


@pytest.fixture
def client(store: EvidenceStore, auth: Any, policy: Any) -> Iterator[Any]:  # noqa: F811
    from fastapi.testclient import TestClient

    from barecount_provider.api.app import create_app

    records.clear_caches()
    app = create_app(lambda: store, policy_factory=lambda: policy, all_dag_ids=lambda: frozenset(DAG_TEAMS))
    with TestClient(app) as test_client:
        yield test_client
    records.clear_caches()


@pytest.fixture
def permission(auth: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:  # noqa: F811
    """The auth manager grants the custom view only to the users ``admin`` and ``agent-svc`` (as FAB or Keycloak
    would grant one permission to one role); every question it is asked is recorded."""
    asked: list[tuple[str, str, str]] = []

    def is_authorized_custom_view(*, method: str, resource_name: str, user: Any) -> bool:
        asked.append((method, resource_name, user.get_name()))
        return user.get_name() in ("admin", "agent-svc")

    monkeypatch.setattr(auth, "is_authorized_custom_view", is_authorized_custom_view)
    return asked


def _rows(evidence: EvidenceStore) -> list[dict[str, Any]]:
    with evidence.index.engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(sa.select(agent_heartbeats_table))]


def _beat(client: Any, name: str, headers: dict[str, str] | None = None, **body: Any) -> Any:
    return client.post(f"/agents/{name}/heartbeat", json=body, headers=headers or {})


# ------------------------------------------------------------------------------------------ heartbeats


def test_a_heartbeat_without_a_token_is_401(client: Any, store: EvidenceStore) -> None:  # noqa: F811
    response = _beat(client, "dc1-agent", version="1.0")
    assert response.status_code == 401 and response.json() == {"detail": "Not authenticated"}
    assert _rows(store) == []


def test_a_user_without_the_permission_is_403_and_nothing_is_stored(
    client: Any, store: EvidenceStore, auth: Any, permission: list[tuple[str, str, str]]  # noqa: F811
) -> None:
    response = _beat(client, "dc1-agent", _token(auth, "alice", "VIEWER", ["team_a"]), version="1.0")
    assert response.status_code == 403
    assert response.json() == {"detail": "Sending agent heartbeats needs the permission POST on `BareCount Agents` (a custom view of the auth manager)"}
    assert permission == [("POST", "BareCount Agents", "alice")]
    assert _rows(store) == []


def test_a_user_without_a_role_is_refused_by_the_simple_auth_manager(client: Any, store: EvidenceStore, users: Any) -> None:  # noqa: F811
    assert _beat(client, "dc1-agent", users["nobody"]).status_code == 403
    assert _rows(store) == []


def test_an_agent_the_policy_does_not_list_is_403_logged_and_counted(
    client: Any, store: EvidenceStore, auth: Any, permission: Any, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    before = selfmetrics.EMIT_FAILURES.counts[("agent_heartbeat", "refused")]
    with caplog.at_level(logging.WARNING, logger="barecount_provider.api.app"):
        response = _beat(client, "rogue-agent", _token(auth, "agent-svc", "USER"), version="1.0")
    assert response.status_code == 403
    assert response.json() == {"detail": "Agent `rogue-agent` is not listed in the tenant policy (network_profiles.<profile>.dependencies.agents)"}
    assert "refused a heartbeat of agent 'rogue-agent' from user 'agent-svc'" in caplog.text
    assert selfmetrics.EMIT_FAILURES.counts[("agent_heartbeat", "refused")] == before + 1
    assert _rows(store) == []


def test_a_listed_agent_is_stored_with_the_policys_tenants(client: Any, store: EvidenceStore, auth: Any, permission: Any) -> None:  # noqa: F811
    start = datetime.now(UTC)
    response = _beat(client, "dc1-agent", _token(auth, "agent-svc", "USER"), version="1.4.2", capabilities=["jdbc", "sftp"])
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["name"] == "dc1-agent" and answer["tenants"] == ["team_a", "team_b"]
    assert answer["version"] == "1.4.2" and answer["capabilities"] == ["jdbc", "sftp"] and answer["beats"] == 1
    assert start - timedelta(seconds=1) <= datetime.fromisoformat(answer["seen_at"]) <= datetime.now(UTC) + timedelta(seconds=1)
    (row,) = _rows(store)
    assert row["name"] == "dc1-agent" and row["reported_by"] == "agent-svc" and row["tenants"] == '["team_a", "team_b"]'


def test_a_heartbeat_without_a_body_is_a_heartbeat(client: Any, store: EvidenceStore, auth: Any, permission: Any) -> None:  # noqa: F811
    response = client.post("/agents/dc2-agent/heartbeat", headers=_token(auth, "agent-svc", "USER"))
    assert response.status_code == 200, response.text
    assert response.json()["version"] is None and response.json()["capabilities"] == []
    assert len(_rows(store)) == 1


def test_the_agent_cannot_name_its_tenants(client: Any, store: EvidenceStore, auth: Any, permission: Any) -> None:  # noqa: F811
    response = _beat(client, "dc2-agent", _token(auth, "agent-svc", "USER"), tenants=["team_a"])
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "tenants"]
    assert _rows(store) == []


def test_a_flood_of_heartbeats_is_one_row(client: Any, store: EvidenceStore, auth: Any, permission: Any) -> None:  # noqa: F811
    headers = _token(auth, "agent-svc", "USER")
    for n in range(60):
        assert _beat(client, "dc2-agent", headers, version=f"v{n}").status_code == 200
    (row,) = _rows(store)
    assert row["beats"] == 60 and row["version"] == "v59" and row["tenants"] == '["team_b"]'


@pytest.mark.parametrize(
    ("name", "body", "where"),
    [
        ("DC1-Agent", {}, ["path", "name"]),
        ("x" * 64, {}, ["path", "name"]),
        ("dc1-agent", {"version": "v" * 65}, ["body", "version"]),
        ("dc1-agent", {"version": ""}, ["body", "version"]),
        ("dc1-agent", {"capabilities": [f"c{n}" for n in range(33)]}, ["body", "capabilities"]),
        ("dc1-agent", {"capabilities": ["c" * 65]}, ["body", "capabilities", 0]),
        ("dc1-agent", {"capabilities": "jdbc"}, ["body", "capabilities"]),
        ("dc1-agent", {"capabilities": ["nul\u0000"]}, ["body", "capabilities", 0]),
    ],
)
def test_bad_heartbeats_are_422_naming_the_field(
    client: Any, store: EvidenceStore, auth: Any, permission: Any, name: str, body: dict[str, Any], where: list[Any]  # noqa: F811
) -> None:
    response = _beat(client, name, _token(auth, "agent-svc", "USER"), **body)
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [where]
    assert _rows(store) == []


def test_a_body_that_is_not_json_is_422(client: Any, auth: Any, permission: Any) -> None:  # noqa: F811
    response = client.post("/agents/dc1-agent/heartbeat", content=b"not json", headers={**_token(auth, "agent-svc", "USER"), "Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "json_invalid"
    response = client.post("/agents/dc1-agent/heartbeat", content=b"\xff{", headers={**_token(auth, "agent-svc", "USER"), "Content-Type": "application/json"})
    assert response.status_code == 400 and response.json() == {"detail": "There was an error parsing the body"}


def test_a_body_too_large_is_413_before_it_is_read(client: Any, store: EvidenceStore, auth: Any, permission: Any) -> None:  # noqa: F811
    headers = _token(auth, "agent-svc", "USER")
    big = {"version": "1", "capabilities": ["x" * 60] * 300}
    response = client.post("/agents/dc1-agent/heartbeat", json=big, headers=headers)
    assert response.status_code == 413 and response.json() == {"detail": "The request body is larger than 16384 bytes"}

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"version": "1", "capabilities": ['
        for _ in range(400):
            yield b'"' + b"x" * 60 + b'",'
        yield b'"x"]}'

    response = client.post("/agents/dc1-agent/heartbeat", content=chunks(), headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == 413
    assert _rows(store) == []


def test_an_invalid_policy_is_a_503_naming_the_command(store: EvidenceStore, auth: Any, permission: Any) -> None:  # noqa: F811
    from fastapi.testclient import TestClient

    from barecount_provider.api.app import create_app

    def invalid() -> Any:
        return parse_policy("version: 1\ntenants: {acme: {max_size: xxl}}", "policy.yaml")

    with pytest.raises(PolicyError):
        invalid()
    with TestClient(create_app(lambda: store, policy_factory=invalid, all_dag_ids=frozenset)) as client:
        response = _beat(client, "dc1-agent", _token(auth, "agent-svc", "USER"))
    assert response.status_code == 503
    assert response.json() == {"detail": "BareCount's tenant policy is invalid: run `barecount policy validate` (see docs/policy.md)"}


# -------------------------------------------------------------------------------------------- GET /health


def _result(tenant: str | None, id: str, status: str = "healthy") -> HealthResult:
    dependency = Dependency(kind="url", id=id, tenant=tenant, network_profile="on_prem" if tenant else None)
    return HealthResult(
        status=status,  # type: ignore[arg-type]
        dependency=dependency,
        latency_ms=3.0,
        detail=status,
        error_code=None if status == "healthy" else "refused",
        checked_at=datetime(2026, 12, 1, tzinfo=UTC),
    )


@pytest.fixture
def reported(store: EvidenceStore) -> None:  # noqa: F811
    """Evidence (test_api.PLAN: team_a's DAGs, team_b's, and the tenant `mixed` of a teamless and a team_b DAG),
    a result of each tenant and of none, and a heartbeat of dc1-agent."""
    fill_store(store)
    url = store.index.url
    records.save_results(
        [_result("team_a", "tcp://a"), _result("team_b", "tcp://b", "unhealthy"), _result("mixed", "tcp://m"), _result("quiet", "tcp://q"), _result(None, "tcp://none")],
        url=url,
    )
    records.record_heartbeat("dc1-agent", tenants=["team_a", "team_b"], version="1.0", capabilities=["jdbc"], reported_by="svc", url=url)


def _health(client: Any, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = client.get("/health", headers=headers, params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_health_needs_a_token(client: Any) -> None:
    assert client.get("/health").status_code == 401


def test_a_user_who_may_read_every_dag_sees_every_tenant(client: Any, reported: Any, users: Any) -> None:  # noqa: F811
    report = _health(client, users["admin"])
    assert report["tenants"] is None and report["total_entries"] == 5
    assert [r["dependency"]["tenant"] for r in report["results"]] == [None, "mixed", "quiet", "team_a", "team_b"]
    assert report["results"][-1]["status"] == "unhealthy" and report["results"][-1]["error_code"] == "refused"
    agents = {agent["name"]: agent for agent in report["agents"]}
    assert set(agents) == {"dc1-agent", "dc2-agent"}
    dc1, dc2 = agents["dc1-agent"], agents["dc2-agent"]
    assert dc1["listed"] and dc1["tenants"] == ["team_a", "team_b"] and dc1["version"] == "1.0" and dc1["beats"] == 1
    assert dc1["max_age_seconds"] == 60 and dc1["stale"] is False and 0 <= dc1["age_seconds"] < 60
    assert dc2 == {
        "name": "dc2-agent", "listed": True, "tenants": ["team_b"], "version": None, "capabilities": [], "seen_at": None,
        "age_seconds": None, "beats": 0, "max_age_seconds": 90, "stale": True,
    }  # fmt: skip


def test_a_team_sees_the_tenants_of_its_dags_and_those_the_policy_binds_to_it(client: Any, reported: Any, users: Any) -> None:  # noqa: F811
    alice = _health(client, users["alice"])  # team_a: a_orders, a_billing (team_a), shared_report (mixed)
    assert alice["tenants"] == ["mixed", "quiet", "team_a"]
    assert [r["dependency"]["tenant"] for r in alice["results"]] == ["mixed", "quiet", "team_a"]
    assert [agent["name"] for agent in alice["agents"]] == ["dc1-agent"]
    bob = _health(client, users["bob"])  # team_b: b_orders (team_b), b_audit (mixed), shared_report (mixed)
    assert bob["tenants"] == ["mixed", "team_b"]
    assert [r["dependency"]["tenant"] for r in bob["results"]] == ["mixed", "team_b"]
    assert [agent["name"] for agent in bob["agents"]] == ["dc1-agent", "dc2-agent"]


def test_a_user_who_may_read_no_dag_sees_nothing(client: Any, reported: Any, users: Any) -> None:  # noqa: F811
    assert _health(client, users["nobody"]) == {"results": [], "agents": [], "tenants": [], "total_entries": 0}


def test_health_of_one_tenant_and_never_of_an_unreadable_one(client: Any, reported: Any, users: Any) -> None:  # noqa: F811
    assert [r["dependency"]["id"] for r in _health(client, users["bob"], tenant="team_b")["results"]] == ["tcp://b"]
    assert _health(client, users["alice"], tenant="team_b")["results"] == []
    assert [r["dependency"]["id"] for r in _health(client, users["admin"], tenant="quiet")["results"]] == ["tcp://q"]
