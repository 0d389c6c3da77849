"""Fixtures for system tests: one real Airflow stack on loopback per test session.

The stack serves the example DAGs of ``dags/`` and the system tests' own DAGs, with BareCount's StatsD sink
pointed at a UDP socket the tests own, and its OTLP metric sink pointed at a port that refuses connections
(a sink that is down must not hurt a task, and its failures must reach the sinks that work).
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .stack import AirflowStack

SYSTEM_DAGS = Path(__file__).resolve().parent / "dags"
EXAMPLE_DAGS = Path(__file__).resolve().parents[2] / "dags"


class UdpCollector:
    """A real UDP socket on loopback that keeps every StatsD line it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._senders: list[tuple[tuple[str, int], str]] = []  # (sender's address, line)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, sender = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            lines = data.decode(errors="replace").splitlines()
            self._senders.extend((sender, line) for line in lines)
            self.lines.extend(lines)

    def datagrams(self) -> list[tuple[tuple[str, int], str]]:
        """Every line received so far with the address (host, port) of the socket that sent it."""
        return list(self._senders)

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 15.0) -> list[str]:
        """The lines received so far once ``predicate`` holds for them (a handed-off try's points are sent
        by the scheduler's forwarder, up to a round after its event is written); as they are at ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            lines = list(self.lines)
            if predicate(lines) or time.monotonic() > deadline:
                return lines
            time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _refused_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


@pytest.fixture(scope="session")
def statsd_collector() -> Iterator[UdpCollector]:
    collector = UdpCollector()
    yield collector
    collector.close()


def _checkpoint_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


CHECKPOINT_KEY = _checkpoint_key()  # signs the evidence checkpoints of the stack's scheduler side


def checkpoint_env(key: Any) -> dict[str, str]:
    """The checkpoint key in an Airflow connection (env var) and its public key, for the stack's processes."""
    import base64
    import json

    from cryptography.hazmat.primitives import serialization

    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        "AIRFLOW_CONN_BARECOUNT_CHECKPOINT": json.dumps({"conn_type": "generic", "password": base64.b64encode(raw).decode()}),
        "AIRFLOW__BARECOUNT__EVIDENCE_CHECKPOINT_CONN_ID": "barecount_checkpoint",
        "AIRFLOW__BARECOUNT__EVIDENCE_CHECKPOINT_PUBLIC_KEY": base64.b64encode(public).decode(),
    }


HEALTH_PORT_TOKEN = "__HEALTH_PORT__"


def system_policy(directory: Path, health_port: int) -> Path:
    """tests/system/policy.yaml written into ``directory`` with the health tenant's loopback port filled in
    (``__HEALTH_PORT__``: the TCP service test_health_real_run.py starts and stops)."""
    text = Path(__file__).with_name("policy.yaml").read_text()
    path = directory / "policy.yaml"
    path.write_text(text.replace(HEALTH_PORT_TOKEN, str(health_port)))
    return path


@pytest.fixture(scope="session")
def health_port() -> int:
    """A free loopback port: tenant netops's on_prem profile relies on a TCP service there (none listens
    until test_health_real_run.py starts one)."""
    return _refused_port()


@pytest.fixture(scope="session")
def airflow_stack(
    tmp_path_factory: pytest.TempPathFactory, statsd_collector: UdpCollector, health_port: int
) -> Iterator[AirflowStack]:
    """api-server + scheduler + dag-processor (LocalExecutor, SQLite) serving the example and system DAGs.

    AIRFLOW_HOME is a fresh directory under pytest's temporary directory; component logs are in
    ``<home>/logs-<component>.log``, task logs under ``<home>/logs``, BareCount's file sink under
    ``<home>/barecount/telemetry``.
    """
    home = tmp_path_factory.mktemp("airflow-home")
    dags = tmp_path_factory.mktemp("dags")
    for folder in (EXAMPLE_DAGS, SYSTEM_DAGS):
        for path in folder.glob("*.py"):
            shutil.copy(path, dags / path.name)
    extra_env = {
        "AIRFLOW__BARECOUNT__STATSD_ON": "True",
        "AIRFLOW__BARECOUNT__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__BARECOUNT__STATSD_PORT": str(statsd_collector.port),
        "AIRFLOW__BARECOUNT__OTLP_METRICS_ON": "True",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"http://127.0.0.1:{_refused_port()}/v1/metrics",
        "AIRFLOW__BARECOUNT__IN_FLIGHT_INTERVAL_SECONDS": "1",
        "AIRFLOW__BARECOUNT__SECRET_KEY": "system-test-secret-key",
        "AIRFLOW__BARECOUNT__POLICY_PATH": str(system_policy(tmp_path_factory.mktemp("policy"), health_port)),
        # HITL timeouts are swept by the scheduler at this interval (default 15 s)
        "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "2",
    }
    extra_env.update(checkpoint_env(CHECKPOINT_KEY))
    with AirflowStack(home=home, dags_folder=dags, extra_env=extra_env, triggerer=True) as stack:
        yield stack
