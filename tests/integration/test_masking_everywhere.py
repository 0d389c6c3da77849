"""Masking is active in every process that supervises tasks, with Airflow's defaults (issue 21).

A Celery worker (``airflow celery worker``) imports Airflow, which runs ``settings.initialize()``, and with
``[core] lazy_load_plugins = True`` (the default) never loads BareCount's plugin. Airflow loads the
``airflow.policy`` entry points there, though: :mod:`barecount_provider.cluster_policies` extends the masker when it
is imported. Each test runs a fresh interpreter with its own AIRFLOW_HOME, as a worker starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

# Built at run time so that no literal secret sits in the source.
_AWS_SECRET = "wJalr" + "XUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY"
_URL_PASSWORD = "s3cr" + "et-Pa55w0rd"


_WORKER = textwrap.dedent(
    """
    import json, socket, sys
    from typing import Any, cast

    import airflow  # settings.initialize(): what a Celery worker (and any Airflow process) does first
    from airflow.sdk.execution_time import supervisor

    class Sink:
        def _on_socket_closed(self, sock):
            pass

    def feed(reader, data):
        callback, _on_close = reader
        ours, theirs = socket.socketpair()
        try:
            ours.sendall(data)
            ours.shutdown(socket.SHUT_WR)
            while callback(theirs):
                pass
        finally:
            ours.close()
            theirs.close()

    # The supervisor's own task log file writer (supervise_task -> _configure_logging), fed what a task prints.
    logger, log_file = supervisor._configure_logging("task.log", cast(Any, None))
    printed = sys.argv[1].encode() + b"\\n"
    feed(supervisor.WatchedSubprocess._create_log_forwarder(cast(Any, Sink()), (logger,), "task.stdout", data=b""), printed)
    log_file.close()
    print(json.dumps({
        "plugin_loaded": "barecount_provider.plugins.barecount" in sys.modules,
        "policies_loaded": "barecount_provider.cluster_policies" in sys.modules,
    }))
    """
)


def _run_worker(tmp_path: Path, line: str, **env: str) -> tuple[dict[str, bool], str]:
    home = tmp_path / "airflow-home"
    logs = tmp_path / "logs"
    home.mkdir()
    logs.mkdir()
    environ = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "True",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(logs),
        **env,
    }
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    done = subprocess.run(
        [sys.executable, str(script), line], env=environ, cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads(done.stdout.strip().splitlines()[-1])
    return state, (logs / "task.log").read_text()


def test_worker_without_plugins_masks_aws_secret_key_and_url_password(tmp_path):
    line = f"aws_secret_access_key={_AWS_SECRET} url=postgresql://etl:{_URL_PASSWORD}@db:5432/w"
    state, written = _run_worker(tmp_path, line)
    assert state == {"plugin_loaded": False, "policies_loaded": True}  # lazy plugins: only the policy entry point
    assert _AWS_SECRET not in written
    assert _URL_PASSWORD not in written
    assert "postgresql://etl:***@db:5432/w" in written
    assert "aws_secret_access_key=***" in written


def test_disabled_barecount_leaves_airflow_masker_alone(tmp_path):
    """The control, and ``[barecount] enabled = False``: Airflow's masker alone writes both in clear."""
    line = f"aws_secret_access_key={_AWS_SECRET} url=postgresql://etl:{_URL_PASSWORD}@db:5432/w"
    state, written = _run_worker(tmp_path, line, AIRFLOW__BARECOUNT__ENABLED="False")
    assert state["plugin_loaded"] is False
    assert _AWS_SECRET in written
    assert _URL_PASSWORD in written


@pytest.mark.parametrize("value", ["maybe"])
def test_invalid_enabled_option_never_breaks_airflow_start(tmp_path, value):
    """An invalid option at settings load: Airflow still starts (the plugin reports the option)."""
    state, written = _run_worker(tmp_path, "hello", AIRFLOW__BARECOUNT__ENABLED=value)
    assert state["policies_loaded"] is True
    assert "hello" in written
