"""Regenerate docs/configuration.md from barecount_provider.config.OPTIONS (`--check`: exit 1 if stale)."""

from __future__ import annotations

import sys
from pathlib import Path

from barecount_provider.config import OPTIONS, SECTION


def render() -> str:
    lines = [
        "# Configuration: the `[barecount]` section",
        "",
        "Generated from `barecount_provider/config.py` (`scripts/gen_config_doc.py`; the tests check it is current).",
        "Set options in `airflow.cfg` or as `AIRFLOW__BARECOUNT__<OPTION>` environment variables;",
        "`airflow config list --section barecount --include-descriptions` shows them with their defaults and",
        "`barecount doctor` shows the resolved values.",
        "",
        "| option | type | default | example | description |",
        "|---|---|---|---|---|",
    ]
    for name, (kind, default, example, description) in OPTIONS.items():
        shown = f"`{default}`" if default else "(empty)"
        escaped = description.replace("|", "\\|")
        lines.append(f"| `{name}` | {kind} | {shown} | `{example}` | {escaped} |")
    lines.append("")
    lines.append(f"Section name: `[{SECTION}]`. `secret_key` is marked sensitive: Airflow hides its value.")
    return "\n".join(lines) + "\n"


def main() -> int:
    path = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    text = render()
    if "--check" in sys.argv:
        return 0 if path.exists() and path.read_text() == text else 1
    path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
