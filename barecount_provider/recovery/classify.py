"""Failure classification: is a failed try worth a retry?

A failure is **transient** (throttling, timeouts, HTTP 5xx, spot or host interruption, connection reset: a
retry may succeed) or **permanent** (validation, HTTP 4xx, code errors: a retry fails the same way). The
rules are the tenant's ``failure_classes`` policy (docs/policy.md, docs/recovery.md).

What a failure shows, from the most to the least specific, is tried in this order; the first rule that
matches decides:

1. **error codes**: a service's error code (botocore ``ClientError`` ``Error.Code``, an exception's
   ``error_code`` / string ``code``) and the runner operator's own error class (``runner_result.error``:
   ``PodFailed.Evicted``, ``EcsTaskFailed.SpotInterruption``, ``GlueJobRun.TIMEOUT``, ...), case-insensitive;
2. **HTTP statuses**: ``ResponseMetadata.HTTPStatusCode``, ``status`` / ``status_code`` attributes, a
   ``response.status_code``; an exact status (``429``) before a range (``5xx``);
3. **exception classes**: the nearest class of the exception's MRO that a rule names, dotted
   (``builtins.TimeoutError``) or bare (``ClientError``: that class name in any module);
4. **messages**: regular expressions searched in the exception's message and the runner's error message.

The exception and the exceptions it was raised from (``__cause__``, ``__context__``) are all looked at. At
each step the runner class's own rules come before the general ones, and a transient rule before a
permanent one. A failure no rule matches is ``unmatched`` (transient by default).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from barecount_provider.policy import FailureClasses, FailureRules

TRANSIENT = "transient"
PERMANENT = "permanent"
_CHAIN_DEPTH = 6


@dataclass(frozen=True)
class Classification:
    """The class of one failure, and why: ``rule`` is the policy key that matched (or ``unmatched``)."""

    kind: str
    rule: str
    matched: str

    @property
    def transient(self) -> bool:
        return self.kind == TRANSIENT

    def describe(self) -> str:
        if self.rule == "failure_classes.unmatched":
            return f"{self.kind} failure (no rule matched {self.matched}; failure_classes.unmatched)"
        return f"{self.kind} failure ({self.matched} matched {self.rule})"


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [error]
    while todo and len(seen) < _CHAIN_DEPTH:
        current = todo.pop(0)
        if current is None or any(current is known for known in seen):
            continue
        seen.append(current)
        todo.extend((current.__cause__, current.__context__))
    return seen


def _mapping_get(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _own(exc: BaseException, name: str) -> Any:
    """An attribute set on the exception itself: class-level defaults (AirflowException's ``status_code`` =
    500, meant for Airflow's API) say nothing about this failure."""
    try:
        return vars(exc).get(name)
    except TypeError:
        return None


def error_codes(error: BaseException, runner_error: Mapping[str, Any] | None = None) -> list[str]:
    """Every service error code the failure shows, outermost first."""
    codes: list[str] = []
    if runner_error and isinstance(runner_error.get("error_class"), str):
        codes.append(runner_error["error_class"])
    for exc in _chain(error):
        response = _own(exc, "response")
        code = _mapping_get(response, "Error", "Code")
        if isinstance(code, str) and code:
            codes.append(code)
        for attribute in ("error_code", "code"):
            value = _own(exc, attribute)
            if isinstance(value, str) and value:
                codes.append(value)
    return codes


def status_codes(error: BaseException) -> list[int]:
    """Every HTTP status the failure shows, outermost first."""
    statuses: list[int] = []
    for exc in _chain(error):
        response = _own(exc, "response")
        candidates = [
            _mapping_get(response, "ResponseMetadata", "HTTPStatusCode"),
            getattr(response, "status_code", None) if response is not None and not isinstance(response, Mapping) else None,
            _own(exc, "status_code"),
            _own(exc, "status"),  # Kubernetes' ApiException
            _own(exc, "code"),  # urllib's HTTPError
        ]
        for value in candidates:
            if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
                statuses.append(value)
    return statuses


def messages(error: BaseException, runner_error: Mapping[str, Any] | None = None) -> list[str]:
    texts = [str(exc) for exc in _chain(error)]
    if runner_error and isinstance(runner_error.get("message"), str):
        texts.append(runner_error["message"])
    return [text for text in texts if text]


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _status_matches(rule: str, status: int, exact: bool) -> bool:
    text = str(status)
    if exact:
        return rule == text
    return "x" in rule and all(r in ("x", t) for r, t in zip(rule, text, strict=True))


def _rule_sets(classes: FailureClasses, runner_class: str) -> Iterator[tuple[str, str, FailureRules]]:
    """(kind, policy key prefix, rules): the runner class's own first, transient before permanent."""
    own = classes.runner_classes.get(runner_class)
    if own is not None:
        yield TRANSIENT, f"failure_classes.runner_classes.{runner_class}.transient", own[0]
        yield PERMANENT, f"failure_classes.runner_classes.{runner_class}.permanent", own[1]
    yield TRANSIENT, "failure_classes.transient", classes.transient
    yield PERMANENT, "failure_classes.permanent", classes.permanent


def _class_names(cls: type) -> tuple[str, str]:
    return f"{cls.__module__}.{cls.__qualname__}", cls.__name__


def classify(
    error: BaseException,
    classes: FailureClasses,
    runner_class: str = "local",
    runner_error: Mapping[str, Any] | None = None,
) -> Classification:
    """Classify ``error`` (raised by a task of ``runner_class``) under the tenant's ``classes``."""
    rule_sets = list(_rule_sets(classes, runner_class))

    codes = error_codes(error, runner_error)
    for code in codes:
        folded = code.casefold()
        for kind, key, rules in rule_sets:
            if any(folded == rule.casefold() for rule in rules.error_codes):
                return Classification(kind, f"{key}.error_codes", f"error code {code}")

    statuses = status_codes(error)
    for exact in (True, False):
        for status in statuses:
            for kind, key, rules in rule_sets:
                if any(_status_matches(rule, status, exact) for rule in rules.status_codes):
                    return Classification(kind, f"{key}.status_codes", f"HTTP status {status}")

    for exc in _chain(error):
        for cls in type(exc).__mro__:
            dotted, bare = _class_names(cls)
            for kind, key, rules in rule_sets:
                if dotted in rules.exceptions or bare in rules.exceptions:
                    return Classification(kind, f"{key}.exceptions", f"exception {dotted}")

    texts = messages(error, runner_error)
    for kind, key, rules in rule_sets:
        for pattern in rules.messages:
            compiled = _compiled(pattern)
            for text in texts:
                if compiled.search(text):
                    return Classification(kind, f"{key}.messages", f"message pattern {pattern!r}")

    what = f"{type(error).__name__}" + (f", error code {codes[0]}" if codes else "")
    return Classification(classes.unmatched, "failure_classes.unmatched", what)
