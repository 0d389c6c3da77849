"""``barecount health check`` (barecount_provider/cli/health.py): the real checks of runtime/health.py over a
policy whose profiles name on-premise agents, whose heartbeats are in a real SQLite database (no network: an
agent check reads the heartbeats' table). A probe of a real server: tests/integration/test_health_network.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from barecount_provider import cli
from barecount_provider.health import records

POLICY = """
version: 1
tenants:
  acme:
    network_profiles:
      on_prem:
        dependencies:
          agents: [{name: dc1-agent, max_heartbeat_age_seconds: 60}, {name: dc2-agent}]
  beta:
    network_profiles:
      vpn:
        dependencies:
          agents: [{name: beta-agent, max_heartbeat_age_seconds: 60}]
  empty: {}
"""


@pytest.fixture
def setup(policy_file: Any, index_url: str) -> Iterator[str]:
    policy_file(POLICY)
    records.clear_caches()
    now = datetime.now(UTC)
    records.record_heartbeat("dc1-agent", tenants=["acme"], version="1", capabilities=[], reported_by="svc", at=now - timedelta(seconds=5))
    records.record_heartbeat("dc2-agent", tenants=["acme"], version="1", capabilities=[], reported_by="svc", at=now - timedelta(seconds=10))
    records.record_heartbeat("beta-agent", tenants=["beta"], version="1", capabilities=[], reported_by="svc", at=now - timedelta(minutes=10))
    yield index_url
    records.clear_caches()


def test_a_tenant_whose_dependencies_pass_exits_0_one_line_each(setup: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["health", "check", "--tenant", "acme"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["STATUS", "TENANT", "PROFILE", "KIND", "ID", "LATENCY", "ERROR", "DETAIL"]
    body = lines[2:-1]
    assert [line.split()[:5] for line in body] == [
        ["healthy", "acme", "on_prem", "agent", "dc1-agent"],
        ["healthy", "acme", "on_prem", "agent", "dc2-agent"],
    ]
    assert lines[-1] == "2 dependencies: all pass"


def test_a_stale_agent_makes_the_round_fail_with_1(setup: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["health", "check"]) == 1
    out = capsys.readouterr().out
    (stale,) = [line for line in out.splitlines() if "beta-agent" in line]
    assert stale.split()[:5] == ["unhealthy", "beta", "vpn", "agent", "beta-agent"]
    assert "heartbeat_stale" in stale and "more than the 60 s allowed" in stale
    assert out.strip().splitlines()[-1] == "3 dependencies: 1 do not pass"


def test_json_is_alone_on_stdout_and_says_which_pass(setup: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["health", "check", "--json"]) == 1
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["passed"] is False
    assert [(r["dependency"]["id"], r["status"], r["passes"]) for r in document["results"]] == [
        ("dc1-agent", "healthy", True),
        ("dc2-agent", "healthy", True),
        ("beta-agent", "unhealthy", False),
    ]
    assert document["results"][2]["error_code"] == "heartbeat_stale"
    assert document["results"][0]["measurements"]["heartbeat_age_seconds"] >= 5


def test_emit_publishes_the_results_as_each_dependencys_last(setup: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert records.latest_results() == []
    assert cli.main(["health", "check", "--tenant", "beta", "--emit"]) == 1
    assert capsys.readouterr().out.strip().endswith("1 dependencies: 1 do not pass (published)")
    (saved,) = records.latest_results(["beta"])
    assert saved["dependency"] == {"kind": "agent", "id": "beta-agent", "tenant": "beta", "network_profile": "vpn"}
    assert saved["status"] == "unhealthy"


def test_a_tenant_whose_profiles_name_no_dependency_passes(setup: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["health", "check", "--tenant", "empty"]) == 0
    assert capsys.readouterr().out.strip() == (
        "No dependency to check: no network profile of tenant 'empty' names one (network_profiles.<profile>.dependencies)."
    )
    assert cli.main(["health", "check", "--tenant", "empty", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"passed": True, "results": []}


def test_an_unknown_tenant_exits_2_with_one_line(setup: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["health", "check", "--tenant", "nobody"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("barecount health check: --tenant 'nobody' is not declared in the policy (")
    assert "tenants: acme, beta, empty; [barecount] default_tenant: 'default')" in line


def test_a_bad_timeout_exits_2_with_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["health", "check", "--timeout", "0"])
    assert exit_info.value.code == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if not line.startswith(("usage:", " "))]
    assert error == "barecount health check: error: argument --timeout: '0' is not a number > 0"
