"""The schema layer of BareCount's YAML files: the governance policy and the cost price table read alike.
(The database's tables are another schema: ``db/schema.py``.)

What both validators need lives here once: the :class:`Problem` record (file, key path, bad value, what was
expected) and the error that lists them, the :class:`Report` that collects them, key-path joining, YAML
parsing with line numbers and duplicate-key detection, schema sections and the reusable checks.

A shared loader rather than pydantic: pydantic's errors are its own words (``Input should be ...``), and
rewriting each into today's documented message would be a second schema beside the model, so a small
loader keeps every message exact with less code.

A schema is a tree of :class:`Section` (a mapping with known keys) and :class:`MapOf` (free keys matching a
pattern) whose leaves are checks. A check takes a value and yields (path suffix, bad value, expected) for
each mistake; the suffix is "" for the value itself, "[i]" for a list item or ".key" for a mapping entry.
"""

from __future__ import annotations

import math
import re
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import yaml

# --------------------------------------------------------------------------------------------------- problems


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()
"""The ``value`` of a Problem about a required key that is absent."""


@dataclass(frozen=True)
class Unreadable:
    """The ``value`` of a Problem about a file that could not be read or parsed as YAML."""

    reason: str


@dataclass(frozen=True)
class Problem:
    """One mistake in a file: where it is, what was found and what was expected.

    ``key_path`` is dotted, with ``[i]`` for list items (``tenants.acme.allowed_sizes[2]``); it is empty for
    mistakes about the file as a whole (unreadable, not YAML, empty).
    """

    file: str
    key_path: str
    value: object
    expected: str
    line: int | None = None
    """For a mistake inside a key given more than once: the line of the copy it is in (each copy is checked)."""

    def __str__(self) -> str:
        where = f"{self.file}: {self.key_path}" if self.key_path else self.file
        if self.line is not None:
            where += f" (copy at line {self.line})"
        if self.value is MISSING:
            return f"{where}: missing; expected {self.expected}"
        if isinstance(self.value, Unreadable):
            return f"{where}: {self.value.reason}; expected {self.expected}"
        return f"{where}: {self.value!r} is not {self.expected}"


class ProblemsError(ValueError):
    """An invalid file. ``problems`` holds every mistake found; the message lists them, one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def problems_of(load: Callable[[], object], error: type[ProblemsError]) -> list[Problem]:
    """The problems ``load()`` raises ``error`` with, instead of raising; empty when it loads."""
    try:
        load()
    except error as err:
        return err.problems
    return []


# --------------------------------------------------------------------------------------------------- key paths

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def join_dotted(path: str, key: object) -> str:
    """``tenants`` + ``acme``: every key written as it is (the policy's key paths)."""
    return f"{path}.{key}" if path else str(key)


def join_quoted(path: str, key: object) -> str:
    """``prices.glue.dpu_hour`` + ``FLEX``; a key that is not a plain name is quoted: ``instance_hour['m5.large']``
    (the price table's key paths)."""
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


class Report:
    """Collects the problems of one file; ``join`` writes its key paths (:func:`join_dotted` or
    :func:`join_quoted`)."""

    def __init__(self, file: str, join: Callable[[str, object], str] = join_dotted) -> None:
        self.file = file
        self.join = join
        self.problems: list[Problem] = []

    def add(self, key_path: str, value: object, expected: str) -> None:
        self.problems.append(Problem(self.file, key_path, value, expected))


# ----------------------------------------------------------------------------------------------------- values


def is_number(value: object) -> TypeGuard[int | float]:
    """A finite int or float; bool is an int in Python, never a number in a file."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_mapping(value: object) -> TypeGuard[Mapping[str, Any]]:
    """``isinstance(value, Mapping)``, with plain values answered first: an ABC check of a type the ABC has
    not seen (``None`` in a task process) walks every registered subclass of ``Mapping``, and any ABC check
    touches the ABC's caches: copy-on-write page faults in a forked task process."""
    if isinstance(value, dict):
        return True
    if value is None or isinstance(value, (str, int, float, list, tuple)):
        return False
    return isinstance(value, Mapping)


def merge(base: Mapping[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    """``override`` over ``base``: mappings merge key by key (null over a mapping keeps it), anything else
    replaces. Inputs are not changed."""
    merged = dict(base)
    for key, value in (override or {}).items():
        if is_mapping(merged.get(key)) and (value is None or is_mapping(value)):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def frozen(value: Any) -> Any:
    """``value`` with every mapping in it made read-only."""
    if is_mapping(value):
        return types.MappingProxyType({key: frozen(item) for key, item in value.items()})
    return value


# ----------------------------------------------------------------------------------------------------- checks

Check = Callable[[object], Iterator[tuple[str, object, str]]]


def integer(minimum: int, maximum: int | None = None, *, nullable: bool = False, expected: str = "") -> Check:
    """An int (not a bool) from ``minimum`` (to ``maximum``); ``expected`` replaces the generated wording."""
    if not expected:
        expected = (
            f"an integer >= {minimum}" if maximum is None else f"an integer between {minimum} and {maximum}"
        )
        expected += ", or null" if nullable else ""

    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if value is None and nullable:
            return
        if not (isinstance(value, int) and not isinstance(value, bool)):
            yield "", value, expected
        elif value < minimum or (maximum is not None and value > maximum):
            yield "", value, expected

    return check


def number(minimum: float, maximum: float | None = None, *, nullable: bool = False, expected: str = "") -> Check:
    """A finite number from ``minimum`` (to ``maximum``); ``expected`` replaces the generated wording."""
    if not expected:
        expected = f"a number >= {minimum}" if maximum is None else f"a number between {minimum} and {maximum}"
        expected += ", or null" if nullable else ""

    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if value is None and nullable:
            return
        if not is_number(value):
            yield "", value, expected
        elif value < minimum or (maximum is not None and value > maximum):
            yield "", value, expected

    return check


def boolean() -> Check:
    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if not isinstance(value, bool):
            yield "", value, "true or false"

    return check


def one_of(options: tuple[Any, ...]) -> Check:
    expected = f"one of {', '.join(str(option) for option in options)}"

    def check(value: object) -> Iterator[tuple[str, object, str]]:
        # `value in options` would take True for 1: compare types too
        if not any(type(value) is type(option) and value == option for option in options):
            yield "", value, expected

    return check


def list_of(item: Check, what: str) -> Check:
    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if not isinstance(value, list):
            yield "", value, f"a list of {what}"
            return
        for index, element in enumerate(value):
            for suffix, bad, expected in item(element):
                yield f"[{index}]{suffix}", bad, expected

    return check


def matching(pattern: str, what: str) -> Check:
    compiled = re.compile(pattern)

    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if not (isinstance(value, str) and compiled.fullmatch(value)):
            yield "", value, what

    return check


def named(what: str) -> Check:
    """A non-empty string; ``what`` says what it names."""

    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if not (isinstance(value, str) and value.strip()):
            yield "", value, f"{what} (a non-empty string)"

    return check


def string_map(what: str) -> Check:
    def check(value: object) -> Iterator[tuple[str, object, str]]:
        if not isinstance(value, dict):
            yield "", value, f"a mapping of {what}"
            return
        for key, item in value.items():
            if not (isinstance(key, str) and key and isinstance(item, str)):
                yield f".{key}", item, f"a string value under a non-empty string key ({what})"

    return check


# --------------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class Section:
    """A mapping with known keys, each a section or a check."""

    fields: Mapping[str, Section | MapOf | Check]
    keys_expected: str = ""  # how to describe the allowed keys; default: "a known key (allowed: ...)"
    optional: bool = False  # a complete file need not set its keys (the policy's network placements, targets)

    def key_expectation(self) -> str:
        return self.keys_expected or f"a known key (allowed: {', '.join(self.fields)})"


@dataclass(frozen=True)
class MapOf:
    """A mapping of free keys matching ``key_pattern``, each holding a ``value``."""

    key_pattern: str
    key_expected: str
    value: Section | MapOf | Check


def check_value(
    spec: Section | MapOf | Check,
    value: object,
    path: str,
    report: Report,
    *,
    null_sets_nothing: bool = False,
    missing: str = "",
) -> None:
    """Every mistake of ``value`` at ``path`` against ``spec``, added to ``report``.

    ``null_sets_nothing``: null in place of a section is no mistake (an override that overrides nothing).
    ``missing``: the file must be complete, and a key of a section it lacks is a mistake expecting this
    (optional sections excepted).
    """
    if not isinstance(spec, Section | MapOf):
        for suffix, bad, expected in spec(value):
            report.add(path + suffix, bad, expected)
        return
    if value is None and null_sets_nothing:
        return
    if not isinstance(value, dict):
        what = f"keys matching {spec.key_pattern}" if isinstance(spec, MapOf) else ", ".join(spec.fields)
        report.add(path, value, f"a mapping (keys: {what})")
        return
    if isinstance(spec, MapOf):
        pattern = re.compile(spec.key_pattern)
        for key, item in value.items():
            if not (isinstance(key, str) and pattern.fullmatch(key)):
                report.add(report.join(path, key), key, spec.key_expected)
            else:
                check_value(spec.value, item, report.join(path, key), report, null_sets_nothing=null_sets_nothing,
                            missing=missing)
        return
    for key, item in value.items():
        field_spec = spec.fields.get(key) if isinstance(key, str) else None
        if field_spec is None:
            report.add(report.join(path, key), key, spec.key_expectation())
        elif isinstance(field_spec, Section) and field_spec.optional:  # need not be complete
            check_value(field_spec, item, report.join(path, key), report, null_sets_nothing=null_sets_nothing)
        else:
            check_value(field_spec, item, report.join(path, key), report, null_sets_nothing=null_sets_nothing,
                        missing=missing)
    if missing:
        for key, field_spec in spec.fields.items():
            if key not in value and not (isinstance(field_spec, Section) and field_spec.optional):
                report.add(report.join(path, key), MISSING, missing)


# ------------------------------------------------------------------------------------------------------ files


def read_text_file(path: str, what: str, error: Callable[[list[Problem]], Exception]) -> str:
    """The UTF-8 text at ``path``; a file that cannot be read, or is not UTF-8, raises ``error`` with the
    Problem that says so (``what`` names the file in the expectation: "a readable <what>")."""
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError as err:
        reason = f"cannot be read: {err.strerror or err}"
        raise error([Problem(path, "", Unreadable(reason), f"a readable {what}")]) from None
    except UnicodeDecodeError as err:
        reason = f"is not UTF-8 text (byte {err.start})"
        raise error([Problem(path, "", Unreadable(reason), f"a UTF-8 {what}")]) from None


@dataclass(frozen=True)
class Copy:
    """One copy of a key given more than once in a mapping: where it is and its value node."""

    path: str  # key path, as Problem.key_path writes it
    keys: tuple[Any, ...]  # the same path as keys of the loaded document (str keys, int list indexes)
    line: int  # 1-based line of the key
    mark: yaml.Mark
    value_node: yaml.Node
    last: bool  # the copy YAML keeps (the one the loaded document holds)


def _duplicate_keys(
    node: yaml.Node, path: str, keys: tuple[Any, ...], seen_nodes: set[int], join: Callable[[str, object], str]
) -> Iterator[list[Copy]]:
    """Every copy of each key given more than once in one mapping, which YAML loading silently resolves to
    the last one. Merge keys (``<<``) are YAML's way to override on purpose and are left alone."""
    if id(node) in seen_nodes:  # an alias of a node already walked
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        copies: dict[tuple[str, str], list[tuple[yaml.Node, yaml.Node]]] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                copies.setdefault((key_node.tag, key_node.value), []).append((key_node, value_node))
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            found = copies.get((key_node.tag, key_node.value)) if isinstance(key_node, yaml.ScalarNode) else None
            if found is not None and len(found) > 1 and found[0][0] is key_node:
                yield [
                    Copy(join(path, key), (*keys, key), copy_key.start_mark.line + 1, copy_key.start_mark,
                         copy_value, index == len(found) - 1)
                    for index, (copy_key, copy_value) in enumerate(found)
                ]
            yield from _duplicate_keys(value_node, join(path, key), (*keys, key), seen_nodes, join)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicate_keys(item, f"{path}[{index}]", (*keys, index), seen_nodes, join)


def parse_yaml(
    text: str, report: Report, empty_expected: str, *, syntax_context: bool = True
) -> tuple[bool, object, list[tuple[Copy, object]]]:
    """(parsed, document, copies). Syntax errors and duplicate keys go to ``report`` with their line and
    column (an empty file too, expecting ``empty_expected``); ``copies`` holds, for each key given more than
    once, each copy with its loaded value. ``syntax_context``: a syntax error says what was being parsed
    (``(while parsing a flow mapping)``), as the policy's documented errors do; the price table's do not.

    libyaml's loader when present (about 8x faster: the policy is read by every task process); a file it
    rejects is read again by the pure-Python loader, whose error messages are the documented ones."""
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        scratch = Report(report.file, report.join)
        parsed, document, copies = _parse_yaml_with(fast, text, scratch, empty_expected, syntax_context)
        if parsed and not scratch.problems:
            return parsed, document, copies
    return _parse_yaml_with(yaml.SafeLoader, text, report, empty_expected, syntax_context)


def _parse_yaml_with(
    loader_class: Any, text: str, report: Report, empty_expected: str, syntax_context: bool
) -> tuple[bool, object, list[tuple[Copy, object]]]:
    loader = loader_class(text)
    copies: list[tuple[Copy, object]] = []
    try:
        node = loader.get_single_node()
        if node is None:
            report.add("", Unreadable("the file is empty"), empty_expected)
            return False, None, []
        groups = list(_duplicate_keys(node, "", (), set(), report.join))
        for group in groups:
            for copy in group[1:]:
                where = f"line {copy.mark.line + 1}, column {copy.mark.column + 1}"
                report.add(copy.path, Unreadable(f"given again at {where}"), "each key once in a mapping")
        document = loader.construct_document(node)
        for group in groups:
            for copy in group:
                value = None if copy.last else loader.construct_object(copy.value_node, deep=True)
                copies.append((copy, value))
    except yaml.MarkedYAMLError as err:
        error_mark = err.problem_mark or err.context_mark
        where = f" at line {error_mark.line + 1}, column {error_mark.column + 1}" if error_mark else ""
        detail = err.problem or "unreadable"
        detail += f" ({err.context})" if err.context and syntax_context else ""
        report.add("", Unreadable(f"YAML syntax error{where}: {detail}"), "valid YAML")
        return False, None, []
    except yaml.YAMLError as err:
        report.add("", Unreadable(f"YAML syntax error: {err}"), "valid YAML")
        return False, None, []
    finally:
        loader.dispose()
    return True, document, copies
