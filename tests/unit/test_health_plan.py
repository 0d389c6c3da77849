"""Running health checks (barecount_provider/health/plan.py): order, concurrency, deadlines, exceptions, the
async runner's independence from the event loop, and the verdict."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from barecount_provider.health.plan import Check, Verdict, run_check, run_checks, run_checks_async
from barecount_provider.health.result import Dependency, HealthResult


def _dependency(index: int | str, kind: str = "url") -> Dependency:
    return Dependency(kind=kind, id=f"dep-{index}", tenant="acme", network_profile="vpn")


def _result(dependency: Dependency, status: str = "healthy", error_code: str | None = None, detail: str = "ok"):
    return HealthResult(status=status, dependency=dependency, latency_ms=1.0, detail=detail, error_code=error_code)


def _sleeping(index: int, seconds: float) -> Check:
    dependency = _dependency(index)

    def run(timeout_s: float) -> HealthResult:
        time.sleep(seconds)
        return _result(dependency)

    return Check(dependency, run)


def _hanging(index: int, release: threading.Event) -> Check:
    """A check that ignores its timeout until ``release`` is set (the test sets it at its end)."""
    dependency = _dependency(index)

    def run(timeout_s: float) -> HealthResult:
        release.wait(60)
        return _result(dependency)

    return Check(dependency, run)


@pytest.fixture
def release():
    event = threading.Event()
    yield event
    event.set()


def test_results_come_back_in_input_order_whatever_order_they_finish_in():
    checks = [_sleeping(index, seconds=0.05 * (5 - index)) for index in range(5)]
    results = run_checks(checks, timeout_s=5)
    assert [result.dependency.id for result in results] == [f"dep-{index}" for index in range(5)]
    assert all(result.status == "healthy" for result in results)


def test_two_hundred_slow_checks_run_concurrently_within_the_deadline():
    checks = [_sleeping(index, seconds=0.5) for index in range(200)]
    started = time.monotonic()
    results = run_checks(checks, timeout_s=3)
    assert time.monotonic() - started < 3 + 1
    assert [result.status for result in results] == ["healthy"] * 200


def test_an_exception_is_an_unknown_result_naming_it():
    dependency = _dependency("boom")

    def run(timeout_s: float) -> HealthResult:
        raise RuntimeError("the SDK fell over")

    result = run_check(Check(dependency, run), timeout_s=2)
    assert result.status == "unknown"
    assert result.error_code is None
    assert result.dependency == dependency
    assert "RuntimeError: the SDK fell over" in result.detail


def test_a_check_that_returns_something_else_is_unknown():
    result = run_check(Check(_dependency("odd"), lambda timeout_s: "healthy"), timeout_s=2)  # type: ignore[arg-type,return-value]
    assert result.status == "unknown"
    assert "not a HealthResult" in result.detail


def test_a_check_overrunning_its_deadline_is_unhealthy_timeout_and_the_caller_does_not_wait(release):
    started = time.monotonic()
    result = run_check(_hanging(1, release), timeout_s=0.5)
    assert time.monotonic() - started < 0.5 + 1
    assert result.status == "unhealthy"
    assert result.error_code == "timeout"
    assert result.dependency.id == "dep-1"
    assert "0.5 s deadline" in result.detail


def test_the_check_is_given_the_time_that_remains():
    given: list[float] = []

    def run(timeout_s: float) -> HealthResult:
        given.append(timeout_s)
        return _result(_dependency("t"))

    run_check(Check(_dependency("t"), run), timeout_s=4)
    assert 3 < given[0] <= 4


def test_checks_that_cannot_start_before_the_deadline_are_timeouts_not_started(release):
    checks = [_hanging(0, release), _sleeping(1, 0)]
    results = run_checks(checks, timeout_s=0.3, max_threads=1)
    assert [result.error_code for result in results] == ["timeout", "timeout"]
    assert "no answer" in results[0].detail
    assert "not started" in results[1].detail


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="timeout_s"):
        run_checks([_sleeping(0, 0)], timeout_s=0)
    with pytest.raises(ValueError, match="max_threads"):
        run_checks([_sleeping(0, 0)], timeout_s=1, max_threads=0)
    assert run_checks([], timeout_s=1) == []


class _RefusingExecutor(ThreadPoolExecutor):
    """An event loop's default executor that fails the test if anything is submitted to it."""

    submitted = 0

    def submit(self, *args, **kwargs):  # type: ignore[override]
        type(self).submitted += 1
        raise AssertionError("run_checks_async used the event loop's default executor")


def test_run_checks_async_never_blocks_the_loop_nor_uses_its_default_executor(release):
    checks = [
        _hanging(index, release) if index % 4 == 0 else _sleeping(index, seconds=0.05 if index % 4 == 1 else 0)
        for index in range(500)
    ]
    ticks: list[float] = []

    async def main() -> tuple[list[HealthResult], float]:
        asyncio.get_running_loop().set_default_executor(_RefusingExecutor(max_workers=1))
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                ticks.append(time.monotonic())
                await asyncio.sleep(0.02)

        ticking = asyncio.create_task(ticker())
        started = time.monotonic()
        results = await run_checks_async(checks, timeout_s=1.0)
        elapsed = time.monotonic() - started
        stop.set()
        await ticking
        return results, elapsed

    results, elapsed = asyncio.run(main())
    assert elapsed < 1.0 + 1
    assert _RefusingExecutor.submitted == 0
    assert len(results) == 500
    assert [result.dependency.id for result in results] == [f"dep-{index}" for index in range(500)]
    for index, result in enumerate(results):
        assert (result.status, result.error_code) == (("unhealthy", "timeout") if index % 4 == 0 else ("healthy", None))
    # The loop kept running while the checks ran: the ticker ticked all along, with no long gap.
    assert len(ticks) >= 10
    assert max(later - earlier for earlier, later in zip(ticks, ticks[1:], strict=False)) < 0.5


def test_run_checks_async_turns_an_exception_into_unknown():
    def run(timeout_s: float) -> HealthResult:
        raise OSError("no route")

    results = asyncio.run(run_checks_async([Check(_dependency("x"), run), _sleeping(1, 0)], timeout_s=2))
    assert [result.status for result in results] == ["unknown", "healthy"]
    assert "OSError: no route" in results[0].detail


# ---------------------------------------------------------------------------------------------- Verdict


def test_all_healthy_passes():
    verdict = Verdict((_result(_dependency(1)), _result(_dependency(2))))
    assert verdict.passed
    assert verdict.blocking == ()
    assert "2 dependencies checked, none blocking" in verdict.message()


def test_no_results_pass():
    assert Verdict(()).passed


def test_degraded_is_allowed_by_default_and_refused_when_the_policy_says_so():
    degraded = _result(_dependency("vpn-1", "vpn_connection"), "degraded", "tunnel_down", "1 of 2 tunnels UP")
    allowed = Verdict((degraded,), degraded="allow")
    assert allowed.passed
    assert "1 degraded, allowed" in allowed.message()
    refused = Verdict((degraded,), degraded="refuse")
    assert not refused.passed
    assert refused.blocking == (degraded,)
    message = refused.message()
    assert "vpn_connection 'dep-vpn-1'" in message
    assert "is degraded" in message and "degraded: refuse" in message


@pytest.mark.parametrize("status,error_code", [("unhealthy", "tunnel_down"), ("unknown", None)])
def test_unhealthy_and_unknown_never_pass_even_with_degraded_allowed(status, error_code):
    bad = _result(_dependency("vpn-9", "vpn_connection"), status, error_code, "both tunnels DOWN")
    verdict = Verdict((_result(_dependency(1)), bad), degraded="allow")
    assert not verdict.passed
    assert verdict.blocking == (bad,)


def test_the_message_names_each_blocking_dependency_with_its_status_and_error_code():
    bad = _result(_dependency("vpn-9", "vpn_connection"), "unhealthy", "tunnel_down", "both tunnels DOWN")
    message = Verdict((_result(_dependency(1)), bad)).message()
    for part in ("vpn_connection", "'dep-vpn-9'", "tenant acme", "network profile vpn", "unhealthy", "tunnel_down", "both tunnels DOWN"):
        assert part in message
    assert "dep-1" not in message
    assert "1 of 2 dependencies not healthy" in message


def test_as_dict_and_a_bad_policy():
    bad = _result(_dependency(2), "unhealthy", "refused", "refused")
    verdict = Verdict([_result(_dependency(1)), bad], degraded="refuse")  # type: ignore[arg-type]
    assert verdict.as_dict() == {
        "passed": False,
        "degraded_policy": "refuse",
        "results": [_r.as_dict() for _r in verdict.results],
    }
    assert isinstance(verdict.results, tuple)
    with pytest.raises(ValueError, match="'maybe' is not one of allow, refuse"):
        Verdict((), degraded="maybe")
