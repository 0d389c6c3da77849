"""The health result (barecount_provider/health/result.py): its shape, the closed list of error codes, as_dict."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from barecount_provider.health.result import (
    ERROR_CODES,
    Dependency,
    HealthResult,
    PhaseTimings,
    http_error_code,
    is_error_code,
)

DEPENDENCY = Dependency(kind="url", id="orders-db", tenant="acme", network_profile="onprem")
WHEN = datetime(2026, 12, 8, 1, 2, 3, tzinfo=UTC)


def test_as_dict_is_json_and_names_every_field():
    result = HealthResult(
        status="unhealthy",
        dependency=DEPENDENCY,
        latency_ms=12.5,
        detail="db.example:5432: GET /health answered 503",
        error_code="http_503",
        phases=PhaseTimings(dns=1.0, connect=2.0, tls=3.5, http=6.0),
        checked_at=WHEN,
    )
    assert result.as_dict() == {
        "status": "unhealthy",
        "dependency": {"kind": "url", "id": "orders-db", "tenant": "acme", "network_profile": "onprem"},
        "latency_ms": 12.5,
        "phases_ms": {"dns": 1.0, "connect": 2.0, "tls": 3.5, "http": 6.0},
        "error_code": "http_503",
        "detail": "db.example:5432: GET /health answered 503",
        "checked_at": "2026-12-08T01:02:03+00:00",
        "measurements": {},
    }
    assert json.loads(json.dumps(result.as_dict())) == result.as_dict()


def test_phases_not_run_are_none_and_checked_at_defaults_to_now_in_utc():
    result = HealthResult(status="healthy", dependency=Dependency(kind="url", id="x"), latency_ms=0.4, detail="ok")
    assert result.as_dict()["phases_ms"] == {"dns": None, "connect": None, "tls": None, "http": None}
    assert result.as_dict()["dependency"] == {"kind": "url", "id": "x", "tenant": None, "network_profile": None}
    assert result.checked_at.tzinfo is UTC
    assert abs((datetime.now(UTC) - result.checked_at).total_seconds()) < 5


def test_the_result_is_frozen():
    result = HealthResult(status="healthy", dependency=DEPENDENCY, latency_ms=1.0, detail="ok")
    with pytest.raises(AttributeError):
        result.status = "unhealthy"  # type: ignore[misc]


@pytest.mark.parametrize("status,ok", [("healthy", True), ("degraded", True), ("unhealthy", False), ("unknown", False)])
def test_every_status_and_whether_the_dependency_works(status, ok):
    code = "timeout" if status == "unhealthy" else None
    assert HealthResult(status=status, dependency=DEPENDENCY, latency_ms=1.0, detail="d", error_code=code).ok is ok


def test_a_status_outside_the_list_is_refused():
    with pytest.raises(ValueError, match="health status 'sick' is not one of healthy, degraded, unhealthy, unknown"):
        HealthResult(status="sick", dependency=DEPENDENCY, latency_ms=1.0, detail="d")  # type: ignore[arg-type]


@pytest.mark.parametrize("code", sorted(ERROR_CODES) + ["http_100", "http_404", "http_503", "http_599"])
def test_every_code_of_the_closed_list_is_accepted(code):
    assert is_error_code(code)
    assert HealthResult(status="unhealthy", dependency=DEPENDENCY, latency_ms=1.0, detail="d", error_code=code).error_code == code


@pytest.mark.parametrize("code", ["connection_reset", "DNS", "http_5xx", "http_600", "http_99", "http_", "http_2000", ""])
def test_a_code_outside_the_closed_list_is_a_programming_error(code):
    assert not is_error_code(code)
    with pytest.raises(ValueError, match=f"health error code {code!r} is not one of access_denied, dns, .*http_<status>"):
        HealthResult(status="unhealthy", dependency=DEPENDENCY, latency_ms=1.0, detail="d", error_code=code)


def test_the_fixed_codes_are_the_issues_list():
    assert ERROR_CODES == {
        "dns", "refused", "timeout", "tls", "tunnel_down", "endpoint_state", "heartbeat_stale", "not_found",
        "access_denied",
    }


def test_http_error_code():
    assert http_error_code(503) == "http_503"
    with pytest.raises(ValueError, match="HTTP status 700 is not between 100 and 599"):
        http_error_code(700)


def test_a_healthy_result_has_no_code_and_an_unhealthy_one_needs_one():
    with pytest.raises(ValueError, match="a healthy result has no error code"):
        HealthResult(status="healthy", dependency=DEPENDENCY, latency_ms=1.0, detail="d", error_code="dns")
    with pytest.raises(ValueError, match="an unhealthy result needs an error code"):
        HealthResult(status="unhealthy", dependency=DEPENDENCY, latency_ms=1.0, detail="d")
    degraded = HealthResult(status="degraded", dependency=DEPENDENCY, latency_ms=1.0, detail="d", error_code="tunnel_down")
    assert degraded.error_code == "tunnel_down"


def test_bad_latency_timings_and_naive_times_are_refused():
    with pytest.raises(ValueError, match="latency -1.0 ms is negative"):
        HealthResult(status="healthy", dependency=DEPENDENCY, latency_ms=-1.0, detail="d")
    with pytest.raises(ValueError, match="phase tls: -2.0 ms is negative"):
        PhaseTimings(tls=-2.0)
    with pytest.raises(ValueError, match="checked_at must be timezone-aware"):
        HealthResult(status="healthy", dependency=DEPENDENCY, latency_ms=1.0, detail="d", checked_at=datetime(2026, 1, 1))


def test_a_dependency_needs_a_kind_and_an_id():
    with pytest.raises(ValueError, match="a health dependency needs a kind"):
        Dependency(kind="", id="x")
    with pytest.raises(ValueError, match="a health dependency of kind 'url' needs an id"):
        Dependency(kind="url", id="")


def test_measurements_are_in_as_dict_read_only_and_must_be_finite_numbers():
    result = HealthResult(
        status="degraded",
        dependency=Dependency(kind="vpn_connection", id="vpn-1"),
        latency_ms=3.0,
        detail="1 of 2 tunnels UP",
        measurements={"tunnels_up": 1, "tunnels_required": 2},
    )
    assert result.as_dict()["measurements"] == {"tunnels_up": 1, "tunnels_required": 2}
    with pytest.raises(TypeError):
        result.measurements["tunnels_up"] = 2  # type: ignore[index]
    hash(result)  # still hashable: the measurements are not part of the hash
    for bad in ({"age": float("nan")}, {"age": "5"}, {"age": True}, {"": 1.0}):
        with pytest.raises(ValueError, match="measurement"):
            HealthResult(status="healthy", dependency=DEPENDENCY, latency_ms=1.0, detail="ok", measurements=bad)
