"""The [celery] and [postgres] extras are pinned in constraints.txt to versions their specifiers accept, and the
test extra installs them (issue 21)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version
    return pins


@pytest.mark.parametrize("extra", ["celery", "postgres"])
def test_extra_is_pinned_in_constraints(extra: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [Requirement(text) for text in project["optional-dependencies"][extra]]
    assert requirements
    pins = _pins()
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"constraints.txt does not pin {name} (extra [{extra}])"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name], str(requirement))


@pytest.mark.parametrize("extra", ["celery", "postgres"])
def test_the_test_extra_installs_the_extra_as_declared(extra: str) -> None:
    """`make install` (the test extra) installs what the CeleryExecutor system test runs
    (tests/system/test_celery_real_run.py): each requirement of the extra, with the same specifier."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    test = {canonicalize_name(Requirement(text).name): Requirement(text) for text in extras["test"]}
    for requirement in (Requirement(text) for text in extras[extra]):
        name = canonicalize_name(requirement.name)
        assert name in test, f"the test extra lacks {requirement} (extra [{extra}])"
        assert (test[name].specifier, test[name].extras) == (requirement.specifier, requirement.extras), name


def test_celery_extra_keeps_a_celery_the_provider_can_import() -> None:
    """apache-airflow-providers-celery 3.26 imports ``celery.backends.database.retry``, gone in celery 5.7."""
    from packaging.version import Version

    assert Version(_pins()["celery"]) < Version("5.7")
