"""Suite-wide set-up: a throw-away AIRFLOW_HOME before Airflow is imported, an empty HOME that must stay
empty, clean config caches, and the fixtures the unit and integration tests share (a tenant policy file, the
telemetry directory and the outbox's spool of one test).

Nothing the tests run may write outside the project directory or a temporary one: the suite runs with
``HOME`` set to a fresh empty directory (every subprocess inherits it: Airflow's components, the
``barecount`` and ``airflow`` commands), and the session fails when anything was written there (e.g. a
``~/airflow/airflow.cfg`` made by code that lost ``AIRFLOW_HOME``). Both directories are removed at the end.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_CREATED: list[str] = []  # the temporary directories this session made, removed at its end


def _temporary(prefix: str) -> str:
    path = tempfile.mkdtemp(prefix=prefix)
    _CREATED.append(path)
    return path


def _remove_created() -> None:
    for path in _CREATED:
        shutil.rmtree(path, ignore_errors=True)


# A process that imports this module without running the session (a test's spawned or subprocess child that
# imports a test module, which imports a helper from here) removes what it made when it exits.
atexit.register(_remove_created)

_HOME = os.environ.get("AIRFLOW_HOME") or _temporary("barecount-test-home-")
os.environ["AIRFLOW_HOME"] = _HOME
# A child process of the session inherits the session's empty HOME instead of making one of its own.
USER_HOME = os.environ.get("BARECOUNT_TEST_USER_HOME") or _temporary("barecount-test-user-home-")
os.environ["BARECOUNT_TEST_USER_HOME"] = USER_HOME
os.environ["HOME"] = USER_HOME
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", os.path.join(os.path.dirname(__file__), "..", "dags"))
os.environ.setdefault("AIRFLOW__BARECOUNT__SECRET_KEY", "test-secret-key-not-for-production")
os.environ.setdefault("AIRFLOW__BARECOUNT__TELEMETRY_DIR", os.path.join(_HOME, "barecount", "telemetry"))


def _entries(path: str) -> set[str]:
    try:
        return set(os.listdir(path))
    except OSError:
        return set()


# Code that empties the environment loses HOME too and falls back to the account's home directory
# (os.path.expanduser asks pwd): what appears there during the session is also reported.
_ACCOUNT_HOME = pwd.getpwuid(os.getuid()).pw_dir
_ACCOUNT_HOME_BEFORE = _entries(_ACCOUNT_HOME)


def written_to_home(home: str = USER_HOME) -> list[str]:
    """Every file and directory under ``home``, relative to it (empty: nothing was written there)."""
    found = []
    for root, dirs, files in os.walk(home):
        found.extend(os.path.relpath(os.path.join(root, name), home) for name in dirs + files)
    return sorted(found)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    written = written_to_home()
    written += [os.path.join(_ACCOUNT_HOME, name) for name in sorted(_entries(_ACCOUNT_HOME) - _ACCOUNT_HOME_BEFORE)]
    if written:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"the tests wrote outside the project and the temporary directories: {', '.join(written[:20])}"
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(f"ERROR: {message}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    _remove_created()


def _clear_caches() -> None:
    from barecount_provider import config
    from barecount_provider.telemetry import metrics, tracing

    config.cache_clear()
    metrics.get_emitter.cache_clear()
    tracing.get_tracing.cache_clear()
    from barecount_provider import policy, redaction

    redaction.get_redactor.cache_clear()
    policy.get_policy.cache_clear()
    from barecount_provider.evidence import spool as evidence_spool
    from barecount_provider.evidence import store as evidence_store
    from barecount_provider.runtime import sealing as evidence_scheduler

    evidence_store.clear_caches()
    evidence_spool.clear_caches()
    evidence_scheduler.clear_caches()
    from barecount_provider.recovery import budgets

    budgets.clear_caches()
    from barecount_provider import outbox

    outbox._handoff = None  # decided once per process: again for each test
    for name in (outbox.FORWARDER_PID_ENV, outbox.FORWARDER_OWNER_ENV):
        os.environ.pop(name, None)
    outbox._PENDING_LINES.clear()
    outbox._PENDING_ENTRIES.clear()
    outbox._PENDING_STATSD.clear()
    # Airflow's task runner sets the parsing context for its parse and never unsets it: a test that runs a task
    # in-process would otherwise tell the next test's cluster policies that they run in its task process.
    for name in ("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "_AIRFLOW_PARSING_CONTEXT_TASK_ID"):
        os.environ.pop(name, None)


@pytest.fixture(autouse=True)
def fresh_barecount_caches():
    _clear_caches()
    yield
    _clear_caches()


PolicyFile = Callable[[str], Path]


@pytest.fixture
def policy_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PolicyFile:
    """A factory: ``policy_file(text)`` writes the policy YAML to ``tmp_path/policy.yaml``, points BareCount at it
    (``AIRFLOW__BARECOUNT__POLICY_PATH``), clears the config and policy caches and returns the file's path."""

    def write(text: str) -> Path:
        from barecount_provider import config, policy

        path = tmp_path / "policy.yaml"
        path.write_text(text, encoding="utf-8")
        monkeypatch.setenv("AIRFLOW__BARECOUNT__POLICY_PATH", str(path))
        config.cache_clear()
        policy.get_policy.cache_clear()
        return path

    return write


@pytest.fixture
def telemetry_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The telemetry directory of one test (``AIRFLOW__BARECOUNT__TELEMETRY_DIR``: the forwarder's heartbeat),
    with the count of own failures cleared (a heartbeat names them: those of earlier tests are not this one's)."""
    from barecount_provider.telemetry import metrics

    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(tmp_path))
    metrics.EMIT_FAILURES.counts.clear()
    return tmp_path


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """Every [barecount] option at its default but the directories (in tmp_path); the monkeypatch to set more."""
    from barecount_provider import config

    for variable in list(os.environ):
        if variable.startswith("AIRFLOW__BARECOUNT__"):
            monkeypatch.delenv(variable)
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(tmp_path / "evidence"))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(tmp_path / "telemetry"))
    config.cache_clear()
    yield monkeypatch
    config.cache_clear()


@pytest.fixture
def index_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The evidence index of one test: a SQLite file in tmp_path (``AIRFLOW__BARECOUNT__EVIDENCE_INDEX_URL``)."""
    from barecount_provider import config

    url = f"sqlite:///{tmp_path / 'index.db'}"
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_INDEX_URL", url)
    config.cache_clear()
    return url


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Telemetry and evidence under tmp_path: file sink, span file and local evidence store (the default)."""
    from barecount_provider.telemetry import metrics

    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(tmp_path / "telemetry"))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(tmp_path / "evidence"))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_INDEX_URL", f"sqlite:///{tmp_path / 'index.db'}")
    metrics.EMIT_FAILURES.counts.clear()
    return tmp_path


@pytest.fixture
def spool_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The outbox's spool of one test (metric points spooled for the forwarder, no file sink), with the count
    of own failures cleared."""
    from barecount_provider import outbox
    from barecount_provider.telemetry import metrics

    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__OTLP_METRICS_ON", "True")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__FILE_SINK_ON", "False")
    metrics.EMIT_FAILURES.counts.clear()
    yield tmp_path / "spool"
    outbox._PENDING_POINTS.clear()


@pytest.fixture
def otlp_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """OTLP metrics and traces on, through the outbox's spool of one test (no file sink); the spool's path."""
    from barecount_provider import outbox
    from barecount_provider.telemetry import metrics

    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__OTLP_METRICS_ON", "True")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__FILE_SINK_ON", "False")
    outbox._PENDING_POINTS.clear()
    outbox._PENDING_SPANS.clear()
    metrics.EMIT_FAILURES.counts.clear()
    yield tmp_path / "spool"
    outbox._PENDING_POINTS.clear()
    outbox._PENDING_SPANS.clear()


@pytest.fixture
def capped_policy(policy_file: PolicyFile) -> None:
    """A policy that caps tenant acme at 12 workers."""
    policy_file("version: 1\ntenants:\n  acme:\n    limits: {max_workers: 12}\n")


def spool_one(tag: str) -> None:
    """Spool one metric point tagged ``id=tag`` the way a task process does."""
    from barecount_provider import outbox
    from barecount_provider.telemetry import outbox_sinks

    outbox_sinks.SpoolMetricSink().send([("barecount.test.point", "counter", 1.0, {"id": tag})])
    outbox.write_pending()


def forward_once(directory: str) -> list[str]:
    """One forwarder round without exporting: claim (sealing the journal first), read, remove; the tags read."""
    from barecount_provider.runtime import forwarding

    paths = forwarding._claim(directory, forwarding.MAX_FILES_PER_ROUND)
    found = forwarding._read(paths)
    for path in paths:
        os.unlink(path)
    return [tags["id"] for _, _, _, tags in found.points]


# The failing module's source: a chained exception through a non-ASCII line in a declared encoding.
FAILING_SOURCE = (
    "# -*- coding: latin-1 -*-\r\n"
    "def inner(value):\r\n"
    "    text = 'caf\xe9'  # a non-ASCII line in a declared encoding\r\n"
    "    return {'k': value}[value + 1] + len(text)\r\n"
    "\r\n"
    "def outer(value):\r\n"
    "    try:\r\n"
    "        return inner(value)\r\n"
    "    except KeyError as err:\r\n"
    "        raise RuntimeError(f'wrapped {value}') from err\r\n"
)


@pytest.fixture(params=["\r\n", "\n", "\r"])
def failing_module(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Any, str, str]]:
    """A module that raises (a latin-1 source with CRLF, LF or CR line ends): the module, its path, the line end."""
    import importlib.util
    import sys

    path = tmp_path / "failing_module_for_tracebacks.py"
    path.write_bytes(FAILING_SOURCE.replace("\r\n", request.param).encode("latin-1"))
    spec = importlib.util.spec_from_file_location("failing_module_for_tracebacks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module, str(path), request.param
    sys.modules.pop("failing_module_for_tracebacks", None)
