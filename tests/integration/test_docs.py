"""Generated docs are current (each generator's ``--check`` in a process of its own): they cannot drift from
the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _check(script: str) -> int:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--check"], cwd=ROOT).returncode


def test_configuration_doc_is_current():
    assert _check("gen_config_doc.py") == 0, "run scripts/gen_config_doc.py"


def test_metrics_doc_is_current():
    assert _check("gen_metrics_doc.py") == 0, "run scripts/gen_metrics_doc.py"
