"""Pools per tenant and runner class: the plan, `barecount pools sync/check` against a real HTTP server on
loopback that speaks the part of Airflow 3's REST API they use, and the cluster policy on real operators.

The same commands run against a real Airflow 3.3 in tests/system/test_pools_real_run.py.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from barecount_provider import cli, config, policies, pools
from barecount_provider.policy import parse_policy

from ..conftest import PolicyFile

POLICY = """
version: 1
defaults:
  allowed_runner_classes: [serverless, container, local]
  limits: {max_parallel_tasks: 4}
tenants:
  acme:
    limits: {max_parallel_tasks: 3}
  etl_team:
    allowed_runner_classes: [managed_etl, dedicated, local]
"""


# --------------------------------------------------------------------------------- a loopback Airflow API


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


# ------------------------------------------------------------------------------------------- naming, plan


@pytest.mark.parametrize(
    "tenant, runner_class",
    [("acme", "container"), ("etl_team", "managed_etl"), ("a-b_c", "serverless"), ("x", "dedicated")],
)
def test_pool_names_round_trip(tenant, runner_class):
    name = pools.pool_name(tenant, runner_class)
    assert name == f"barecount_{tenant}_{runner_class}"
    assert pools.parse_pool_name(name) == (tenant, runner_class)


def test_parse_pool_name_rejects_other_pools():
    assert pools.parse_pool_name("default_pool") is None
    assert pools.parse_pool_name("barecount_acme_local") is None
    assert pools.parse_pool_name("barecount__container") is None


def test_desired_pools_cover_declared_tenants_and_the_default_tenant_without_local():
    policy = parse_policy(POLICY, source="policy.yaml")
    desired = {pool.name: (pool.slots, pool.include_deferred) for pool in pools.desired_pools(policy, "default")}
    assert desired == {
        "barecount_acme_container": (3, True),
        "barecount_acme_serverless": (3, True),
        "barecount_default_container": (4, True),
        "barecount_default_serverless": (4, True),
        "barecount_etl_team_dedicated": (4, True),
        "barecount_etl_team_managed_etl": (4, True),
    }
    # a default tenant the policy declares is not listed twice
    assert len(pools.desired_pools(policy, "acme")) == 4


def _existing(name: str, slots: int, *, managed: bool = True, include_deferred: bool = True) -> pools.ExistingPool:
    tenant, runner_class = pools.parse_pool_name(name) or ("?", "?")
    description = pools.pool_description(tenant, runner_class) if managed else "made by hand"
    return pools.ExistingPool(name, slots, description, include_deferred)


def test_plan_creates_updates_keeps_and_never_touches_other_pools():
    policy = parse_policy(POLICY, source="policy.yaml")
    existing = [
        pools.ExistingPool("default_pool", 128, "Default pool", False),
        pools.ExistingPool("reporting", 2, None, False),
        _existing("barecount_acme_container", 3),
        _existing("barecount_acme_serverless", 10),
        _existing("barecount_default_container", 4, include_deferred=False),
        _existing("barecount_default_serverless", 4, managed=False),
        _existing("barecount_gone_container", 5),
        _existing("barecount_handmade_container", 5, managed=False),
    ]
    actions = {a.name: a for a in pools.plan(pools.desired_pools(policy, "default"), existing)}
    assert "default_pool" not in actions and "reporting" not in actions
    assert {name: a.kind for name, a in actions.items()} == {
        "barecount_acme_container": "keep",
        "barecount_acme_serverless": "update",
        "barecount_default_container": "update",
        "barecount_default_serverless": "update",
        "barecount_etl_team_dedicated": "create",
        "barecount_etl_team_managed_etl": "create",
        "barecount_gone_container": "leave",
        "barecount_handmade_container": "leave",
    }
    assert actions["barecount_acme_serverless"].changes == ("slots 10 -> 3",)
    assert actions["barecount_default_container"].changes == ("include_deferred False -> True",)
    assert "adopts a pool BareCount did not create" in actions["barecount_default_serverless"].changes[0]
    assert "--prune deletes it" in actions["barecount_gone_container"].reason

    pruned = {a.name: a.kind for a in pools.plan(pools.desired_pools(policy, "default"), existing, prune=True)}
    assert pruned["barecount_gone_container"] == "delete"
    assert pruned["barecount_handmade_container"] == "leave"  # not created by BareCount: never deleted


# ------------------------------------------------------------------------------------- the CLI, for real


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


# ------------------------------------------------------------------------------ the cluster policy, for real


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch):
    """Sets the registry the way Airflow reads Variables everywhere first: AIRFLOW_VAR_<KEY>."""

    def set_registry(*names: str) -> None:
        value = json.dumps({"version": 1, "pools": dict.fromkeys(names, 4)})
        monkeypatch.setenv("AIRFLOW_VAR_BARECOUNT_POOLS", value)
        pools.registry_cache_clear()

    pools.registry_cache_clear()
    yield set_registry
    pools.registry_cache_clear()


def _dag(**kwargs: Any):
    from airflow.sdk import DAG

    return DAG(dag_id=kwargs.pop("dag_id", "pools_unit"), schedule=None, start_date=datetime(2026, 1, 1), **kwargs)


def test_runner_tasks_plain_and_mapped_get_their_tenant_pool(registry):
    from airflow.providers.standard.operators.python import PythonOperator

    from barecount_provider.operators.glue import GlueRunnerOperator
    from barecount_provider.operators.kubernetes import KubernetesRunnerOperator
    from barecount_provider.operators.lambda_function import LambdaRunnerOperator

    registry("barecount_acme_serverless", "barecount_acme_container", "barecount_globex_managed_etl")
    with _dag(tags=["tenant:acme"]):
        ingest = LambdaRunnerOperator(task_id="ingest", function_name="f")
        fan_out = KubernetesRunnerOperator.partial(task_id="fan_out", name="p", image="busybox").expand(
            arguments=[["1"], ["2"]]
        )
        glue = GlueRunnerOperator(task_id="glue", job_name="j", tenant="globex")
        pinned = LambdaRunnerOperator(task_id="pinned", function_name="f", pool="reserved")
        local = PythonOperator(task_id="local", python_callable=lambda: None)
    for task in (ingest, fan_out, glue, pinned, local):
        policies.task_policy(task)
    assert ingest.pool == "barecount_acme_serverless"
    assert fan_out.pool == "barecount_acme_container"  # a mapped task's partial kwargs
    assert glue.pool == "barecount_globex_managed_etl"  # the operator's own tenant wins over the tag
    assert pinned.pool == "reserved"  # an explicit pool is left alone
    assert local.pool == "default_pool"  # not a runner task


def test_the_tenant_comes_from_the_dag_declaration_then_the_default_tenant(registry, monkeypatch):
    from barecount_provider.operators.lambda_function import LambdaRunnerOperator

    registry("barecount_initech_serverless", "barecount_house_serverless", "barecount_umbrella_serverless")
    with _dag(dag_id="by_params", params={"tenant": "initech"}, tags=["tenant:acme"]):
        by_params = LambdaRunnerOperator(task_id="t", function_name="f")
    with _dag(dag_id="by_default_args", default_args={"tenant": "umbrella"}):
        by_default_args = LambdaRunnerOperator(task_id="t", function_name="f")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__DEFAULT_TENANT", "house")
    config.cache_clear()
    with _dag(dag_id="undeclared"):
        undeclared = LambdaRunnerOperator(task_id="t", function_name="f")
    for task in (by_params, by_default_args, undeclared):
        policies.task_policy(task)
    assert (by_params.pool, by_default_args.pool, undeclared.pool) == (
        "barecount_initech_serverless",
        "barecount_umbrella_serverless",
        "barecount_house_serverless",
    )


def test_without_a_registry_pools_are_off(registry):
    from barecount_provider.operators.lambda_function import LambdaRunnerOperator

    with _dag(tags=["tenant:acme"]):
        task = LambdaRunnerOperator(task_id="t", function_name="f")
    policies.task_policy(task)
    assert task.pool == "default_pool"


def test_a_missing_pool_fails_the_import_in_the_dag_processor_only(registry, monkeypatch, caplog, pools_policy):
    from airflow.exceptions import AirflowClusterPolicyViolation

    from barecount_provider.operators.ec2 import DedicatedComputeOperator
    from barecount_provider.operators.glue import GlueRunnerOperator
    from barecount_provider.operators.lambda_function import LambdaRunnerOperator

    registry("barecount_acme_serverless")
    with _dag(tags=["tenant:acme"]):
        undeclared = LambdaRunnerOperator(task_id="undeclared", function_name="f", tenant="nobody")
        not_allowed = DedicatedComputeOperator(task_id="not_allowed", image_id="ami-1", commands=["true"])
        not_synced = GlueRunnerOperator(task_id="not_synced", job_name="j", tenant="etl_team")

    # a task process, dag.test(), the CLI: a warning; the task keeps default_pool
    policies.task_policy(undeclared)
    assert undeclared.pool == "default_pool"
    assert "pool 'barecount_nobody_serverless'" in caplog.text

    monkeypatch.setattr(pools, "in_dag_processor", lambda: True)
    with pytest.raises(AirflowClusterPolicyViolation, match="tenant 'nobody' is not declared in the policy"):
        policies.task_policy(undeclared)
    with pytest.raises(AirflowClusterPolicyViolation, match="tenant 'acme' may not use runner class 'dedicated'"):
        policies.task_policy(not_allowed)
    # declared, allowed, but the registry does not list it: the policy changed since the last sync
    with pytest.raises(AirflowClusterPolicyViolation, match="run `barecount pools sync` to create it"):
        policies.task_policy(not_synced)


def test_a_dagbag_reports_the_missing_pool_as_an_import_error(registry, monkeypatch, tmp_path):
    """The entry point is installed: Airflow's own DagBag calls task_policy and records the violation."""
    from airflow.dag_processing.dagbag import DagBag

    registry("barecount_acme_serverless")
    monkeypatch.setattr(pools, "in_dag_processor", lambda: True)
    (tmp_path / "beta_dag.py").write_text(
        "from datetime import datetime\n"
        "from airflow.sdk import DAG\n"
        "from barecount_provider.operators.lambda_function import LambdaRunnerOperator\n"
        "with DAG('beta_dag', schedule=None, start_date=datetime(2026, 1, 1), tags=['tenant:beta']):\n"
        "    LambdaRunnerOperator(task_id='ingest', function_name='f')\n"
        "with DAG('acme_dag', schedule=None, start_date=datetime(2026, 1, 1), tags=['tenant:acme']):\n"
        "    LambdaRunnerOperator(task_id='ingest', function_name='f')\n"
    )
    bag = DagBag(dag_folder=str(tmp_path))
    (error,) = bag.import_errors.values()
    assert error.startswith("AirflowClusterPolicyViolation: BareCount: task 'ingest': pool 'barecount_beta_serverless'")
    assert bag.dags["acme_dag"].get_task("ingest").pool == "barecount_acme_serverless"


def test_in_dag_processor_is_false_here():
    assert pools.in_dag_processor() is False


class _Weird:
    task_id = "weird"
    runner_class = "container"

    @property
    def pool(self) -> str:
        raise RuntimeError("no pool for you")


def test_the_policy_never_crashes_on_unexpected_objects(registry, caplog):
    registry("barecount_default_container")
    for thing in (None, object(), "a string", _Weird()):
        policies.task_policy(thing)

    class Impostor:
        pool = "default_pool"
        runner_class = "container"  # a class attribute, but no dag, no task_id

    impostor = Impostor()
    policies.task_policy(impostor)  # resolves to the default tenant's pool
    assert impostor.pool == "barecount_default_container"


def test_a_corrupt_registry_turns_pools_off_with_a_warning(monkeypatch, caplog):
    from barecount_provider.operators.lambda_function import LambdaRunnerOperator

    monkeypatch.setenv("AIRFLOW_VAR_BARECOUNT_POOLS", "not json")
    pools.registry_cache_clear()
    with _dag(tags=["tenant:acme"]):
        task = LambdaRunnerOperator(task_id="t", function_name="f")
    policies.task_policy(task)
    assert task.pool == "default_pool"
    assert "is not a pool registry written by `barecount pools sync`" in caplog.text
    pools.registry_cache_clear()


def test_the_master_switch_turns_pools_off(registry, monkeypatch):
    from barecount_provider.operators.lambda_function import LambdaRunnerOperator

    registry()  # an empty registry: every runner pool is missing
    monkeypatch.setenv("AIRFLOW__BARECOUNT__ENABLED", "False")
    config.cache_clear()
    monkeypatch.setattr(pools, "in_dag_processor", lambda: True)
    with _dag(tags=["tenant:acme"]):
        task = LambdaRunnerOperator(task_id="t", function_name="f")
    policies.task_policy(task)
    assert task.pool == "default_pool"


def test_the_registry_is_read_once_per_ttl(registry, monkeypatch):
    registry("barecount_acme_serverless")
    assert pools.known_pools() == {"barecount_acme_serverless"}
    monkeypatch.setenv("AIRFLOW_VAR_BARECOUNT_POOLS", json.dumps({"version": 1, "pools": {}}))
    assert pools.known_pools() == {"barecount_acme_serverless"}  # cached
    pools.registry_cache_clear()
    assert pools.known_pools() == frozenset()


@pytest.mark.parametrize("argv", [["pools", "--help"], ["pools", "sync", "--help"], ["pools", "check", "--help"]])
def test_pools_subcommands_have_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    assert "usage: barecount pools" in capsys.readouterr().out
