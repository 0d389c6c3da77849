"""Running health checks: one at a time or many at once, each bounded by a deadline, and the verdict on them.

A :class:`Check` pairs a dependency with the function that checks it (``run(timeout_s)``). The runners never
raise and never wait past the deadline: a check that raises is an ``unknown`` result naming the exception, and
one still running at the deadline is an ``unhealthy`` ``timeout`` result (its thread, a daemon, is left to
finish on its own; every check of this package bounds its own calls, so it does). Many checks run concurrently
on worker threads of their own, never on an event loop's default executor: :func:`run_checks` blocks its
caller, :func:`run_checks_async` (for triggers) awaits without ever blocking the event loop.

:class:`Verdict` says whether a set of results lets work go on: every dependency healthy, or degraded where
the profile allows it (``degraded: allow``); ``unhealthy`` and ``unknown`` never pass.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from barecount_provider.health.result import Dependency, HealthResult, Status

DEGRADED_POLICIES = ("allow", "refuse")

# How long past the deadline a runner waits for a check that is itself timing out (its own ``timeout``
# result names the phase): the runners return within ``timeout_s + GRACE_S`` and a little.
GRACE_S = 0.25


@dataclass(frozen=True)
class Check:
    """A dependency and the function that checks it: ``run(timeout_s)`` returns its result within about
    ``timeout_s`` seconds (it may raise: the runners turn that into an ``unknown`` result)."""

    dependency: Dependency
    run: Callable[[float], HealthResult]


@dataclass(frozen=True)
class Outcome:
    """What a check's body saw, before :func:`timed` makes it a result (adding the dependency and times)."""

    status: Status
    detail: str
    error_code: str | None = None
    measurements: Mapping[str, float] = field(default_factory=dict)


def timed(
    dependency: Dependency,
    body: Callable[[], Outcome | HealthResult],
    classify: Callable[[Exception], Outcome],
) -> HealthResult:
    """Runs a check's ``body`` and returns its result, timed from now; never raises.

    ``body`` returns an :class:`Outcome`, or a whole result (a network probe's, whose phase timings are kept;
    its latency becomes the whole check's). An exception ``body`` raises is turned into an outcome by
    ``classify`` (the service's errors into error codes); when ``classify`` itself fails, ``unknown``.
    """
    checked_at = datetime.now(UTC)
    started = time.monotonic()
    try:
        outcome: Outcome | HealthResult = body()
    except Exception as err:
        try:
            outcome = classify(err)
        except Exception as failure:
            outcome = Outcome("unknown", f"{type(err).__name__}: {err} (and classifying it failed: {failure!r})")
    latency_ms = (time.monotonic() - started) * 1000
    if isinstance(outcome, HealthResult):
        return replace(outcome, latency_ms=latency_ms, checked_at=checked_at)
    return HealthResult(
        status=outcome.status,
        dependency=dependency,
        latency_ms=latency_ms,
        detail=outcome.detail,
        error_code=outcome.error_code,
        checked_at=checked_at,
        measurements=outcome.measurements,
    )


def _timed_out(dependency: Dependency, timeout_s: float, started: float, checked_at: datetime, why: str) -> HealthResult:
    return HealthResult(
        status="unhealthy",
        dependency=dependency,
        latency_ms=max(0.0, (time.monotonic() - started) * 1000),
        detail=f"{why} within the {timeout_s:g} s deadline",
        error_code="timeout",
        checked_at=checked_at,
    )


def _call(check: Check, timeout_s: float) -> HealthResult:
    """``check.run(timeout_s)``; an exception, or anything but a result, is an ``unknown`` result."""
    checked_at = datetime.now(UTC)
    started = time.monotonic()
    try:
        result = check.run(timeout_s)
        if not isinstance(result, HealthResult):
            raise TypeError(f"the check returned {type(result).__name__}, not a HealthResult")
        return result
    except Exception as err:
        return HealthResult(
            status="unknown",
            dependency=check.dependency,
            latency_ms=(time.monotonic() - started) * 1000,
            detail=f"the check failed: {type(err).__name__}: {err}",
            checked_at=checked_at,
        )


class _Batch:
    """Runs ``checks`` on up to ``max_threads`` daemon worker threads under one shared deadline, handing each
    result to ``deliver(index, result)`` as it comes. A check that has not started when the deadline passes is
    not started at all (a ``timeout`` result)."""

    def __init__(
        self,
        checks: Sequence[Check],
        timeout_s: float,
        max_threads: int,
        deliver: Callable[[int, HealthResult], None],
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 (got {timeout_s!r})")
        if max_threads < 1:
            raise ValueError(f"max_threads must be >= 1 (got {max_threads!r})")
        self.checks = list(checks)
        self.timeout_s = timeout_s
        self.deliver = deliver
        self.started = time.monotonic()
        self.checked_at = datetime.now(UTC)
        self.deadline = self.started + timeout_s
        self._next = 0
        self._lock = threading.Lock()
        self.threads = min(max_threads, len(self.checks))

    def start(self) -> None:
        for number in range(self.threads):
            threading.Thread(target=self._work, name=f"barecount-health-{number}", daemon=True).start()

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= len(self.checks):
                return None
            index, self._next = self._next, self._next + 1
            return index

    def _work(self) -> None:
        while (index := self._take()) is not None:
            check = self.checks[index]
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                result = _timed_out(check.dependency, self.timeout_s, self.started, self.checked_at, "not started")
            else:
                result = _call(check, remaining)
            try:
                self.deliver(index, result)
            except Exception:  # pragma: no cover - a receiver gone (an event loop closed): nobody waits
                pass

    def overdue(self, index: int) -> HealthResult:
        """The result of a check still running (or not started) past the deadline."""
        with self._lock:
            why = "no answer" if index < self._next else "not started"
        return _timed_out(self.checks[index].dependency, self.timeout_s, self.started, self.checked_at, why)


def run_check(check: Check, timeout_s: float) -> HealthResult:
    """Runs one check in a thread and returns its result within about ``timeout_s`` seconds; never raises."""
    return run_checks([check], timeout_s=timeout_s, max_threads=1)[0]


def run_checks(checks: Sequence[Check], *, timeout_s: float, max_threads: int = 256) -> list[HealthResult]:
    """Runs ``checks`` concurrently (at most ``max_threads`` at a time, all under one deadline of
    ``timeout_s`` seconds) and returns their results in the order of ``checks``, within about
    ``timeout_s + GRACE_S`` seconds; never raises for a check (``ValueError`` for a bad ``timeout_s`` or
    ``max_threads``)."""
    results: list[HealthResult | None] = [None] * len(checks)
    done = threading.Condition()
    remaining = [len(checks)]

    def deliver(index: int, result: HealthResult) -> None:
        with done:
            results[index] = result
            remaining[0] -= 1
            done.notify_all()

    batch = _Batch(checks, timeout_s, max_threads, deliver)
    if not checks:
        return []
    batch.start()
    until = batch.deadline + GRACE_S
    with done:
        while remaining[0] and (left := until - time.monotonic()) > 0:
            done.wait(left)
        return [result if result is not None else batch.overdue(index) for index, result in enumerate(results)]


async def run_checks_async(checks: Sequence[Check], *, timeout_s: float, max_threads: int = 256) -> list[HealthResult]:
    """:func:`run_checks` for an event loop (a trigger): the checks run on worker threads of their own (never
    the loop's default executor) and hand their results back with ``call_soon_threadsafe``, so the loop never
    waits on one; returns within about ``timeout_s + GRACE_S`` seconds, results in the order of ``checks``."""
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[HealthResult]] = [loop.create_future() for _ in checks]

    def settle(future: asyncio.Future[HealthResult], result: HealthResult) -> None:
        if not future.done():  # cancelled, or already overdue
            future.set_result(result)

    def deliver(index: int, result: HealthResult) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(settle, futures[index], result)

    batch = _Batch(checks, timeout_s, max_threads, deliver)
    if not checks:
        return []
    # Even starting hundreds of threads takes the loop's time: one thread starts them.
    threading.Thread(target=batch.start, name="barecount-health-start", daemon=True).start()
    try:
        await asyncio.wait(futures, timeout=max(0.0, batch.deadline + GRACE_S - time.monotonic()))
    finally:
        for future in futures:
            if not future.done():
                future.cancel()
    return [
        future.result() if future.done() and not future.cancelled() else batch.overdue(index)
        for index, future in enumerate(futures)
    ]


@dataclass(frozen=True)
class Verdict:
    """Whether ``results`` let work go on under the profile's ``degraded`` policy (``allow`` or ``refuse``)."""

    results: tuple[HealthResult, ...]
    degraded: str = "allow"

    def __post_init__(self) -> None:
        if self.degraded not in DEGRADED_POLICIES:
            raise ValueError(f"degraded policy {self.degraded!r} is not one of {', '.join(DEGRADED_POLICIES)}")
        object.__setattr__(self, "results", tuple(self.results))

    @property
    def blocking(self) -> tuple[HealthResult, ...]:
        """The results that stop work: unhealthy, unknown, and degraded when the policy refuses it."""
        allowed = ("healthy", "degraded") if self.degraded == "allow" else ("healthy",)
        return tuple(result for result in self.results if result.status not in allowed)

    @property
    def passed(self) -> bool:
        """Every dependency healthy, or degraded where allowed (no results at all: passed)."""
        return not self.blocking

    def message(self) -> str:
        """One line: what was checked and, when it did not pass, each blocking dependency (kind, id, tenant,
        network profile, status, error code, detail)."""
        if self.passed:
            degraded = sum(result.status == "degraded" for result in self.results)
            tail = f" ({degraded} degraded, allowed)" if degraded else ""
            return f"health: {len(self.results)} dependencies checked, none blocking{tail}"
        parts = [_describe(result) for result in self.blocking]
        refused = " (degraded: refuse)" if any(r.status == "degraded" for r in self.blocking) else ""
        return (
            f"health: {len(self.blocking)} of {len(self.results)} dependencies not healthy{refused}: "
            + "; ".join(parts)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "degraded_policy": self.degraded,
            "results": [result.as_dict() for result in self.results],
        }


def _describe(result: HealthResult) -> str:
    dependency = result.dependency
    return (
        f"{dependency.kind} {dependency.id!r} (tenant {dependency.tenant or '-'}, network profile "
        f"{dependency.network_profile or '-'}) is {result.status}, error_code {result.error_code or 'none'}: "
        f"{result.detail}"
    )
