"""HealthTrigger: waits until its dependencies are healthy or its end comes, checking them on threads of
their own (never on the event loop), against real TCP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import importlib
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from barecount_provider.health.plan import Verdict
from barecount_provider.health.result import HealthResult
from barecount_provider.runtime import health as runtime_health
from barecount_provider.triggers import health as trigger_module
from barecount_provider.triggers.health import HealthTrigger, verdict_of_event


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Listener:
    """A TCP server on 127.0.0.1 that accepts connections (and, with ``hang``, never answers them)."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    made: list[Listener] = []
    yield made
    for listener in made:
        listener.close()


def _url_spec(url: str) -> dict[str, Any]:
    return runtime_health.DependencySpec(kind="url", id=url, tenant="acme", network_profile="vpn").as_dict()


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def _first_event(trigger: HealthTrigger) -> Any:
    events = [event async for event in trigger.run()]
    assert len(events) == 1  # one event, then the trigger ends
    return events[0].payload


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    calls: list[float] = []
    real = runtime_health.check_async

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(time.monotonic())
        return await real(*args, **kwargs)

    monkeypatch.setattr(runtime_health, "check_async", counted)
    return calls


@pytest.mark.asyncio
async def test_a_dependency_that_comes_up_ends_the_wait_healthy(
    monkeypatch: pytest.MonkeyPatch, listeners: list[Listener]
) -> None:
    port = _free_port()
    calls = _counting(monkeypatch)
    trigger = HealthTrigger(
        specs=[_url_spec(f"tcp://127.0.0.1:{port}")], poke_interval=0.2, end_at=_in(30), timeout_s=2.0
    )
    task = asyncio.create_task(_first_event(trigger))
    while len(calls) < 2 and not task.done():  # refused at least once while nothing listens
        await asyncio.sleep(0.05)
    assert not task.done(), task.result()
    listeners.append(Listener(port))
    payload = await asyncio.wait_for(task, timeout=20)
    assert payload["status"] == "healthy"
    verdict = verdict_of_event(payload)
    assert verdict.passed and [r.status for r in verdict.results] == ["healthy"]
    assert verdict.results[0].dependency.id == f"tcp://127.0.0.1:{port}"
    # The first check was refused (a second one started); the second may already see the listener: it is
    # counted when it starts, and connects a little later.
    assert len(calls) >= 2


@pytest.mark.asyncio
async def test_a_dependency_that_never_comes_up_ends_the_wait_unhealthy_at_end_at(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = _free_port()
    calls = _counting(monkeypatch)
    end_at = datetime.now(UTC) + timedelta(seconds=1.5)
    trigger = HealthTrigger(
        specs=[_url_spec(f"tcp://127.0.0.1:{port}")], poke_interval=0.4, end_at=end_at.isoformat(), timeout_s=1.0
    )
    payload = await asyncio.wait_for(_first_event(trigger), timeout=10)
    ended = datetime.now(UTC)
    assert payload["status"] == "unhealthy"
    verdict = verdict_of_event(payload)
    assert not verdict.passed
    [result] = verdict.results
    assert (result.status, result.error_code) == ("unhealthy", "refused")
    assert ended >= end_at  # not before its end ...
    assert ended <= end_at + timedelta(seconds=1.0 + 1.0)  # ... and the last check, at end_at, is bounded
    assert len(calls) >= 3  # checked every poke interval until then


@pytest.mark.parametrize(("policy", "status"), [("allow", "healthy"), ("refuse", "unhealthy")])
@pytest.mark.asyncio
async def test_a_degraded_dependency_passes_only_where_the_policy_allows_it(
    monkeypatch: pytest.MonkeyPatch, policy: str, status: str
) -> None:
    """The trigger judges with the profile's ``degraded`` policy (a VPN with one of two tunnels UP; the check
    replaced by one that returns that result)."""
    seen: list[str] = []

    async def one_tunnel_up(specs: Any, *, timeout_s: Any = None, degraded: str = "allow") -> Verdict:
        seen.append(degraded)
        [spec] = specs
        result = HealthResult(
            status="degraded", dependency=spec.dependency, latency_ms=1.0, detail="1 of 2 tunnels UP",
            measurements={"tunnels_up": 1, "tunnels_required": 2},
        )  # fmt: skip
        return Verdict((result,), degraded=degraded)

    monkeypatch.setattr(runtime_health, "check_async", one_tunnel_up)
    spec = runtime_health.DependencySpec(
        kind="vpn_connection", id="vpn-0123abcd", tenant="acme", network_profile="vpn", options={"min_tunnels_up": 2}
    )
    trigger = HealthTrigger(specs=[spec.as_dict()], degraded=policy, poke_interval=0.1, end_at=_in(0.3))
    payload = await asyncio.wait_for(_first_event(trigger), timeout=10)
    assert payload["status"] == status
    assert payload["verdict"]["degraded_policy"] == policy
    assert set(seen) == {policy}
    assert verdict_of_event(payload).results[0].measurements == {"tunnels_up": 1, "tunnels_required": 2}


@pytest.mark.asyncio
async def test_the_event_loop_is_never_blocked_by_hanging_dependencies(listeners: list[Listener]) -> None:
    """50 dependencies that accept and never answer an HTTP GET: the checks run on their own threads, so a
    ticker on the same loop keeps ticking while they wait for their deadline."""
    hanging = Listener()
    listeners.append(hanging)
    specs = [_url_spec(f"http://127.0.0.1:{hanging.port}/health?n={n}") for n in range(50)]
    trigger = HealthTrigger(specs=specs, poke_interval=5.0, end_at=_in(0), timeout_s=1.0)
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    started = time.monotonic()
    payload = await asyncio.wait_for(_first_event(trigger), timeout=10)
    took = time.monotonic() - started
    ticking.cancel()
    assert payload["status"] == "unhealthy"
    assert {r["error_code"] for r in payload["verdict"]["results"]} == {"timeout"}
    assert took <= 1.0 + 1.0  # concurrently, within the deadline plus 1 s
    assert len(gaps) >= 10 and max(gaps) < 0.5  # the loop kept running while the checks waited


def test_serialize_round_trips() -> None:
    kwargs: dict[str, Any] = {
        "specs": [
            _url_spec("https://db.internal.example/health"),
            runtime_health.DependencySpec(
                kind="vpn_connection", id="vpn-0123abcd", tenant="acme", network_profile="vpn",
                options={"min_tunnels_up": 2}, conn_id="aws_prod", region_name="eu-west-1",
            ).as_dict(),
        ],
        "degraded": "refuse",
        "poke_interval": 30.0,
        "end_at": _in(600),
        "timeout_s": 5.0,
    }  # fmt: skip
    classpath, serialized = HealthTrigger(**kwargs).serialize()
    assert serialized == kwargs
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**serialized)
    assert isinstance(rebuilt, HealthTrigger)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert classpath == trigger_module.CLASSPATH


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"specs": [{"kind": "vpn", "id": "x"}]}, "kind 'vpn' is not one of"),
        ({"specs": [{"kind": "url", "id": "tcp://h:1", "colour": "red"}]}, "unknown key 'colour'"),
        ({"specs": [], "degraded": "maybe"}, "degraded: 'maybe'"),
        ({"specs": [], "poke_interval": 0}, "poke_interval: 0"),
        ({"specs": [], "end_at": "2026-12-08T02:00:00"}, "has no time zone"),
        ({"specs": [], "end_at": "tomorrow"}, "not an ISO 8601 time"),
        ({"specs": [], "timeout_s": -1}, "timeout_s: -1"),
    ],
)
def test_bad_arguments_are_refused_where_the_trigger_is_made(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HealthTrigger(**kwargs)


def test_an_event_without_a_verdict_is_refused() -> None:
    with pytest.raises(ValueError, match="without a verdict"):
        verdict_of_event({"status": "error", "message": "boom"})
