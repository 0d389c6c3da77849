"""What the provider does while the configured policy is invalid (``[barecount] policy_invalid``): the
policy exception evidence carries, and the message a refused runner task fails with."""

from __future__ import annotations

from typing import Any

from barecount_provider import config
from barecount_provider.policy.model import BUILT_IN_SOURCE
from barecount_provider.schema import Problem

POLICY_INVALID_RULE = "policy_invalid"


def invalid_policy_exception(tenant: str, problems: list[Problem]) -> dict[str, Any]:
    """The policy exception an evidence entry carries while the configured policy is invalid
    (``[barecount] policy_invalid``: ``fail`` refuses runner tasks, ``warn`` lets them try)."""
    return {
        "rule": POLICY_INVALID_RULE,
        "tenant": tenant,
        "limit": config.policy_path() or BUILT_IN_SOURCE,
        "requested": None,
        "mode": config.policy_invalid(),
        "problems": [str(problem) for problem in problems],
    }


def invalid_policy_message(problems: list[Problem]) -> str:
    """Why a runner task is refused while the policy is invalid (``policy_invalid = fail``)."""
    path = config.policy_path() or BUILT_IN_SOURCE
    listed = "\n".join(f"  {problem}" for problem in problems)
    return (
        f"BareCount refuses to launch: the governance policy {path} is invalid ([barecount] policy_invalid = "
        f"fail); fix it (check it with `barecount policy validate {path}`) or set policy_invalid = warn. "
        f"{len(problems)} problem(s):\n{listed}"
    )
