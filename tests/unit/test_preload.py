"""What the scheduler prepares before it forks task processes (runtime/preload.py): the task runner's source in
linecache gives the same traceback, a missing module is skipped, and nothing is preloaded without fast_paths.
Its warm-up of a try's path with a real StatsD listener: tests/integration/test_preload.py."""

from __future__ import annotations

import linecache

import pytest

from barecount_provider.runtime import preload
from barecount_provider.telemetry import exceptions

from .test_exceptions import _python_text, _raise


def test_the_task_runners_source_read_before_the_fork_gives_the_same_traceback(failing_module):
    """preload() reads the source of the modules on every failed try's stack into linecache; a traceback
    through such a file (here: one of them stands in for the task runner) is the same text as Python's,
    taken from the inherited lines."""
    import importlib.util

    read = preload.warm_task_frame_sources()
    expected = {importlib.util.find_spec(name).origin for name in preload.TASK_FRAME_MODULES}
    assert set(read) == expected and all(path in linecache.cache for path in read)
    module, path, newline = failing_module
    error = _raise(module)
    linecache.getlines(path)  # the failing module's file is in the cache now, as the task runner's would be
    if newline != "\r":  # (linecache keeps nothing of a file with bare \r line ends)
        assert path in linecache.cache
    assert exceptions.format_exception_text(error) == _python_text(error)


def test_a_missing_frame_module_is_skipped_when_reading_sources_before_the_fork(monkeypatch):
    monkeypatch.setattr(preload, "TASK_FRAME_MODULES", ("barecount_provider.no_such_module", "json"))
    assert preload.warm_task_frame_sources() == [__import__("json").__file__]


def test_without_fast_paths_nothing_is_preloaded(monkeypatch):
    from barecount_provider import config

    monkeypatch.setenv("AIRFLOW__BARECOUNT__FAST_PATHS", "False")
    config.cache_clear()
    monkeypatch.setattr(preload, "_warm_try_path", lambda: pytest.fail("warmed with fast_paths = False"))
    monkeypatch.setattr(preload, "warm_task_frame_sources", lambda: pytest.fail("read sources with fast_paths = False"))
    monkeypatch.setattr(config, "warm", lambda: pytest.fail("read options with fast_paths = False"))
    preload.preload()
