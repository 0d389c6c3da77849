"""Regenerate docs/configuration.md from barecount_provider.config.OPTIONS (`--check`: exit 1 if stale)."""

from __future__ import annotations

import sys
from pathlib import Path

from barecount_provider.config import CHECKS, OPTIONS, SECTION

VALIDATION = """\
## Validation

Each option is read through its check (`CHECKS` in `barecount_provider/config.py`, the "valid" column
above), by the code that uses it and by these two:

- **`barecount doctor`** checks every option and lists each invalid one with its value and what is expected,
  all at once (`INVALID statsd_port = '70000': expected a whole number from 1 to 65535`), then the policy,
  the price table, each sink and the evidence store; a check that needs an invalid option is shown as
  `not checked: invalid [barecount] <option>`. `barecount doctor --json` prints the same as a document
  (`invalid_options`: `option`, `value`, `expected`, `message`, `fix`; `problems`; `ok`). Exit 1 when
  anything is invalid or unreachable, 0 otherwise. A port out of range is invalid, not unreachable. An
  option BareCount does not have, in airflow.cfg or as a variable, is reported too, with the closest name
  (`statsd_prot`: `expected an option of [barecount]: statsd_port?`): the option meant keeps its default.
- **Each Airflow component** that loads BareCount's plugin (scheduler, API server, DAG processor,
  triggerer, workers) checks every option once when it starts and logs each invalid one at ERROR, with
  its fix:

  ```text
  BareCount configuration: [barecount] statsd_port: '70000' is not a whole number from 1 to 65535. Fix: set [barecount] statsd_port in airflow.cfg, or AIRFLOW__BARECOUNT__STATSD_PORT, to a whole number from 1 to 65535 (default '8125')
  ```

An invalid value is never replaced by the default or clamped (`emit_timeout_ms = -5` is invalid, not 0):
where BareCount reads it, its getter raises that same error, which BareCount's hooks catch, log and
count (`barecount.emit.failed`); the task is not affected, but what needs the option does not work
until it is fixed. An invalid `enabled` registers nothing. Booleans take `true`, `t`, `1`, `yes`, `on`
or `false`, `f`, `0`, `no`, `off`, empty, in any case; a choice is taken in any case. Secrets
(`secret_key`, a URL's password) are never shown.
"""


def render() -> str:
    lines = [
        "# Configuration: the `[barecount]` section",
        "",
        "Generated from `barecount_provider/config.py` (`scripts/gen_config_doc.py`; the tests check it is current).",
        "Set options in `airflow.cfg` or as `AIRFLOW__BARECOUNT__<OPTION>` environment variables;",
        "`airflow config list --section barecount --include-descriptions` shows them with their defaults and",
        "`barecount doctor` shows the resolved values and every invalid one (see Validation below).",
        "",
        "| option | type | default | example | valid | description |",
        "|---|---|---|---|---|---|",
    ]
    for name, (kind, default, example, description) in OPTIONS.items():
        shown = f"`{default}`" if default else "(empty)"
        escaped = description.replace("|", "\\|")
        check = CHECKS.get(name)
        valid = check.expected.replace("|", "\\|") if check else "(no check: add one to config.CHECKS)"
        lines.append(f"| `{name}` | {kind} | {shown} | `{example}` | {valid} | {escaped} |")
    lines.append("")
    lines.append(VALIDATION)
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
