"""Health results as metric points (``health.metrics``), published (``runtime.health_report``) and carried by
a try's evidence entry (its ``health`` section)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import msgspec
import pytest

from barecount_provider import context, selfmetrics
from barecount_provider.evidence.facts import facts_from_json
from barecount_provider.health import metrics as health_metrics
from barecount_provider.health.result import Dependency, HealthResult, PhaseTimings
from barecount_provider.runtime import entries, health_report
from barecount_provider.selfmetrics import COUNTER, GAUGE, TIMER
from barecount_provider.telemetry.metrics import CATALOG

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "evidence.schema.json").read_text())
ENTRY = jsonschema.Draft202012Validator(
    {"$defs": SCHEMA["$defs"], "$ref": "#/$defs/entry"}, format_checker=jsonschema.FormatChecker()
)
AT = datetime(2026, 12, 8, 1, 2, 3, tzinfo=UTC)
TAGS = {"tenant": "acme", "network_profile": "vpn"}


def _dep(kind: str, id: str) -> Dependency:
    return Dependency(kind=kind, id=id, tenant="acme", network_profile="vpn")


def _endpoint_down() -> HealthResult:
    return HealthResult(
        status="unhealthy",
        dependency=_dep("vpc_endpoint", "vpce-1"),
        latency_ms=12.5,
        detail="connect: refused",
        error_code="refused",
        phases=PhaseTimings(dns=0.5, connect=1.25),
        checked_at=AT,
    )


def _vpn_degraded() -> HealthResult:
    return HealthResult(
        status="degraded",
        dependency=_dep("vpn_connection", "vpn-1"),
        latency_ms=30.0,
        detail="1 of 2 tunnels UP",
        measurements={"tunnels_up": 1, "tunnels_required": 2},
        checked_at=AT,
    )


def _agent_healthy() -> HealthResult:
    return HealthResult(
        status="healthy",
        dependency=_dep("agent", "dc1-agent"),
        latency_ms=2.0,
        detail="last heartbeat 15 s ago",
        measurements={"heartbeat_age_seconds": 15.0},
        checked_at=AT,
    )


def _by_name(points: list[Any]) -> dict[str, list[tuple[str, float, dict[str, Any]]]]:
    found: dict[str, list[tuple[str, float, dict[str, Any]]]] = {}
    for name, kind, value, tags in points:
        found.setdefault(name, []).append((kind, value, dict(tags)))
    return found


def test_an_unhealthy_probe_gives_up_0_its_duration_its_phases_and_its_error_code() -> None:
    points = _by_name(health_metrics.result_points(_endpoint_down()))
    tags = {**TAGS, "dependency_kind": "vpc_endpoint", "dependency": "vpce-1"}
    assert points["barecount.health.up"] == [(GAUGE, 0.0, tags)]
    assert points["barecount.health.check_duration"] == [(TIMER, 12.5, tags)]
    # only the phases that ran: dns and connect, not tls and http
    assert points["barecount.network.latency"] == [
        (TIMER, 0.5, {**tags, "phase": "dns"}),
        (TIMER, 1.25, {**tags, "phase": "connect"}),
    ]
    assert points["barecount.network.errors"] == [(COUNTER, 1, {**tags, "error_code": "refused"})]
    assert "barecount.vpn.tunnels_up" not in points and "barecount.agent.heartbeat_age" not in points


def test_degraded_is_up_and_measurements_give_tunnels_and_heartbeat_age() -> None:
    points = _by_name(health_metrics.health_metric_points([_vpn_degraded(), _agent_healthy()]))
    vpn = {**TAGS, "dependency_kind": "vpn_connection", "dependency": "vpn-1"}
    agent = {**TAGS, "dependency_kind": "agent", "dependency": "dc1-agent"}
    assert points["barecount.health.up"] == [(GAUGE, 1.0, vpn), (GAUGE, 1.0, agent)]
    assert points["barecount.vpn.tunnels_up"] == [(GAUGE, 1.0, vpn)]
    assert points["barecount.agent.heartbeat_age"] == [(GAUGE, 15.0, agent)]
    assert "barecount.network.errors" not in points  # degraded carries no error code here
    assert "barecount.network.latency" not in points  # no network phase ran


def test_an_unknown_result_is_down_and_a_result_without_tenant_drops_the_tag() -> None:
    result = HealthResult(
        status="unknown", dependency=Dependency(kind="url", id="https://x.invalid/"), latency_ms=0.0, detail="?"
    )
    [up, duration] = health_metrics.result_points(result)
    assert up[:3] == ("barecount.health.up", GAUGE, 0.0)
    assert up[3]["tenant"] is None  # the emitter drops None tags (clean_tags)


def test_every_health_metric_is_in_the_catalogue_with_the_kind_it_is_emitted_as() -> None:
    points = health_metrics.health_metric_points([_endpoint_down(), _vpn_degraded(), _agent_healthy()])
    assert {name for name, *_ in points} == set(health_metrics.NAMES)
    for name, kind, _value, tags in points:
        spec = CATALOG[name]
        assert spec.kind == kind, name
        assert set(tags) == set(spec.tags), name


def test_publish_emits_the_points_and_saves_the_results(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[Any] = []
    saved: list[Any] = []
    monkeypatch.setattr(health_report, "get_emitter", lambda: SimpleNamespace(emit=sent.extend))
    monkeypatch.setattr(health_report, "_save", saved.extend)
    results = [_endpoint_down(), _agent_healthy()]
    health_report.publish(results, source="test")
    assert sent == health_metrics.health_metric_points(results)
    assert saved == results


def test_published_results_are_the_dependencies_last_results_in_the_database(
    index_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from barecount_provider.health import records

    monkeypatch.setattr(health_report, "get_emitter", lambda: SimpleNamespace(emit=lambda points: None))
    health_report.publish([_endpoint_down(), _agent_healthy()], source="test")
    stored = {(r["dependency"]["kind"], r["dependency"]["id"]): r for r in records.latest_results(["acme"])}
    assert stored[("vpc_endpoint", "vpce-1")]["status"] == "unhealthy"
    assert stored[("vpc_endpoint", "vpce-1")]["error_code"] == "refused"
    assert stored[("agent", "dc1-agent")]["status"] == "healthy"


def test_publish_never_raises_and_counts_its_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any) -> None:
        raise OSError("sink down")

    monkeypatch.setattr(health_report, "get_emitter", lambda: SimpleNamespace(emit=broken))
    monkeypatch.setattr(health_report, "_save", broken)
    selfmetrics.EMIT_FAILURES.counts.clear()
    health_report.publish([_endpoint_down()], source="test")
    assert selfmetrics.EMIT_FAILURES.counts[("health", "emit")] == 1
    assert selfmetrics.EMIT_FAILURES.counts[("health", "save")] == 1
    health_report.publish([], source="test")  # nothing to publish: nothing counted
    assert selfmetrics.EMIT_FAILURES.total() == 2


def test_a_result_read_back_from_its_dict_is_the_same_result() -> None:
    for result in (_endpoint_down(), _vpn_degraded(), _agent_healthy()):
        again = health_report.result_from_dict(json.loads(json.dumps(result.as_dict())))
        assert again == result and again.as_dict() == result.as_dict()
    with pytest.raises(ValueError, match="not a health result"):
        health_report.result_from_dict({"status": "healthy"})


def _try_facts(health: list[dict[str, Any]] | None) -> Any:
    ctx = context.RunContext(
        tenant="acme", pipeline="orders", runner_class="serverless", size="s", network_profile="vpn", dag_id="etl",
        run_id="r1", task_id="ingest", try_number=1, map_index=-1, correlation_id="c" * 32, run_token="t" * 40,
    )  # fmt: skip
    task = SimpleNamespace(barecount_health=health) if health is not None else SimpleNamespace()
    ti = SimpleNamespace(task=task, queued_dttm=None, hostname="worker-1")
    return entries.try_facts(
        ctx, ti, state="failed", started_at=AT, ended_at=AT, duration_s=0.0, metrics={}, trace=None,
        error={"error_class": "AirflowFailException", "message": "not launched"},
    )  # fmt: skip


def test_the_entry_of_a_try_that_checked_health_carries_its_results() -> None:
    results = [_endpoint_down().as_dict(), _vpn_degraded().as_dict()]
    facts = _try_facts(results)
    assert facts.health == results
    entry = entries.entry_of(facts)
    assert entry["health"] == results
    ENTRY.validate(entry)
    # the facts cross the outbox to the forwarder (msgspec, as the outbox encodes them): the same section
    assert facts_from_json(json.loads(msgspec.json.encode(facts))).health == results


def test_the_entry_of_a_try_without_health_checks_has_no_health_section() -> None:
    entry = entries.entry_of(_try_facts(None))
    assert "health" not in entry


def test_the_schema_refuses_a_health_result_outside_the_closed_lists() -> None:
    entry = entries.entry_of(_try_facts([{**_endpoint_down().as_dict(), "error_code": "exploded"}]))
    with pytest.raises(jsonschema.ValidationError, match="exploded"):
        ENTRY.validate(entry)
