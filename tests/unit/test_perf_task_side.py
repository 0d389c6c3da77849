"""Task-side shortcuts keep their output: the lean traceback text is Python's own."""

from __future__ import annotations

import importlib.util
import linecache
import sys
import traceback

import pytest

from barecount_provider.telemetry import task_side

SOURCE = (
    "# -*- coding: latin-1 -*-\r\n"
    "def inner(value):\r\n"
    "    text = 'caf\xe9'  # a non-ASCII line in a declared encoding\r\n"
    "    return {'k': value}[value + 1] + len(text)\r\n"
    "\r\n"
    "def outer(value):\r\n"
    "    try:\r\n"
    "        return inner(value)\r\n"
    "    except KeyError as err:\r\n"
    "        raise RuntimeError(f'wrapped {value}') from err\r\n"
)


@pytest.fixture(params=["\r\n", "\n", "\r"])
def failing_module(tmp_path, request):
    path = tmp_path / "failing_module_for_tracebacks.py"
    path.write_bytes(SOURCE.replace("\r\n", request.param).encode("latin-1"))
    spec = importlib.util.spec_from_file_location("failing_module_for_tracebacks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module, str(path), request.param
    sys.modules.pop("failing_module_for_tracebacks", None)


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
    lean = task_side.format_exception_text(error)
    # No partial entry left behind (where the lean path falls back, linecache has read the file, as usual).
    entry = linecache.cache.get(path)
    if entry is not None and len(entry) == 4:  # a lazy entry (1-tuple) is linecache's own
        assert "" not in entry[2][:3]
    expected = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    assert lean == expected
    if newline != "\r":  # (Python itself shows no source line of a file with bare \r line ends)
        assert "return {'k': value}[value + 1] + len(text)" in lean
    assert "wrapped 1" in lean and "The above exception was the direct cause" in lean


def test_the_lean_traceback_falls_back_where_the_file_is_gone(failing_module, tmp_path):
    module, path, _ = failing_module
    error = _raise(module)
    import os

    os.unlink(path)
    linecache.cache.pop(path, None)
    assert task_side.format_exception_text(error) == "".join(
        traceback.format_exception(type(error), error, error.__traceback__)
    )
