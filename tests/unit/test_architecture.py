"""The layer contract (pyproject.toml ``[tool.importlinter]``, docs/architecture.md): every module is in a
layer (that the contract fails when a domain package imports a sibling: tests/integration/test_architecture.py)."""

from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path

import barecount_provider

ROOT = Path(__file__).resolve().parents[2]


def _layers() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as handle:
        contracts = tomllib.load(handle)["tool"]["importlinter"]["contracts"]
    (layers,) = [contract["layers"] for contract in contracts if contract["id"] == "layers"]
    return layers


def test_every_top_level_module_is_in_a_layer() -> None:
    named = {part.strip() for layer in _layers() for part in layer.replace("|", ":").split(":")}
    modules = {f"barecount_provider.{info.name}" for info in pkgutil.iter_modules(barecount_provider.__path__)}
    assert modules - named == set(), "add each new module to a layer in pyproject.toml [tool.importlinter]"
    assert named - modules == set()
