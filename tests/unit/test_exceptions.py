"""The lean traceback (telemetry/exceptions.py) keeps its output: its text is Python's own (as printed under
``-X no_debug_ranges``), case by case. Checked against Python run as a subprocess:
tests/integration/test_exceptions.py."""

from __future__ import annotations

import linecache
import traceback

import pytest

from barecount_provider.telemetry import exceptions


def _python_text(error):
    """What Python prints under ``-X no_debug_ranges``: its traceback without the column-marker lines."""
    import re

    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return "".join(line for line in text.splitlines(keepends=True) if not re.fullmatch(r"\s*[~^]+\s*", line))


def _raise(module):
    try:
        module.outer(1)
    except RuntimeError as err:
        return err
    raise AssertionError("did not raise")


def test_the_lean_traceback_is_pythons_own_and_leaves_linecache_as_it_was(failing_module):
    module, path, newline = failing_module
    error = _raise(module)
    linecache.cache.pop(path, None)
    linecache.cache.pop(__file__, None)
    lean = exceptions.format_exception_text(error)
    # No partial entry left behind (where the lean path falls back, linecache has read the file, as usual).
    entry = linecache.cache.get(path)
    if entry is not None and len(entry) == 4:  # a lazy entry (1-tuple) is linecache's own
        assert "" not in entry[2][:3]
    assert lean == _python_text(error)
    assert "^" not in lean
    if newline != "\r":  # (Python itself shows no source line of a file with bare \r line ends)
        assert "return {'k': value}[value + 1] + len(text)" in lean
    assert "wrapped 1" in lean and "The above exception was the direct cause" in lean


def test_the_lean_traceback_falls_back_where_the_file_is_gone(failing_module, tmp_path):
    module, path, _ = failing_module
    error = _raise(module)
    import os

    os.unlink(path)
    linecache.cache.pop(path, None)
    assert exceptions.format_exception_text(error) == _python_text(error)


# ------------------------------------------ the lean traceback's own formatter against Python's, case by case


class _OddError(Exception):
    class Nested(Exception):
        pass


class _BadStr(Exception):
    def __str__(self):
        raise RuntimeError("no text")


def _recurse(n):
    if n == 0:
        raise RecursionError("deep enough")
    return _recurse(n - 1)


def _caught(make):
    try:
        make()
    except BaseException as err:
        return err
    raise AssertionError("did not raise")


def _throw(error):
    raise error


def _cause():
    try:
        {}["missing"]
    except KeyError as err:
        raise ValueError("wrapped") from err


def _context():
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        raise OSError(2, "while handling")  # noqa: B904 - the implicit context is the case


def _suppressed():
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        raise LookupError("no context shown") from None


def _noted():
    error = ValueError("with notes")
    error.add_note("first note")
    error.add_note("second\nnote on two lines")
    raise error


def _cycle():
    first, second = ValueError("first"), TypeError("second")
    try:
        raise first
    except ValueError:
        try:
            raise second
        except TypeError:
            pass
    first.__context__ = second  # a cycle: second's context is first
    raise first


def _seen_cause():
    error = ValueError("outer")
    inner = KeyError("inner")
    inner.__cause__ = error  # the cause's cause is the exception itself
    error.__cause__ = inner
    raise error


LEAN_CASES = {
    "plain": lambda: _throw(ValueError("plain")),
    "empty message": lambda: _throw(ValueError()),
    "multi-line message": lambda: _throw(RuntimeError("line one\nline two")),
    "key error": lambda: {}["k"],
    "module class": lambda: _throw(_OddError("odd")),
    "nested class": lambda: _throw(_OddError.Nested("nested")),
    "str fails": lambda: _throw(_BadStr()),
    "cause": _cause,
    "context": _context,
    "suppressed context": _suppressed,
    "notes": _noted,
    "recursion, 1 repeat": lambda: _recurse(4),
    "recursion, many": lambda: _recurse(12),
    "context cycle": _cycle,
    "cause already seen": _seen_cause,
}


@pytest.mark.parametrize("name", list(LEAN_CASES))
def test_the_lean_formatter_gives_pythons_text(name):
    error = _caught(LEAN_CASES[name])
    assert exceptions._lean_format(error, lambda path, lineno, g: linecache.getline(path, lineno)) is not None
    assert exceptions.format_exception_text(error) == _python_text(error)


def test_an_exception_never_raised_has_no_traceback_lines():
    error = ValueError("made, not raised")
    assert exceptions.format_exception_text(error) == _python_text(error) == "ValueError: made, not raised\n"


def test_source_lines_deep_in_a_file_are_linecaches(tmp_path):
    """The formatter reads a frame's line without an object per line, skipping runs of lines at once: any
    line of a file whose lines are short, long, blank or mixed is the one linecache gives."""
    lengths = [0, 1, 3, 23, 24, 25, 80, 300, 2, 0, 0, 47]
    source = "".join(f"{'x' * lengths[(i * 7) % len(lengths)]}#{i}\n" for i in range(3000))
    path = tmp_path / "deep.py"
    path.write_text(source, encoding="utf-8")
    linecache.checkcache(str(path))
    wanted_sets = [{1}, {2999, 3000}, {3001, 5000}, {24, 25, 26}, {7, 1500, 2999}, set(range(1, 3001, 97)), {0, 12}]
    for wanted in wanted_sets:
        lines = exceptions._source_lines(str(path), wanted)
        assert lines == {n: linecache.getline(str(path), n).rstrip("\n") if n >= 1 else "" for n in wanted}, wanted


@pytest.mark.parametrize("name", ["cause", "context", "notes", "recursion, many"])
def test_without_fast_paths_the_traceback_is_pythons_and_no_facts_are_handed_off(monkeypatch, name):
    """``[barecount] fast_paths = False``: the text comes from ``traceback`` itself (the same text), and a
    failure is never handed off as facts (the task formats it)."""
    from barecount_provider import config

    error = _caught(LEAN_CASES[name])
    monkeypatch.setenv("AIRFLOW__BARECOUNT__FAST_PATHS", "False")
    config.cache_clear()
    assert exceptions.format_exception_text(error) == _python_text(error)
    assert exceptions.exception_facts(error) is None


