"""The lean traceback (telemetry/exceptions.py) checked against Python itself: scripts run as subprocesses with
and without ``-X no_debug_ranges`` print the same text."""

from __future__ import annotations

import sys

import pytest

pytestmark = pytest.mark.integration


def test_the_lean_traceback_is_what_python_prints_without_debug_ranges(tmp_path):
    """Checked against Python itself: a script run with ``-X no_debug_ranges`` prints its traceback with
    ``traceback.format_exception``; the lean text of the same exception in the same script is identical."""
    import subprocess

    script = tmp_path / "script.py"
    script.write_text(
        "import sys, traceback\n"
        "from barecount_provider.telemetry.exceptions import format_exception_text\n"
        "def inner(values):\n"
        "    return values['a'] + values['b'] * 2\n"
        "def outer():\n"
        "    try:\n"
        "        return inner({'a': 1})\n"
        "    except KeyError as err:\n"
        "        raise ValueError('wrapped') from err\n"
        "try:\n"
        "    outer()\n"
        "except ValueError as err:\n"
        "    error = err\n"
        "python = ''.join(traceback.format_exception(error)) if sys.argv[1] == 'python' else format_exception_text(error)\n"
        "sys.stdout.write(python)\n"
    )
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, *args], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout
    python_text = run("-X", "no_debug_ranges", str(script), "python")
    assert run(str(script), "lean") == python_text
    assert "values['a'] + values['b'] * 2" in python_text and "^" not in python_text


FALLBACK_SCRIPT = """
import sys, traceback
from barecount_provider.telemetry import exceptions

def throw(error):
    raise error

def group_cause():
    try:
        raise ExceptionGroup("many", [ValueError("a"), TypeError("b")])
    except ExceptionGroup as group:
        raise RuntimeError("after the group") from group

def odd_notes():
    error = ValueError("odd notes")
    error.__notes__ = "a string, not a list"
    raise error

def recurse(n):
    if n == 0:
        raise RecursionError("deep enough")
    return recurse(n - 1)

makers = [
    lambda: compile("def broken(:\\n    pass\\n", "<snippet>", "exec"),
    lambda: throw(ExceptionGroup("many", [ValueError("a"), TypeError("b")])),
    group_cause,
    odd_notes,
    lambda: recurse(3),
]
for index, make in enumerate(makers):
    try:
        make()
    except BaseException as err:
        error = err
    limit = index == len(makers) - 1
    if limit:
        sys.tracebacklimit = 2
    lean = exceptions._lean_format(error, lambda path, lineno, g: "")
    text = "".join(traceback.format_exception(error)) if sys.argv[1] == "python" else exceptions.format_exception_text(error)
    if limit:
        del sys.tracebacklimit
    sys.stdout.write(f"=== case {index}: lean formatter {'declines' if lean is None else 'formats'}\\n{text}")
"""


def test_what_the_lean_formatter_leaves_to_traceback_is_what_python_prints_without_debug_ranges(tmp_path):
    """Syntax errors, exception groups (also as a cause), ``__notes__`` that are not a list and a set
    ``sys.tracebacklimit`` go to ``traceback``; checked against Python run with ``-X no_debug_ranges``."""
    import subprocess

    script = tmp_path / "fallbacks.py"
    script.write_text(FALLBACK_SCRIPT)
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, *args], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout
    python_text = run("-X", "no_debug_ranges", str(script), "python")
    assert run(str(script), "lean") == python_text
    assert python_text.count("lean formatter declines") == 5
    assert "SyntaxError: invalid syntax" in python_text and "ExceptionGroup: many (2 sub-exceptions)" in python_text
