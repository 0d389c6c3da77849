"""Generated docs are current: they cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_provider_info_publishes_every_option_with_description_type_default_example():
    from barecount_provider import get_provider_info

    options = get_provider_info()["config"]["barecount"]["options"]
    assert options
    for name, option in options.items():
        assert option["description"] and option["type"] in ("string", "boolean", "integer"), name
        assert "default" in option and option["example"], name


RUNNER_FIELD = re.compile(
    r'"((?:resources_requested|resources_used|timings|digests|billing_inputs|details)\.[a-z0-9_]+)"'
)
RUNNER_PAGES = {
    "lambda_function": ["docs/runners.md"],
    "glue": ["docs/runners/managed_etl.md"],
    "emr_serverless": ["docs/runners/managed_etl.md"],
    "kubernetes": ["docs/runners/container.md"],
    "ecs": ["docs/runners/container.md"],
    "ec2": ["docs/runners/dedicated.md"],
    "cloudwatch": ["docs/runners/managed_etl.md", "docs/runners/container.md", "docs/runners/dedicated.md"],
}


@pytest.mark.parametrize("module", sorted(RUNNER_PAGES))
def test_every_runner_result_field_an_operator_records_is_documented_with_its_source(module: str) -> None:
    """Each `section.key` the operator module can record is named on its class's page (as `section.key`,
    or `.key` in a row that groups keys of one section)."""
    source = (ROOT / "barecount_provider" / "operators" / f"{module}.py").read_text(encoding="utf-8")
    fields = sorted(set(RUNNER_FIELD.findall(source)))
    assert len(fields) >= 10, fields
    text = "".join((ROOT / page).read_text(encoding="utf-8") for page in RUNNER_PAGES[module])
    undocumented = [
        field
        for field in fields
        if f"`{field}`" not in text and f"`.{field.split('.', 1)[1]}`" not in text
    ]
    assert undocumented == []
