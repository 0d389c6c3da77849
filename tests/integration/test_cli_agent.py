"""``barecount agent heartbeat`` (barecount_provider/cli/agent.py) against a real HTTP server on 127.0.0.1: a
small standard-library server in a thread that plays Airflow's ``/auth/token`` and BareCount's heartbeat
endpoint, and records every request; and against a closed port (nothing listens). The waits between
heartbeats and retries are injected (no test sleeps). Option checks: tests/unit/test_cli_agent.py; the real
endpoint: tests/unit/test_api_health.py."""

from __future__ import annotations

import json
import random
import signal
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from barecount_provider import cli
from barecount_provider.cli import agent

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-pa55word"


class FakeApi:
    """What the server answers and what it saw: tokens ``t1``, ``t2``... one per login; ``refuse`` holds tokens
    the heartbeat endpoint answers 401 (expired), ``status`` forces the heartbeat's answer."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None, dict[str, Any]]] = []  # (path, Authorization, body)
        self.logins = 0
        self.refuse: set[str] = set()
        self.status: int | None = None
        self.beats = 0

    def handle(self, path: str, authorization: str | None, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.requests.append((path, authorization, body))
        if path == "/auth/token":
            if body != {"username": "agent-svc", "password": PASSWORD}:
                return 401, {"detail": "Invalid credentials"}
            self.logins += 1
            return 201, {"access_token": f"t{self.logins}"}
        if path.startswith("/barecount/agents/"):
            token = (authorization or "").removeprefix("Bearer ")
            if not token or token in self.refuse:
                return 401, {"detail": "Not authenticated"}
            if self.status is not None:
                return self.status, {"detail": "Agent `dc1-agent` is not listed in the tenant policy"}
            self.beats += 1
            name = path.split("/")[3]
            return 200, {"name": name, "tenants": ["acme"], "version": body.get("version"), "capabilities": body.get("capabilities"), "seen_at": "2026-12-08T00:00:00+00:00", "beats": self.beats}
        return 404, {"detail": "Not Found"}


@pytest.fixture
def api() -> Iterator[tuple[str, FakeApi]]:
    fake = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            status, answer = fake.handle(self.path, self.headers.get("Authorization"), body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BARECOUNT_API_USERNAME", "agent-svc")
    monkeypatch.setenv("BARECOUNT_API_PASSWORD", PASSWORD)
    for name in ("BARECOUNT_API_TOKEN", "BARECOUNT_API_URL"):
        monkeypatch.delenv(name, raising=False)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Waits:
    """An injected wait: records the seconds asked, says stop after ``limit`` waits."""

    def __init__(self, limit: int) -> None:
        self.asked: list[float] = []
        self.limit = limit

    def __call__(self, seconds: float) -> bool:
        self.asked.append(seconds)
        return len(self.asked) >= self.limit


def test_once_gets_a_token_and_sends_the_heartbeat_with_it(api: Any, credentials: None, capsys: pytest.CaptureFixture[str]) -> None:
    url, fake = api
    argv = ["agent", "heartbeat", "--name", "dc1-agent", "--api-url", url, "--version", "1.4.2", "--capability", "jdbc", "--capability", "sftp", "--once"]
    assert cli.main(argv) == 0
    assert fake.requests == [
        ("/auth/token", None, {"username": "agent-svc", "password": PASSWORD}),
        ("/barecount/agents/dc1-agent/heartbeat", "Bearer t1", {"version": "1.4.2", "capabilities": ["jdbc", "sftp"]}),
    ]
    captured = capsys.readouterr()
    assert captured.out.strip() == "barecount agent heartbeat: dc1-agent: recorded for acme (beats 1)"
    assert PASSWORD not in captured.out + captured.err


def test_the_loop_reuses_its_token_and_keeps_the_period(api: Any) -> None:
    url, fake = api
    client = agent.HeartbeatClient(url, username="agent-svc", password=PASSWORD)
    now = [100.0]

    def clock() -> float:
        now[0] += 0.25  # each heartbeat takes a quarter of a second
        return now[0]

    class Passing(Waits):  # the time waited passes
        def __call__(self, seconds: float) -> bool:
            now[0] += seconds
            return super().__call__(seconds)

    waits = Passing(limit=3)
    assert agent.heartbeat_loop(client, "dc1-agent", version=None, capabilities=[], every=30.0, once=False, wait=waits, clock=clock) == 0
    assert fake.logins == 1 and fake.beats == 3
    assert [auth for path, auth, _ in fake.requests if path != "/auth/token"] == ["Bearer t1"] * 3
    assert all(29.0 <= seconds <= 30.0 for seconds in waits.asked), waits.asked  # the period, less the time spent


def test_a_401_fetches_a_new_token_once_and_sends_again(api: Any) -> None:
    url, fake = api
    client = agent.HeartbeatClient(url, username="agent-svc", password=PASSWORD)
    assert client.send("dc1-agent", version=None, capabilities=[])["beats"] == 1
    fake.refuse.add("t1")  # expired
    assert client.send("dc1-agent", version=None, capabilities=[])["beats"] == 2
    paths = [(path, auth) for path, auth, _ in fake.requests]
    assert paths == [
        ("/auth/token", None),
        ("/barecount/agents/dc1-agent/heartbeat", "Bearer t1"),
        ("/barecount/agents/dc1-agent/heartbeat", "Bearer t1"),
        ("/auth/token", None),
        ("/barecount/agents/dc1-agent/heartbeat", "Bearer t2"),
    ]
    fake.refuse.add("t2")
    fake.refuse.add("t3")  # refused again after the new token: not a third login
    with pytest.raises(agent.HeartbeatError, match="401") as err:
        client.send("dc1-agent", version=None, capabilities=[])
    assert err.value.exit_code == agent.EXIT_AUTH and fake.logins == 3


def test_a_server_that_is_down_is_retried_with_growing_capped_jittered_waits(capsys: pytest.CaptureFixture[str]) -> None:
    client = agent.HeartbeatClient(f"http://127.0.0.1:{_closed_port()}", username="agent-svc", password=PASSWORD, timeout=2.0)
    waits = Waits(limit=9)
    assert agent.heartbeat_loop(client, "dc1-agent", version=None, capabilities=[], every=30.0, once=False, wait=waits, rng=random.Random(7)) == 0
    asked = waits.asked
    assert len(asked) == 9
    # 1, 2, 4, 8, 16 s, then the cap (--every, 30 s), each between half and all of it
    for n, seconds in enumerate(asked):
        ceiling = min(30.0, 2.0**n)
        assert ceiling / 2 <= seconds <= ceiling, (n, asked)
    assert all(later >= earlier for earlier, later in zip(asked[:6], asked[1:6], strict=False)), asked
    assert max(asked) <= 30.0 and len(set(asked)) == len(asked)  # jittered: no two the same
    err = capsys.readouterr().err
    assert err.count("cannot reach the Airflow API") == 9 and PASSWORD not in err


def test_once_against_a_server_that_is_down_exits_3(credentials: None, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    assert cli.main(["agent", "heartbeat", "--name", "dc1-agent", "--api-url", url, "--once", "--timeout", "2"]) == 3
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("barecount agent heartbeat: dc1-agent: cannot reach the Airflow API at http://127.0.0.1:")


def test_a_refused_password_stops_the_loop_with_4_and_never_echoes_it(api: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    url, fake = api
    monkeypatch.setenv("BARECOUNT_API_USERNAME", "agent-svc")
    monkeypatch.setenv("BARECOUNT_API_PASSWORD", "wrong-" + PASSWORD)
    assert cli.main(["agent", "heartbeat", "--name", "dc1-agent", "--api-url", url]) == 4
    captured = capsys.readouterr()
    assert "POST /auth/token: the API refused user 'agent-svc' (401): check the user name and password" in captured.err
    assert PASSWORD not in captured.err + captured.out and fake.beats == 0


def test_an_unlisted_agent_is_retried_and_once_exits_4(api: Any, credentials: None, capsys: pytest.CaptureFixture[str]) -> None:
    url, fake = api
    fake.status = 403
    assert cli.main(["agent", "heartbeat", "--name", "dc1-agent", "--api-url", url, "--once"]) == 4
    assert "403: Agent `dc1-agent` is not listed in the tenant policy" in capsys.readouterr().err
    client = agent.HeartbeatClient(url, username="agent-svc", password=PASSWORD)
    waits = Waits(limit=2)
    assert agent.heartbeat_loop(client, "dc1-agent", version=None, capabilities=[], every=30.0, once=False, wait=waits) == 0
    assert len(waits.asked) == 2 and waits.asked[0] <= 1.0  # retried with backoff, the policy may list it later


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_sigint_stops_the_loop_cleanly(api: Any, credentials: None, signum: int) -> None:
    """The command installs SIGTERM and SIGINT handlers that end the wait at once (exit 0), and restores the
    previous handlers."""
    url, fake = api
    before = signal.getsignal(signum)
    main = threading.main_thread().ident
    assert main is not None
    # to the main thread, as the kernel delivers a `kill` to the command's one thread
    timer = threading.Timer(0.5, lambda: signal.pthread_kill(main, signum))
    timer.start()
    try:
        assert cli.main(["agent", "heartbeat", "--name", "dc1-agent", "--api-url", url, "--every", "1h"]) == 0
    finally:
        timer.cancel()
    assert fake.beats == 1 and signal.getsignal(signum) is before
