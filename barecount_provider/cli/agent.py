"""``barecount agent heartbeat``: an on-premise agent's heartbeat loop, through Airflow's API server.

Every ``--every`` it sends ``POST <api-url>/barecount/agents/<name>/heartbeat`` (version, capabilities) with a
bearer token from Airflow's ``POST <api-url>/auth/token`` (user and password from ``--username``/``--password``
or ``BARECOUNT_API_USERNAME``/``BARECOUNT_API_PASSWORD``; or a token from ``--token``/``BARECOUNT_API_TOKEN``).
A 401 fetches a new token once and sends again. A heartbeat that fails (the server unreachable, a 5xx, a
refusal) is retried after an exponential backoff (1 s, 2 s, 4 s ... with jitter, never longer than
``--every``); between heartbeats the loop waits on an event, never spins; SIGTERM or SIGINT stop it at once
(exit 0). The standard library only (``urllib``), like ``barecount pools``.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from barecount_provider.cli.common import fail, seconds
from barecount_provider.pools import (  # the exit codes of `barecount pools`, and its client of the API
    EXIT_AUTH,  # the user, password or token was refused (401), or the user may not send heartbeats (403)
    EXIT_FAILED,  # the API refused the heartbeat (--once)
    EXIT_USAGE,
    AirflowApi,
    ApiError,
    Credentials,
)

BACKOFF_BASE_S = 1.0
MIN_EVERY_S, MAX_EVERY_S = 1.0, 86400.0
MAX_VERSION, MAX_CAPABILITIES, MAX_CAPABILITY = 64, 32, 64  # as the API bounds them (health/records.py)
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # policy.TENANT_NAME: the agents' names follow it
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")
_UNITS = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


# ------------------------------------------------------------------------------------------- option types


def duration(text: str) -> float:
    """An argparse type: ``30s``, ``5m``, ``1h`` or seconds, from 1 s to 24 h."""
    match = _DURATION.match(text)
    value = float(match.group(1)) * _UNITS[match.group(2)] if match else None
    if value is None or not MIN_EVERY_S <= value <= MAX_EVERY_S:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration from 1s to 24h (such as 30s, 5m, 1h)")
    return value


def agent_name(text: str) -> str:
    if not _NAME.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an agent name matching {_NAME.pattern} (as the policy lists it)")
    return text


def _bounded_text(limit: int) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text or len(text) > limit or "\x00" in text:
            raise argparse.ArgumentTypeError(f"{text[:80]!r} is not a text of 1 to {limit} characters")
        return text

    return parse


# ------------------------------------------------------------------------------------------------ client


class HeartbeatError(Exception):
    """A heartbeat that was not recorded. ``retry``: worth sending again later; ``exit_code`` for ``--once``."""

    def __init__(self, message: str, *, exit_code: int, retry: bool) -> None:
        super().__init__(message)
        self.exit_code, self.retry = exit_code, retry


class HeartbeatClient:
    """Sends one agent's heartbeats to the API server at ``api_url`` (its ``[api] base_url``), with the
    ``barecount pools`` client of Airflow's API (:class:`~barecount_provider.pools.AirflowApi`: the token from
    ``/auth/token``, messages that never contain the password or the token)."""

    def __init__(
        self,
        api_url: str,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not token and not (username and password):
            raise ValueError(
                "agent heartbeat: no credentials: give --username and --password (or BARECOUNT_API_USERNAME and "
                "BARECOUNT_API_PASSWORD), or --token (or BARECOUNT_API_TOKEN)"
            )
        try:
            self.api = AirflowApi(api_url, Credentials(token=token, username=username, password=password), timeout=timeout)
        except ApiError:
            raise ValueError(
                f"agent heartbeat: --api-url {api_url!r} is not an http(s) URL (such as http://localhost:8080)"
            ) from None
        self.api_url = self.api.base_url
        self._renewable = not token

    def _call(self, what: Callable[[], Any]) -> Any:
        """``what()``, its :class:`ApiError` as a :class:`HeartbeatError` (worth retrying unless the
        credentials were refused or missing)."""
        try:
            return what()
        except ApiError as err:
            retry = err.exit_code not in (EXIT_AUTH, EXIT_USAGE)
            raise HeartbeatError(str(err), exit_code=err.exit_code, retry=retry) from None

    def login(self) -> str:
        """A bearer token: the given one, or one from ``POST /auth/token``."""
        return str(self._call(self.api.login))

    def send(self, name: str, *, version: str | None, capabilities: Sequence[str]) -> dict[str, Any]:
        """Send one heartbeat; the stored row. A 401 fetches a new token once (an expired one) and sends again."""
        path = f"/barecount/agents/{urllib.parse.quote(name)}/heartbeat"
        body = {"version": version, "capabilities": list(capabilities)}
        status, payload = self._call(lambda: self.api.send("POST", path, body, token=self.login()))
        if status == 401 and self._renewable:
            token = self._call(self.api.fresh_token)
            status, payload = self._call(lambda: self.api.send("POST", path, body, token=token))
        if status == 200 and isinstance(payload, dict):
            return payload
        what = f"POST {path}: {status}"
        if status in (401, 403):
            # 403: the user may not send heartbeats, or the policy does not list the agent (yet): retried
            raise HeartbeatError(f"{what}: {self.api.detail(payload)}", exit_code=EXIT_AUTH, retry=status == 403 or self._renewable)
        if status == 404:
            raise HeartbeatError(
                f"{what}: is {self.api_url} Airflow's API server with BareCount's plugin ([api] base_url)?", exit_code=EXIT_FAILED, retry=True
            )
        raise HeartbeatError(f"{what}: {self.api.detail(payload)}", exit_code=EXIT_FAILED, retry=status >= 500 or status in (408, 429))


# -------------------------------------------------------------------------------------------------- loop


def backoff(failures: int, cap: float, rng: random.Random) -> float:
    """Seconds to wait after ``failures`` failures in a row: ``BACKOFF_BASE_S * 2**(failures - 1)``, at most
    ``cap``, with jitter: between half of it and all of it (so agents that failed together spread out, and
    each wait is at least as long as the one before until the cap)."""
    ceiling = min(cap, BACKOFF_BASE_S * 2.0 ** min(failures - 1, 62))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def heartbeat_loop(
    client: HeartbeatClient,
    name: str,
    *,
    version: str | None,
    capabilities: Sequence[str],
    every: float,
    once: bool,
    wait: Callable[[float], bool],
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Send heartbeats until ``wait`` says stop (it waits the seconds given; True: stop now). ``once``: one
    heartbeat, its exit status. Otherwise runs until stopped (0), or until the credentials are refused (4)."""
    rng = rng or random.Random()
    failures = 0
    next_at = clock()
    while True:
        try:
            row = client.send(name, version=version, capabilities=capabilities)
        except HeartbeatError as err:
            print(f"barecount agent heartbeat: {name}: {err}", file=sys.stderr, flush=True)
            if once:
                return err.exit_code
            if not err.retry:
                return err.exit_code
            failures += 1
            if wait(backoff(failures, every, rng)):
                return 0
            next_at = clock()
            continue
        if once or failures:
            tenants = ", ".join(row.get("tenants") or []) or "no tenant"
            print(f"barecount agent heartbeat: {name}: recorded for {tenants} (beats {row.get('beats')})", flush=True)
        failures = 0
        if once:
            return 0
        next_at += every
        if wait(max(0.0, next_at - clock())):
            return 0


# --------------------------------------------------------------------------------------------- command


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``barecount agent heartbeat``."""
    agent = sub.add_parser(
        "agent",
        help="an on-premise agent's heartbeats to Airflow's API server",
        description="Exit codes (heartbeat): 0 stopped by SIGTERM/SIGINT, or --once recorded; 1 the API refused "
        "the heartbeat (--once); 2 usage; 3 the API server unreachable (--once); 4 the user, password or token "
        "refused, or (--once) no permission to send heartbeats or an agent the policy does not list.",
    )
    agent_sub = agent.add_subparsers(dest="agent_command", metavar="SUBCOMMAND", required=True)
    beat = agent_sub.add_parser(
        "heartbeat",
        help="send the agent's heartbeat every --every (retried with backoff), until SIGTERM/SIGINT",
        description="POST <api-url>/barecount/agents/<name>/heartbeat every --every, with a token from "
        "POST <api-url>/auth/token. The agent's tenants come from the policy, never from here.",
    )
    beat.add_argument("--name", required=True, type=agent_name, help="the agent's name, as the policy lists it")
    beat.add_argument("--every", type=duration, default=30.0, help="between heartbeats: 30s (default), 5m, 1h, or seconds")
    beat.add_argument("--api-url", help="the Airflow API server's URL ([api] base_url); env BARECOUNT_API_URL")
    beat.add_argument("--version", dest="agent_version", type=_bounded_text(MAX_VERSION), help="the agent's version")
    beat.add_argument(
        "--capability", dest="capabilities", action="append", default=[], type=_bounded_text(MAX_CAPABILITY),
        help=f"what the agent can do (repeat; at most {MAX_CAPABILITIES})",
    )  # fmt: skip
    beat.add_argument("--once", action="store_true", help="send one heartbeat and exit with its outcome")
    beat.add_argument("--username", help="user exchanged for a token at /auth/token; env BARECOUNT_API_USERNAME")
    beat.add_argument("--password", help="its password (prefer the env var: arguments show in `ps`); env BARECOUNT_API_PASSWORD")
    beat.add_argument("--token", help="a bearer token instead of a user; env BARECOUNT_API_TOKEN")
    beat.add_argument("--timeout", type=seconds, default=10.0, help="seconds for each HTTP call (default 10)")
    beat.set_defaults(func=cmd_heartbeat)


def cmd_heartbeat(args: argparse.Namespace) -> int:
    url = args.api_url or os.environ.get("BARECOUNT_API_URL", "")
    if not url:
        return fail("barecount agent heartbeat", "no API URL: give --api-url or BARECOUNT_API_URL (the API server's [api] base_url)", EXIT_USAGE)
    if len(args.capabilities) > MAX_CAPABILITIES:
        return fail("barecount agent heartbeat", f"{len(args.capabilities)} --capability given; at most {MAX_CAPABILITIES}", EXIT_USAGE)
    try:
        client = HeartbeatClient(
            url,
            username=args.username or os.environ.get("BARECOUNT_API_USERNAME") or None,
            password=args.password or os.environ.get("BARECOUNT_API_PASSWORD") or None,
            token=args.token or os.environ.get("BARECOUNT_API_TOKEN") or None,
            timeout=args.timeout,
        )
    except ValueError as err:
        return fail("barecount", err, EXIT_USAGE)
    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGTERM, signal.SIGINT):
            previous[number] = signal.signal(number, lambda *_: stop.set())
    try:
        return heartbeat_loop(
            client,
            args.name,
            version=args.agent_version,
            capabilities=args.capabilities,
            every=args.every,
            once=args.once,
            wait=stop.wait,
        )
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
