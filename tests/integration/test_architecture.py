"""The layer contract (pyproject.toml ``[tool.importlinter]``, docs/architecture.md) run by ``lint-imports``
on a copy of the package: it fails when a domain package imports a sibling."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--config", str(ROOT / "pyproject.toml")],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def test_a_domain_package_importing_a_sibling_breaks_the_contract(tmp_path: Path) -> None:
    copy = tmp_path / "barecount_provider"
    shutil.copytree(ROOT / "barecount_provider", copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert _lint_imports(tmp_path).returncode == 0  # the copy keeps the contract, as the tree does

    record = copy / "evidence" / "record.py"
    record.write_text(record.read_text() + "\nfrom barecount_provider.cost import estimate  # noqa: E402\n")
    broken = _lint_imports(tmp_path)
    assert broken.returncode == 1, broken.stdout
    assert "barecount_provider.evidence is not allowed to import barecount_provider.cost" in broken.stdout
    assert "Contracts: 0 kept, 1 broken." in broken.stdout
