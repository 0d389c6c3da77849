"""Schemathesis over the Evidence API's own OpenAPI document, with every check (the CLI's ``--checks all``).

The app is mounted under ``/barecount`` as the plugin mounts it and read through the document it serves there
(``/barecount/openapi.json``). What is real: the app, Airflow's ``get_user`` dependency and JWTs signed by
Airflow's signer (an admin's token for every call: nothing of the authentication is overridden), a local
evidence store filled with records built like the assembler builds them. What is replaced: the same two
lookups of Airflow's metadata database as in test_api.py (the DAG → team mapping and the revoked token
table), through its fixtures.

Every operation gets the deterministic examples of Schemathesis's phases (``derandomize``: the same cases on
every run) with at most ``MAX_EXAMPLES`` generated ones, positive and negative: a 500, an answer that does
not match the document (status, content type, schema), a valid request refused or an invalid one accepted,
an endpoint answering without a token, each fails the test.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, load_all_checks

from barecount_provider.evidence.store import EvidenceStore
from barecount_provider.policy import parse_policy
from tests.unit.test_api import DAG_TEAMS, auth, fill_store, store, users  # noqa: F401  (fixtures shared with test_api.py)

# A policy that lists an agent (the heartbeat endpoint refuses the agents it does not list: 403).
POLICY = parse_policy(
    "version: 1\ntenants: {team_a: {network_profiles: {on_prem: {dependencies: {agents: [{name: a}]}}}}}", "policy.yaml"
)

MAX_EXAMPLES = 40


# The store the app reads: the one of the running test (set by the fixture below). The app and its document
# are built at collection time, as Schemathesis's pytest integration needs its schema then (its lazy
# ``from_fixture`` loader does not run on this pytest).
_CURRENT: list[EvidenceStore] = []


def _app() -> Any:
    """The Evidence API mounted under /barecount like the plugin's fastapi_apps entry."""
    from fastapi import FastAPI

    from barecount_provider.api import URL_PREFIX, LazyApp
    from barecount_provider.api.app import create_app

    root = FastAPI()
    root.mount(
        URL_PREFIX,
        LazyApp(lambda: create_app(lambda: _CURRENT[-1], policy_factory=lambda: POLICY, all_dag_ids=lambda: frozenset(DAG_TEAMS))),
    )
    return root


schema = schemathesis.openapi.from_asgi("/barecount/openapi.json", _app())


# Schemathesis builds some cases when it collects the test, before any fixture has run: its auth provider
# marks a case as authenticated with this stand-in, and the test puts the admin's real JWT in its place.
ADMIN = "admin-token-of-the-running-test"


@schema.auth()
class AdminToken:
    """Every case is an admin's (Schemathesis's ``ignored_auth`` check then also sends it without a token and
    with a wrong one, and expects a refusal)."""

    def get(self, case: Any, ctx: Any) -> str:
        return ADMIN

    def set(self, case: Any, data: str, ctx: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@pytest.fixture
def filled_store(store: EvidenceStore) -> Any:  # noqa: F811
    fill_store(store)
    _CURRENT.append(store)
    yield store
    _CURRENT.remove(store)


def test_every_check_is_run() -> None:
    load_all_checks()
    names = {check.__name__ for check in CHECKS.get_all()}
    assert {"not_a_server_error", "response_schema_conformance", "negative_data_rejection", "ignored_auth"} <= names


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_evidence_api_keeps_to_its_openapi_document(
    case: Any, filled_store: EvidenceStore, users: dict[str, dict[str, str]]  # noqa: F811
) -> None:
    if (case.headers or {}).get("Authorization") == f"Bearer {ADMIN}":
        case.headers["Authorization"] = users["admin"]["Authorization"]
    load_all_checks()
    case.call_and_validate(checks=CHECKS.get_all())
