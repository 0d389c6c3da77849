"""``HealthCheckOperator`` (dags/example_health.py's task) against real TCP services on 127.0.0.1: every
dependency of every tenant's profiles is checked once; results stored, in the evidence attribute and in XCom;
the task fails naming what does not pass."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


class _Ti:
    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


@pytest.fixture
def listening_port() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    try:
        yield int(server.getsockname()[1])
    finally:
        server.close()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from barecount_provider import config
    from barecount_provider.health import records

    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(tmp_path / "evidence"))
    config.cache_clear()
    records.clear_caches()
    yield records
    records.clear_caches()


def _policy(up: int, down: int) -> str:
    return f"""version: 1
tenants:
  acme:
    allowed_network_profiles: [public, on_prem]
    network_profiles:
      on_prem:
        dependencies:
          health_urls: [tcp://127.0.0.1:{up}]
  globex:
    allowed_network_profiles: [public, vpn]
    network_profiles:
      vpn:
        dependencies:
          health_urls: [tcp://127.0.0.1:{down}]
"""


def test_every_tenants_profiles_are_checked_and_the_task_fails_naming_what_is_down(
    policy_file: Any, records: Any, listening_port: int, closed_port: int
) -> None:
    from airflow.sdk.exceptions import AirflowException

    from barecount_provider.operators.health import HEALTH_XCOM_KEY, HealthCheckOperator

    policy_file(_policy(listening_port, closed_port))
    operator = HealthCheckOperator(task_id="check", timeout_s=3)
    ti = _Ti()
    with pytest.raises(AirflowException) as raised:
        operator.execute({"ti": ti})

    message = str(raised.value)
    assert f"tcp://127.0.0.1:{closed_port}" in message and "refused" in message and "globex" in message
    assert f"tcp://127.0.0.1:{listening_port}" not in message

    summary = ti.pushed[HEALTH_XCOM_KEY]
    assert summary["checked"] == 2 and summary["passed"] is False
    assert {(p["tenant"], p["network_profile"], p["passed"]) for p in summary["profiles"]} == {
        ("acme", "on_prem", True),
        ("globex", "vpn", False),
    }
    assert {(r["dependency"]["tenant"], r["status"]) for r in operator.barecount_health} == {
        ("acme", "healthy"),
        ("globex", "unhealthy"),
    }
    stored = {(r["dependency"]["tenant"], r["status"]) for r in records.latest_results()}
    assert stored == {("acme", "healthy"), ("globex", "unhealthy")}


def test_one_tenant_only_and_recording_without_failing(
    policy_file: Any, records: Any, listening_port: int, closed_port: int
) -> None:
    from barecount_provider.operators.health import HealthCheckOperator

    policy_file(_policy(listening_port, closed_port))
    operator = HealthCheckOperator(task_id="check", tenants=["globex"], fail_on_unhealthy=False, timeout_s=3)
    ti = _Ti()
    summary = operator.execute({"ti": ti})
    assert summary["passed"] is False and summary["checked"] == 1
    assert [r["dependency"]["tenant"] for r in operator.barecount_health] == ["globex"]


def test_a_policy_without_dependencies_checks_nothing_and_succeeds(policy_file: Any, records: Any) -> None:
    from barecount_provider.operators.health import HealthCheckOperator

    policy_file("version: 1\ntenants:\n  acme: {}\n")
    ti = _Ti()
    assert HealthCheckOperator(task_id="check").execute({"ti": ti}) == {"checked": 0, "passed": True, "profiles": []}
    assert records.latest_results() == []


def test_bad_arguments_are_refused_when_the_dag_is_parsed() -> None:
    from barecount_provider.operators.health import HealthCheckOperator

    with pytest.raises(ValueError, match="tenants and network_profiles are lists"):
        HealthCheckOperator(task_id="a", tenants="acme")
    with pytest.raises(ValueError, match="timeout_s must be a positive"):
        HealthCheckOperator(task_id="b", timeout_s=0)
