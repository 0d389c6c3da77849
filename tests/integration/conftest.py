"""Real servers for the integration tests: moto in server mode on 127.0.0.1, and a migrated Airflow DB.

moto listens on a free loopback port; the Airflow connection ``aws_moto`` (AIRFLOW_CONN_AWS_MOTO, JSON) points
the upstream amazon hooks at it through ``endpoint_url``. Lambda runs without Docker (moto's simple backend,
which echoes the event). moto's request recorder (``/moto-api/recorder/``) shows the requests moto received.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Before moto is imported: its request recorder reads the file path once. The directory is removed at exit.
if "MOTO_RECORDER_FILEPATH" not in os.environ:
    _recorder_dir = tempfile.mkdtemp(prefix="barecount-moto-")
    atexit.register(shutil.rmtree, _recorder_dir, True)
    os.environ["MOTO_RECORDER_FILEPATH"] = os.path.join(_recorder_dir, "requests.jsonl")

REGION = "us-east-1"
MOTO_CONN_ID = "aws_moto"
FAKE_KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


class MotoServer:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, region_name=REGION, endpoint_url=self.endpoint, **FAKE_KEYS)

    def api(self, method: str, path: str, body: Any = None) -> str:
        import requests

        response = requests.request(method, f"{self.endpoint}/moto-api/{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.text

    def start_recording(self) -> None:
        self.api("POST", "recorder/reset-recording")
        self.api("POST", "recorder/start-recording")

    def recorded_requests(self) -> list[dict[str, Any]]:
        text = self.api("GET", "recorder/download-recording")
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def moto_connection(endpoint: str) -> str:
    """The Airflow connection (``AIRFLOW_CONN_<ID>``, JSON) of the moto server at ``endpoint``."""
    return json.dumps(
        {
            "conn_type": "aws",
            "login": FAKE_KEYS["aws_access_key_id"],
            "password": FAKE_KEYS["aws_secret_access_key"],
            "extra": {"endpoint_url": endpoint, "region_name": REGION},
        }
    )


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    moto = MotoServer(f"http://{host}:{port}")
    moto.api("POST", "config", {"lambda": {"use_docker": False}})
    saved = os.environ.get(f"AIRFLOW_CONN_{MOTO_CONN_ID.upper()}")
    os.environ[f"AIRFLOW_CONN_{MOTO_CONN_ID.upper()}"] = moto_connection(moto.endpoint)
    try:
        yield moto
    finally:
        if saved is None:
            os.environ.pop(f"AIRFLOW_CONN_{MOTO_CONN_ID.upper()}", None)
        else:
            os.environ[f"AIRFLOW_CONN_{MOTO_CONN_ID.upper()}"] = saved
        server.stop()


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """`airflow db migrate` once, in the suite's throw-away AIRFLOW_HOME (dag.test() needs the tables)."""
    completed = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}")


@pytest.fixture(scope="module")
def postgres() -> Iterator[Any]:
    """A throw-away PostgreSQL cluster on 127.0.0.1 (tests/pg_server.py) for one test module, stopped by its
    process id; tests take databases of their own with ``postgres.create_database(prefix)``."""
    from tests import pg_server

    if not pg_server.available():
        pytest.fail("PostgreSQL is not installed: .ci/run installs Debian's postgresql package")
    server = pg_server.PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def evidence_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The evidence store of one test: ``tmp_path/evidence`` (``AIRFLOW__BARECOUNT__EVIDENCE_DIR``), with the
    config and the sealing's caches cleared before and after."""
    from barecount_provider import config
    from barecount_provider.runtime import sealing

    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(tmp_path / "evidence"))
    config.cache_clear()
    sealing.clear_caches()
    yield tmp_path / "evidence"
    sealing.clear_caches()


def example_dag(name: str) -> Any:
    """The ``dag`` of the example file dags/<name>.py, loaded afresh (a module of its own, not in sys.modules)."""
    path = Path(__file__).resolve().parents[2] / "dags" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"barecount_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag
