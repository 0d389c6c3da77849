"""The Evidence API (barecount_provider/api) through FastAPI's TestClient, with Airflow's own authentication.

What is real: the app, Airflow's ``get_user`` dependency, JWTs signed and validated by Airflow's signer and
validator, SimpleAuthManager's role and team checks (``filter_authorized_dag_ids`` → ``is_authorized_dag``)
and a local evidence store (files + SQLite index) filled with records built like the assembler builds them.
What is replaced: the two lookups of Airflow's metadata database the auth path makes, i.e. the DAG → team
mapping ``get_authorized_dag_ids`` reads from the DAG bundles (given here as ``DAG_TEAMS``) and the revoked
token table. tests/system/test_api_real_run.py runs the same API on a real Airflow with both.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from barecount_provider.evidence import record as rec
from barecount_provider.evidence import store as store_module
from barecount_provider.evidence.facts import TryFacts
from barecount_provider.evidence.store import EvidenceStore, LocalBodies

T0 = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)

# dag_id -> the team of its DAG bundle (None: a bundle of no team)
DAG_TEAMS: dict[str, str | None] = {
    "a_orders": "team_a",
    "a_billing": "team_a",
    "b_orders": "team_b",
    "b_audit": "team_b",
    "shared_report": None,
}

# (dag_id, tenant, pipeline, runner_class, size, cost per run, runs); run n ends at T0 + 12 h * n
PLAN: list[tuple[str, str, str, str, str, float, int]] = [
    ("a_orders", "team_a", "orders", "serverless", "s", 0.10, 6),
    ("a_billing", "team_a", "billing", "container", "m", 0.50, 3),
    ("b_orders", "team_b", "orders", "dedicated", "l", 2.00, 4),
    ("shared_report", "mixed", "report", "local", "xs", 0.0, 1),
    ("b_audit", "mixed", "audit", "managed_etl", "m", 1.00, 1),
]
FAILED = {("a_orders", 3), ("b_orders", 2)}  # these runs failed


def build_run(dag_id: str, n: int, tenant: str, pipeline: str, runner_class: str, size: str, cost: float) -> dict[str, Any]:
    """The record of run ``n`` of ``dag_id`` (one task try), built as the assembler builds it."""
    run_id = f"manual__{n}"
    ended = T0 + timedelta(hours=12 * n)
    state = "failed" if (dag_id, n) in FAILED else "success"
    context = {
        "tenant": tenant,
        "pipeline": pipeline,
        "runner_class": runner_class,
        "size": size,
        "network_profile": "public",
        "image_or_driver_digest": None,
        "dag_id": dag_id,
        "run_id": run_id,
        "task_id": "work",
        "try_number": 1,
        "map_index": -1,
        "correlation_id": "c" * 32,
        "run_token": f"tok-{dag_id}-{n}",
    }
    entry = rec.build_entry(
        TryFacts(**context, state=state, started_at=ended - timedelta(minutes=30), ended_at=ended),
        cost={
            "runtime_hours": 0.5,
            "compute_usd": cost,
            "storage_usd": 0.0,
            "transfer_usd": 0.0,
            "total_usd": cost,
            "currency": "USD",
            "basis": "list-price estimate",
            "price_table": {"name": "aws-us-east-1-list", "version": "2026-11"},
        },
    )
    return rec.build_record(
        dag_id=dag_id,
        run_id=run_id,
        tenant=tenant,
        pipeline=pipeline,
        state=state,
        started_at=ended - timedelta(minutes=30),
        ended_at=ended,
        correlation_id="c" * 32,
        entries=[entry],
    )


def fill_store(store: EvidenceStore) -> dict[str, list[dict[str, Any]]]:
    """Append every run of PLAN; returns the stored records by DAG id."""
    stored: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for dag_id, tenant, pipeline, runner_class, size, cost, runs in PLAN:
        for n in range(1, runs + 1):
            stored[dag_id].append(store.append(build_run(dag_id, n, tenant, pipeline, runner_class, size, cost)))
    return dict(stored)


def expected(dags: set[str]) -> int:
    return sum(runs for dag_id, *_rest, runs in PLAN if dag_id in dags)


# -------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EvidenceStore]:
    store_module.clear_caches()
    root = tmp_path / "evidence"
    yield EvidenceStore(LocalBodies(str(root)), f"sqlite:///{root / 'index.db'}", "local")
    store_module.clear_caches()


@pytest.fixture
def filled(store: EvidenceStore) -> dict[str, list[dict[str, Any]]]:
    return fill_store(store)


@pytest.fixture
def auth(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A SimpleAuthManager as Airflow's API server holds it, its DAG → team mapping from DAG_TEAMS."""
    from airflow.api_fastapi import app as airflow_app
    from airflow.api_fastapi.auth.managers.base_auth_manager import BaseAuthManager
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
    from airflow.models.revoked_token import RevokedToken

    class BundleTeamsFromTest(SimpleAuthManager):
        def get_authorized_dag_ids(self, *, user: Any, method: Any = "GET", session: Any = None) -> set[str]:
            # Airflow's own implementation, with the DAG → team rows given instead of queried
            by_team: dict[str | None, set[str]] = defaultdict(set)
            for dag_id, team in DAG_TEAMS.items():
                by_team[team].add(dag_id)
            readable: set[str] = set()
            for team, dag_ids in by_team.items():
                readable |= self.filter_authorized_dag_ids(dag_ids=dag_ids, user=user, method=method, team_name=team)
            return readable

    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "unit-test-jwt-secret-" + "0123456789abcdef" * 4)
    BaseAuthManager._get_token_signer.cache_clear()
    BaseAuthManager._get_token_validator.cache_clear()
    monkeypatch.setattr(RevokedToken, "is_revoked", classmethod(lambda cls, jti, session=None: False))
    previous = airflow_app._AuthManagerState.instance
    manager = BundleTeamsFromTest()
    airflow_app._AuthManagerState.instance = manager
    yield manager
    airflow_app._AuthManagerState.instance = previous
    BaseAuthManager._get_token_signer.cache_clear()
    BaseAuthManager._get_token_validator.cache_clear()


def _token(manager: Any, username: str, role: str | None, teams: list[str] | None = None) -> dict[str, str]:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    user = SimpleAuthManagerUser(username=username, role=role, teams=teams)
    return {"Authorization": f"Bearer {manager.generate_jwt(user)}"}


@pytest.fixture
def client(store: EvidenceStore, auth: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from barecount_provider.api.app import create_app

    with TestClient(create_app(lambda: store, all_dag_ids=lambda: frozenset(DAG_TEAMS))) as test_client:
        yield test_client


@pytest.fixture
def users(auth: Any) -> dict[str, dict[str, str]]:
    return {
        "admin": _token(auth, "admin", "ADMIN"),
        "alice": _token(auth, "alice", "VIEWER", ["team_a"]),
        "bob": _token(auth, "bob", "VIEWER", ["team_b"]),
        "nobody": _token(auth, "nobody", None),
    }


def _get(client: Any, path: str, headers: Mapping[str, str], **params: Any) -> Any:
    return client.get(path, headers=headers, params=params)


# ------------------------------------------------------------------------------------------- auth


ENDPOINTS = ["/evidence", "/evidence/verify", "/evidence/0123456789abcdef0123456789abcdef", "/cost", "/health"]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_every_endpoint_needs_a_token(client: Any, filled: Any, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_token_signed_with_another_secret_is_refused(client: Any, filled: Any, auth: Any, path: str) -> None:
    import jwt

    forged = jwt.encode(
        {"sub": "admin", "role": "ADMIN", "aud": "apache-airflow", "exp": datetime.now(UTC) + timedelta(hours=1)},
        "not-the-secret-" + "x" * 64,
        algorithm="HS512",
    )
    response = client.get(path, headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 403
    assert response.json() == {"detail": "Invalid JWT token"}


def test_the_openapi_document_lists_every_path(client: Any) -> None:
    document = client.get("/openapi.json").json()
    assert set(document["paths"]) == {
        "/evidence", "/evidence/verify", "/evidence/{record_id}", "/cost", "/agents/{name}/heartbeat", "/health"
    }  # fmt: skip
    assert document["info"]["title"] == "BareCount Evidence API"
    for path in document["paths"].values():
        for operation in path.values():
            assert operation["security"], "every endpoint declares Airflow's bearer authentication"


# ------------------------------------------------------------------------------------ DAG permissions


def test_admin_sees_every_record_and_a_team_only_its_own_and_teamless_dags(client: Any, filled: Any, users: Any) -> None:
    everything = _get(client, "/evidence", users["admin"], limit=1000).json()
    assert everything["total_entries"] == expected(set(DAG_TEAMS)) == 15
    alice = _get(client, "/evidence", users["alice"], limit=1000).json()
    assert {row["dag_id"] for row in alice["records"]} == {"a_orders", "a_billing", "shared_report"}
    assert alice["total_entries"] == len(alice["records"]) == expected({"a_orders", "a_billing", "shared_report"})
    bob = _get(client, "/evidence", users["bob"], limit=1000).json()
    assert {row["dag_id"] for row in bob["records"]} == {"b_orders", "b_audit", "shared_report"}
    assert bob["total_entries"] == expected({"b_orders", "b_audit", "shared_report"})


def test_filtering_on_another_teams_dag_or_tenant_gives_nothing(client: Any, filled: Any, users: Any) -> None:
    assert _get(client, "/evidence", users["alice"], dag_id="b_orders").json() == {"records": [], "total_entries": 0}
    assert _get(client, "/evidence", users["alice"], tenant="team_b").json() == {"records": [], "total_entries": 0}
    assert _get(client, "/evidence", users["admin"], tenant="team_b").json()["total_entries"] == 4


def test_a_user_without_a_role_sees_nothing(client: Any, filled: Any, users: Any) -> None:
    assert _get(client, "/evidence", users["nobody"]).json() == {"records": [], "total_entries": 0}
    record_id = filled["shared_report"][0]["record_id"]
    assert _get(client, f"/evidence/{record_id}", users["nobody"]).status_code == 404
    assert _get(client, "/cost", users["nobody"]).json()["rows"] == []
    assert _get(client, "/evidence/verify", users["nobody"]).json() == {
        "intact": True,
        "chains": [],
        "total_entries": 0,
        "skipped": 3,
    }


def test_a_record_of_a_dag_one_may_not_read_is_not_found_like_one_that_does_not_exist(
    client: Any, filled: Any, users: Any
) -> None:
    theirs = filled["b_orders"][0]
    mine = _get(client, f"/evidence/{theirs['record_id']}", users["bob"])
    assert mine.status_code == 200 and {k: v for k, v in mine.json().items() if k != "integrity"} == theirs
    hidden = _get(client, f"/evidence/{theirs['record_id']}", users["alice"])
    missing = _get(client, "/evidence/ffffffffffffffffffffffffffffffff", users["alice"])
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == {"detail": f"The evidence record with record_id: `{theirs['record_id']}` was not found"}
    assert missing.json()["detail"].replace("f" * 32, theirs["record_id"]) == hidden.json()["detail"]


def test_the_full_record_is_returned_as_stored(client: Any, filled: Any, users: Any) -> None:
    schema = json.loads((Path(__file__).resolve().parents[2] / "docs" / "evidence.schema.json").read_text())
    import jsonschema

    stored = filled["a_billing"][2]
    response = _get(client, f"/evidence/{stored['record_id']}", users["alice"])
    body = response.json()
    integrity = body.pop("integrity")  # served with the record, never stored or hashed
    assert body == stored
    assert integrity["status"] == "ok" and integrity["hash_matches"] and integrity["index_matches"]
    assert response.headers["X-BareCount-Integrity"] == "ok"
    jsonschema.Draft202012Validator(schema).validate(body)


# ------------------------------------------------------------------------------- filters and pages


def test_filters_by_tenant_pipeline_dag_state_and_time(client: Any, filled: Any, users: Any) -> None:
    admin = users["admin"]

    def ids(**params: Any) -> list[tuple[str, str]]:
        rows = _get(client, "/evidence", admin, limit=1000, **params).json()["records"]
        return [(row["dag_id"], row["run_id"]) for row in rows]

    assert len(ids(tenant="team_a")) == 9
    assert {dag for dag, _run in ids(pipeline="orders")} == {"a_orders", "b_orders"}
    assert ids(state="failed") == [("a_orders", "manual__3"), ("b_orders", "manual__2")]
    # run n ends at T0 + 12 h * n: since is inclusive, until exclusive
    since, until = (T0 + timedelta(hours=24)).isoformat(), (T0 + timedelta(hours=48)).isoformat()
    window = ids(dag_id="a_orders", since=since, until=until)
    assert sorted(window) == [("a_orders", "manual__2"), ("a_orders", "manual__3")]
    # a naive time is UTC
    naive = (T0 + timedelta(hours=24)).replace(tzinfo=None).isoformat()
    assert ids(dag_id="a_orders", since=naive, until=until) == window
    assert ids(tenant="team_a", pipeline="billing", state="success", since=since) == [
        ("a_billing", "manual__3"),
        ("a_billing", "manual__2"),
    ]


def test_pages_are_newest_first_and_cover_every_record_once(client: Any, filled: Any, users: Any) -> None:
    seen: list[str] = []
    offset = 0
    while True:
        page = _get(client, "/evidence", users["alice"], limit=4, offset=offset).json()
        assert page["total_entries"] == 10
        if not page["records"]:
            break
        assert len(page["records"]) <= 4
        seen.extend(row["record_id"] for row in page["records"])
        offset += 4
    assert len(seen) == len(set(seen)) == 10
    rows = _get(client, "/evidence", users["alice"], limit=10).json()["records"]
    ends = [row["ended_at"] for row in rows]
    assert ends == sorted(ends, reverse=True)
    assert set(rows[0]) == {
        "record_id", "tenant", "sequence", "hash", "pipeline", "dag_id", "run_id", "state", "complete",
        "started_at", "ended_at", "total_cost_usd", "cost_complete",
    }  # fmt: skip


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 1001}, {"offset": -1}, {"since": "yesterday"}])
def test_bad_parameters_are_422_in_airflows_style(client: Any, users: Any, params: dict[str, Any]) -> None:
    response = _get(client, "/evidence", users["admin"], **params)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)


# (parameter, value, what the message says): each once a 500 (an overflow) or a silent 200 (a number read as a
# Unix time, an offset past 64 bits) before the parameters were bounded
OUT_OF_RANGE = [
    ("offset", str(2**64), "less than or equal to 9223372036854775807"),
    ("offset", str(2**63), "less than or equal to 9223372036854775807"),
    ("since", "0001-01-01T00:00:00+01:00", "outside the supported range of times (days 0001-01-02 to 9999-12-30"),
    ("until", "9999-12-31T23:59:59-01:00", "outside the supported range of times (days 0001-01-02 to 9999-12-30"),
    ("until", "0.5", "is not an ISO 8601 time"),
    ("since", "1700000000", "is not an ISO 8601 time"),
    ("since", "2026-13-01T00:00:00Z", "is not an ISO 8601 time"),
]


@pytest.mark.parametrize("path", ["/evidence", "/cost"])
@pytest.mark.parametrize(("name", "value", "message"), OUT_OF_RANGE)
def test_out_of_range_offsets_and_times_are_422_naming_the_parameter(
    client: Any, filled: Any, users: Any, path: str, name: str, value: str, message: str
) -> None:
    response = _get(client, path, users["admin"], **{name: value})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", name]
    assert message in error["msg"]


def test_the_ends_of_the_range_are_accepted(client: Any, filled: Any, users: Any) -> None:
    admin = users["admin"]
    last_page = _get(client, "/evidence", admin, offset=2**63 - 1).json()
    assert last_page == {"records": [], "total_entries": 15}
    assert _get(client, "/cost", admin, offset=2**63 - 1).json()["rows"] == []
    # the first and last supported days, with the largest offsets a zone can have
    since, until = "0001-01-02T00:00:00+23:59", "9999-12-30T23:59:59-23:59"
    everything = _get(client, "/evidence", admin, since=since, until=until, limit=1000)
    assert everything.json()["total_entries"] == 15
    assert _get(client, "/cost", admin, since=since, until=until).json()["totals"]["total_usd"] == pytest.approx(11.1)


def test_a_single_valued_parameter_given_twice_is_422_and_by_may_repeat(client: Any, filled: Any, users: Any) -> None:
    # FastAPI kept the last value silently (tenant=team_a&tenant=team_b answered team_b's records)
    response = client.get("/evidence?tenant=team_a&tenant=team_b&limit=5&limit=6", headers=users["admin"])
    assert response.status_code == 422
    assert [(error["loc"], error["msg"]) for error in response.json()["detail"]] == [
        (["query", "tenant"], "given 2 times; expected one value"),
        (["query", "limit"], "given 2 times; expected one value"),
    ]
    assert client.get("/evidence?tenant=a&tenant=b").status_code == 401  # no token: still 401 first
    assert client.get("/cost?by=tenant&by=size", headers=users["admin"]).json()["by"] == ["tenant", "size"]


@pytest.mark.parametrize(
    ("path", "params", "loc"),
    [
        ("/evidence", {"tenant": "team\x00a"}, ["query", "tenant"]),
        ("/cost", {"tenant": "\x00"}, ["query", "tenant"]),
        ("/evidence/verify", {"tenant": "a\x00"}, ["query", "tenant"]),
        ("/evidence/0123456789abcdef0123456789abcde%00", {}, ["path", "record_id"]),
    ],
)
def test_a_nul_character_is_422_not_a_database_error(client: Any, filled: Any, users: Any, path: str, params: Any, loc: Any) -> None:
    # SQLite answered 200; PostgreSQL's driver refuses the string (ValueError: a 500)
    response = _get(client, path, users["admin"], **params)
    assert response.status_code == 422, response.text
    assert [(error["loc"], error["msg"]) for error in response.json()["detail"]] == [(loc, "contains a NUL character")]


def test_the_openapi_document_states_the_bounds(client: Any) -> None:
    from barecount_provider.api.queries import INSTANT_PATTERN, MAX_OFFSET

    parameters = {p["name"]: p["schema"] for p in client.get("/openapi.json").json()["paths"]["/evidence"]["get"]["parameters"]}
    assert parameters["offset"]["minimum"] == 0 and parameters["offset"]["maximum"] == MAX_OFFSET
    for name in ("since", "until"):
        assert {key: parameters[name].get(key) for key in ("type", "format", "pattern")} == {
            "type": "string", "format": "date-time", "pattern": INSTANT_PATTERN
        }  # fmt: skip


def test_the_default_page_is_50_and_the_largest_1000(client: Any, store: EvidenceStore, users: Any) -> None:
    for n in range(1, 56):
        store.append(build_run("a_orders", n, "team_a", "orders", "serverless", "s", 0.1))
    assert len(_get(client, "/evidence", users["alice"]).json()["records"]) == 50
    assert len(_get(client, "/evidence", users["alice"], limit=1000).json()["records"]) == 55


# ---------------------------------------------------------------------------------------------- verify


def test_verify_checks_only_chains_whose_every_dag_one_may_read(client: Any, filled: Any, users: Any) -> None:
    admin = _get(client, "/evidence/verify", users["admin"]).json()
    assert admin["intact"] is True and admin["skipped"] == 0
    assert [(chain["tenant"], chain["records"]) for chain in admin["chains"]] == [("mixed", 2), ("team_a", 9), ("team_b", 4)]
    alice = _get(client, "/evidence/verify", users["alice"]).json()
    assert [chain["tenant"] for chain in alice["chains"]] == ["team_a"] and alice["skipped"] == 2
    # a chain with records of a DAG alice may not read: 403; one with none she may read: 404, as a missing one
    mixed = _get(client, "/evidence/verify", users["alice"], tenant="mixed")
    assert mixed.status_code == 403 and "every DAG" in mixed.json()["detail"]
    assert _get(client, "/evidence/verify", users["alice"], tenant="team_b").status_code == 404
    assert _get(client, "/evidence/verify", users["alice"], tenant="nope").json() == {
        "detail": "No evidence of tenant `nope` was found"
    }
    bob = _get(client, "/evidence/verify", users["bob"], tenant="mixed").json()
    assert bob["intact"] is True and bob["chains"][0]["records"] == 2


def test_verify_names_an_altered_record(client: Any, store: EvidenceStore, filled: Any, users: Any) -> None:
    victim = filled["a_billing"][1]
    path = store.body_path(victim["record_id"])
    assert path is not None
    with open(path, encoding="utf-8") as file:
        body = json.load(file)
    body["cost"]["total_usd"] = 0.0
    with open(path, "w", encoding="utf-8") as file:
        json.dump(body, file)
    result = _get(client, "/evidence/verify", users["alice"], tenant="team_a").json()
    assert result["intact"] is False
    (chain,) = result["chains"]
    assert chain["intact"] is False
    assert [(p["record_id"], p["kind"]) for p in chain["problems"]] == [(victim["record_id"], "altered")]
    assert victim["record_id"] in chain["problems"][0]["message"]


def test_verify_shows_no_server_path(client: Any, store: EvidenceStore, filled: Any, users: Any, tmp_path: Path) -> None:
    """Before: a gone body was named by its absolute path on the server."""
    victim = filled["a_orders"][2]
    path = store.body_path(victim["record_id"])
    assert path is not None
    os.unlink(path)
    response = _get(client, "/evidence/verify", users["alice"], tenant="team_a")
    assert str(tmp_path) not in response.text and os.path.dirname(path) not in response.text
    (chain,) = response.json()["chains"]
    (problem,) = chain["problems"]
    assert (problem["kind"], problem["record_id"]) == ("removed", victim["record_id"])
    assert problem["detail"].startswith("its body records/team_a/") and problem["detail"].endswith(" is gone")
    assert chain["checkpoints"] == "not configured" and chain["not_yet_checkpointed"] == []


def test_a_record_whose_hash_does_not_match_says_so(client: Any, store: EvidenceStore, filled: Any, users: Any) -> None:
    """Before: an altered record was served as if nothing were wrong."""
    victim, rehashed = filled["a_billing"][0], filled["a_billing"][1]
    for record, rehash in ((victim, False), (rehashed, True)):
        path = store.body_path(record["record_id"])
        assert path is not None
        with open(path, encoding="utf-8") as file:
            body = json.load(file)
        body["cost"]["total_usd"] = 0.0
        if rehash:  # content and hash agree again, the index does not
            body["chain"]["hash"] = rec.record_hash(body)
        with open(path, "w", encoding="utf-8") as file:
            json.dump(body, file)
    response = _get(client, f"/evidence/{victim['record_id']}", users["alice"])
    assert response.status_code == 200 and response.headers["X-BareCount-Integrity"] == "mismatch"
    integrity = response.json()["integrity"]
    assert (integrity["status"], integrity["hash_matches"], integrity["index_matches"]) == ("mismatch", False, True)
    assert integrity["computed_hash"] != victim["chain"]["hash"]
    response = _get(client, f"/evidence/{rehashed['record_id']}", users["alice"])
    assert response.headers["X-BareCount-Integrity"] == "mismatch"
    assert (response.json()["integrity"]["hash_matches"], response.json()["integrity"]["index_matches"]) == (True, False)
    intact = _get(client, f"/evidence/{filled['a_billing'][2]['record_id']}", users["alice"])
    assert intact.headers["X-BareCount-Integrity"] == "ok"


# ------------------------------------------------------------------------------------------------ cost


def test_cost_per_day_and_tenant_counts_only_readable_dags(client: Any, filled: Any, users: Any) -> None:
    report = _get(client, "/cost", users["alice"], by="tenant", limit=1000).json()
    assert report["by"] == ["tenant"] and report["per_day"] is True
    assert {row["tenant"] for row in report["rows"]} == {"team_a", "mixed"}
    assert set(report["rows"][0]) == {
        "day", "tenant", "runtime_hours", "compute_usd", "storage_usd", "transfer_usd", "total_usd", "runs",
        "unknown_tries", "unknown_reasons",
    }  # fmt: skip
    # a_orders 6 x 0.10 + a_billing 3 x 0.50 + shared_report 0
    assert report["totals"]["total_usd"] == pytest.approx(2.1)
    assert sum(row["runs"] for row in report["rows"]) == 10
    admin = _get(client, "/cost", users["admin"], by="tenant", per_day="false").json()
    assert {row["tenant"]: row["total_usd"] for row in admin["rows"]} == pytest.approx(
        {"mixed": 1.0, "team_a": 2.1, "team_b": 8.0}
    )
    assert "day" not in admin["rows"][0]


def test_cost_by_runner_class_and_size_within_a_time_range(client: Any, filled: Any, users: Any) -> None:
    # days of T0 + 12 h * n: n = 1 → 11-20 18:00, n = 2,3 → 11-21, n = 4,5 → 11-22, n = 6 → 11-23
    report = _get(
        client,
        "/cost",
        users["admin"],
        by=["runner_class", "size"],
        since="2026-11-21T00:00:00Z",
        until="2026-11-22T00:00:00Z",
        tenant="team_b",
    ).json()
    assert report["rows"] == [
        {
            "day": "2026-11-21",
            "runner_class": "dedicated",
            "size": "l",
            "runtime_hours": 1.0,
            "compute_usd": 4.0,
            "storage_usd": 0.0,
            "transfer_usd": 0.0,
            "total_usd": 4.0,
            "runs": 2,
            "unknown_tries": 0,
            "unknown_reasons": [],
        }
    ]


def test_cost_by_an_unknown_group_is_422(client: Any, users: Any) -> None:
    response = _get(client, "/cost", users["admin"], by="colour")
    assert response.status_code == 422


# ------------------------------------------------------------------------------------------------ plugin


def test_the_plugin_mounts_a_lazy_app_under_barecount_and_nothing_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from barecount_provider import config
    from barecount_provider.api import LazyApp
    from barecount_provider.plugins import barecount as plugin_module

    monkeypatch.setenv("AIRFLOW__BARECOUNT__ENABLED", "False")
    config.cache_clear()
    assert importlib.reload(plugin_module).BareCountPlugin.fastapi_apps == []
    monkeypatch.setenv("AIRFLOW__BARECOUNT__ENABLED", "True")
    config.cache_clear()
    (entry,) = importlib.reload(plugin_module).BareCountPlugin.fastapi_apps
    assert entry["url_prefix"] == "/barecount" and isinstance(entry["app"], LazyApp)
    assert entry["app"]._app is None  # nothing built (no FastAPI import) until the first request


def test_the_lazy_app_builds_once_and_serves(store: EvidenceStore, auth: Any, filled: Any) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from barecount_provider.api import LazyApp
    from barecount_provider.api.app import create_app

    built: list[int] = []

    def factory() -> Any:
        built.append(1)
        return create_app(lambda: store)

    lazy = LazyApp(factory)
    root = FastAPI()
    root.mount("/barecount", lazy)
    with TestClient(root) as test_client:
        headers = _token(auth, "alice", "VIEWER", ["team_a"])
        assert test_client.get("/barecount/evidence", headers=headers).json()["total_entries"] == 10
        assert test_client.get("/barecount/evidence").status_code == 401
        assert test_client.get("/barecount/openapi.json").json()["servers"] == [{"url": "/barecount"}]
    assert built == [1]


def test_a_schema_out_of_date_is_a_503_naming_the_command_never_a_500(auth: Any, users: Any) -> None:
    """After an upgrade whose `barecount db migrate` was not run, the store refuses to open the old schema:
    every endpoint answers 503 with what to run (the same one line the command prints), not a 500."""
    from fastapi.testclient import TestClient

    from barecount_provider.api.app import create_app
    from barecount_provider.db import SchemaOutOfDate

    def out_of_date() -> EvidenceStore:
        raise SchemaOutOfDate("sqlite:///index.db", None)

    with TestClient(create_app(out_of_date), raise_server_exceptions=False) as client:
        for path in ENDPOINTS:
            response = _get(client, path, users["admin"])
            assert response.status_code == 503, (path, response.text)
            assert "barecount db migrate" in response.json()["detail"]
