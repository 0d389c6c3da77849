"""Generated docs are current: they cannot drift from the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _check(script: str) -> int:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--check"], cwd=ROOT).returncode


def test_configuration_doc_is_current():
    assert _check("gen_config_doc.py") == 0, "run scripts/gen_config_doc.py"


def test_metrics_doc_is_current():
    assert _check("gen_metrics_doc.py") == 0, "run scripts/gen_metrics_doc.py"


def test_provider_info_publishes_every_option_with_description_type_default_example():
    from barecount_provider import get_provider_info

    options = get_provider_info()["config"]["barecount"]["options"]
    assert options
    for name, option in options.items():
        assert option["description"] and option["type"] in ("string", "boolean", "integer"), name
        assert "default" in option and option["example"], name
