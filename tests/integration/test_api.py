"""The Evidence API's plugin in a process of its own: loading the plugin alone does not import FastAPI."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.integration


def test_no_fastapi_import_when_only_the_plugin_is_loaded() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import barecount_provider.plugins.barecount as p; "
        "assert p.BareCountPlugin.fastapi_apps; "
        "print('barecount_provider.api.app' in sys.modules)"
    )
    env = {**os.environ, "AIRFLOW__BARECOUNT__ENABLED": "True"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
