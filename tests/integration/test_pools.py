"""`barecount pools sync/check` against a real HTTP server on loopback that speaks the part of Airflow 3's
REST API they use.

The same commands run against a real Airflow 3.3 in tests/system/test_pools_real_run.py.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from barecount_provider import cli, pools

from ..conftest import PolicyFile
from ..unit.test_pools import POLICY

pytestmark = pytest.mark.integration


class FakeAirflowApi:
    """Pools, variables and /auth/token as Airflow 3.3's API server answers them (status codes, bodies)."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users
        self.tokens: dict[str, str] = {}  # token -> user
        self.forbidden_users: set[str] = set()
        self.pools: dict[str, dict[str, Any]] = {
            "default_pool": {"name": "default_pool", "slots": 128, "description": "Default pool", "include_deferred": False}
        }
        self.variables: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def writes(self) -> list[tuple[str, str]]:
        return [(method, path) for method, path in self.requests if method in ("POST", "PATCH", "DELETE")]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length)) if length else None

            def _user(self) -> str | None:
                header = self.headers.get("Authorization", "")
                return api.tokens.get(header.removeprefix("Bearer ")) if header.startswith("Bearer ") else None

            def _route(self, method: str) -> None:
                url = urllib.parse.urlsplit(self.path)
                path, query = url.path, urllib.parse.parse_qs(url.query)
                api.requests.append((method, path))
                body = self._body() if method in ("POST", "PATCH") else None
                if path == "/auth/token" and method == "POST":
                    if api.users.get(body.get("username")) == body.get("password"):
                        token = secrets.token_hex(16)
                        api.tokens[token] = body["username"]
                        return self._reply(201, {"access_token": token})
                    return self._reply(401, {"detail": "Invalid credentials"})
                if not path.startswith(("/api/v2/pools", "/api/v2/variables")):
                    return self._reply(404, {"detail": "Not Found"})
                user = self._user()
                if user is None:
                    return self._reply(401, {"detail": "Not authenticated"})
                if user in api.forbidden_users:
                    return self._reply(403, {"detail": "Forbidden"})
                resource = path[len("/api/v2/") :]
                if resource == "pools" and method == "GET":
                    limit, offset = int(query.get("limit", ["50"])[0]), int(query.get("offset", ["0"])[0])
                    items = list(api.pools.values())
                    page = [{**p, "occupied_slots": 0, "team_name": None} for p in items[offset : offset + limit]]
                    return self._reply(200, {"pools": page, "total_entries": len(items)})
                if resource == "pools" and method == "POST":
                    if body["name"] in api.pools:
                        return self._reply(409, {"detail": f"Pool {body['name']} already exists"})
                    api.pools[body["name"]] = {"include_deferred": False, "description": None, **body}
                    return self._reply(201, api.pools[body["name"]])
                if resource.startswith("pools/"):
                    name = urllib.parse.unquote(resource[len("pools/") :])
                    if name not in api.pools:
                        return self._reply(404, {"detail": f"The Pool with name: `{name}` was not found"})
                    if method == "PATCH":
                        for key in query.get("update_mask", list(body)):
                            api.pools[name][key] = body[key]
                        return self._reply(200, api.pools[name])
                    if method == "DELETE":
                        del api.pools[name]
                        return self._reply(204)
                if resource == "variables" and method == "POST":
                    api.variables[body["key"]] = body
                    return self._reply(201, body)
                if resource.startswith("variables/"):
                    key = urllib.parse.unquote(resource[len("variables/") :])
                    if key not in api.variables:
                        return self._reply(404, {"detail": f"The Variable with key: `{key}` was not found"})
                    if method == "PATCH":
                        api.variables[key] = body
                    return self._reply(200, api.variables[key])
                return self._reply(405, {"detail": "Method Not Allowed"})

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

            def do_PATCH(self) -> None:
                self._route("PATCH")

            def do_DELETE(self) -> None:
                self._route("DELETE")

        return Handler


PASSWORD = "s3cret-" + secrets.token_hex(4)


@pytest.fixture
def airflow_api() -> Iterator[FakeAirflowApi]:
    api = FakeAirflowApi({"admin": PASSWORD, "viewer": "viewer-pass"})
    yield api
    api.close()


@pytest.fixture
def pools_policy(policy_file: PolicyFile) -> Path:
    return policy_file(POLICY)


@pytest.fixture
def api_env(airflow_api: FakeAirflowApi, monkeypatch: pytest.MonkeyPatch) -> FakeAirflowApi:
    monkeypatch.setenv("BARECOUNT_API_URL", airflow_api.url)
    monkeypatch.setenv("BARECOUNT_API_USERNAME", "admin")
    monkeypatch.setenv("BARECOUNT_API_PASSWORD", PASSWORD)
    return airflow_api


def _registry(api: FakeAirflowApi) -> dict[str, Any]:
    return json.loads(api.variables[pools.REGISTRY_VARIABLE]["value"])


def test_sync_creates_the_pools_and_the_registry_then_has_nothing_to_do(api_env, pools_policy, capsys):
    api = api_env
    assert cli.main(["pools", "sync"]) == 0
    out = capsys.readouterr().out
    assert "+ create barecount_acme_container  slots 3  (tenant acme, container)" in out
    assert "Synced: 6 to create, 0 to update, 0 to delete." in out
    assert {name: p["slots"] for name, p in api.pools.items()} == {
        "default_pool": 128,
        "barecount_acme_container": 3,
        "barecount_acme_serverless": 3,
        "barecount_default_container": 4,
        "barecount_default_serverless": 4,
        "barecount_etl_team_dedicated": 4,
        "barecount_etl_team_managed_etl": 4,
    }
    assert all(p["description"].startswith(pools.MANAGED_MARKER) for n, p in api.pools.items() if n != "default_pool")
    registry = _registry(api)
    assert registry["version"] == 1 and registry["policy"] == str(pools_policy)
    assert sorted(registry["pools"]) == sorted(n for n in api.pools if n != "default_pool")
    assert PASSWORD not in out

    api.requests.clear()
    assert cli.main(["pools", "sync"]) == 0
    out = capsys.readouterr().out
    assert "Synced: 0 to create, 0 to update, 0 to delete." in out
    assert [w for w in api.writes() if w[1].startswith("/api/v2/pools")] == []  # only the registry is rewritten

    assert cli.main(["pools", "check"]) == 0
    assert "In sync." in capsys.readouterr().out


def test_sync_updates_slots_and_prunes_only_its_own_pools(api_env, pools_policy, capsys):
    api = api_env
    assert cli.main(["pools", "sync"]) == 0
    api.pools["barecount_acme_container"]["slots"] = 50  # changed by hand in the UI
    api.pools["barecount_old_serverless"] = {
        "name": "barecount_old_serverless",
        "slots": 1,
        "description": pools.pool_description("old", "serverless"),
        "include_deferred": True,
    }
    api.pools["barecount_manual_serverless"] = {
        "name": "barecount_manual_serverless",
        "slots": 1,
        "description": "created by an admin",
        "include_deferred": False,
    }
    pools_policy.write_text(POLICY.replace("max_parallel_tasks: 3", "max_parallel_tasks: 5"))
    capsys.readouterr()

    assert cli.main(["pools", "check"]) == 1
    assert "Drift: run `barecount pools sync` --prune" in capsys.readouterr().out

    assert cli.main(["pools", "sync", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "~ update barecount_acme_container  slots 50 -> 5" in out
    assert "! leave  barecount_old_serverless  (no longer in the policy; --prune deletes it)" in out
    assert "Dry run: 0 to create, 2 to update, 0 to delete." in out
    assert api.pools["barecount_acme_container"]["slots"] == 50

    assert cli.main(["pools", "sync", "--prune"]) == 0
    out = capsys.readouterr().out
    assert "- delete barecount_old_serverless" in out
    assert "! leave  barecount_manual_serverless  (not created by BareCount: never deleted)" in out
    assert api.pools["barecount_acme_container"]["slots"] == 5 and api.pools["barecount_acme_serverless"]["slots"] == 5
    assert "barecount_old_serverless" not in api.pools and "barecount_manual_serverless" in api.pools
    assert "barecount_old_serverless" not in _registry(api)["pools"]
    assert "barecount_manual_serverless" in _registry(api)["pools"]  # it exists: a task may use it


def test_check_reports_a_registry_listing_a_deleted_pool(api_env, pools_policy, capsys):
    api = api_env
    assert cli.main(["pools", "sync"]) == 0
    del api.pools["barecount_acme_serverless"]  # deleted in the UI: the registry does not know
    capsys.readouterr()
    assert cli.main(["pools", "check"]) == 1
    out = capsys.readouterr().out
    assert "+ create barecount_acme_serverless" in out
    assert "lists pools that do not exist (their tasks would wait forever): barecount_acme_serverless" in out


def test_a_token_is_used_as_is(airflow_api, pools_policy, monkeypatch, capsys):
    airflow_api.tokens["given-token-123"] = "admin"
    assert cli.main(["pools", "sync", "--api-url", airflow_api.url, "--token", "given-token-123"]) == 0
    assert ("POST", "/auth/token") not in airflow_api.requests
    assert "given-token-123" not in "".join(capsys.readouterr())


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_exit_codes_of_errors_never_show_secrets(airflow_api, pools_policy, monkeypatch, capsys):
    base = ["pools", "sync", "--username", "admin"]
    monkeypatch.setenv("BARECOUNT_API_PASSWORD", PASSWORD)

    assert cli.main([*base, "--api-url", f"http://127.0.0.1:{_closed_port()}"]) == pools.EXIT_UNREACHABLE
    assert "cannot reach the Airflow API at http://127.0.0.1:" in capsys.readouterr().err

    assert cli.main([*base, "--api-url", airflow_api.url, "--password", "wrong-pass-xyz"]) == pools.EXIT_AUTH
    err = capsys.readouterr().err
    assert "refused user 'admin' (401)" in err and "wrong-pass-xyz" not in err

    airflow_api.forbidden_users.add("viewer")
    assert cli.main(["pools", "sync", "--api-url", airflow_api.url, "--username", "viewer", "--password", "viewer-pass"]) == 4
    err = capsys.readouterr().err
    assert "GET /api/v2/pools: 403 forbidden" in err and "viewer-pass" not in err

    assert cli.main(["pools", "sync", "--api-url", airflow_api.url, "--token", "expired-token"]) == pools.EXIT_AUTH
    err = capsys.readouterr().err
    assert "401 unauthorized" in err and "expired-token" not in err

    assert cli.main([*base, "--api-url", f"{airflow_api.url}/api/v2"]) == pools.EXIT_USAGE
    assert "is http://127.0.0.1" in capsys.readouterr().err

    monkeypatch.delenv("BARECOUNT_API_URL", raising=False)
    assert cli.main(base) == pools.EXIT_USAGE
    assert "no Airflow API URL" in capsys.readouterr().err

    assert cli.main(["pools", "sync", "--api-url", "localhost:8080"]) == pools.EXIT_USAGE
    assert "is not an http(s) URL" in capsys.readouterr().err

    monkeypatch.delenv("BARECOUNT_API_PASSWORD")
    assert cli.main([*base, "--api-url", airflow_api.url]) == pools.EXIT_USAGE
    assert "no credentials" in capsys.readouterr().err

    assert [w for w in airflow_api.writes() if not w[1].endswith("/auth/token")] == []  # nothing was changed
    assert len(airflow_api.pools) == 1


def test_an_invalid_policy_changes_nothing(api_env, pools_policy, capsys):
    pools_policy.write_text("version: 1\ndefaults:\n  limits: {max_parallel_tasks: 0}\n")
    assert cli.main(["pools", "sync"]) == pools.EXIT_USAGE
    assert "defaults.limits.max_parallel_tasks: 0 is not an integer >= 1" in capsys.readouterr().err
    assert api_env.writes() == []
