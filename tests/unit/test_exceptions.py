"""Task-side shortcuts keep their output: the lean traceback text is Python's own (as printed under
``-X no_debug_ranges``)."""

from __future__ import annotations

import importlib.util
import linecache
import sys
import traceback

import pytest

from barecount_provider.runtime import preload, task_side
from barecount_provider.telemetry import exceptions, tracing

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


# -------------------------------------------------- the shortcuts of the task path give what they replace


def test_resource_usage_as_dict_is_dataclasses_asdict():
    import dataclasses

    from barecount_provider.telemetry.resources import ResourceUsage

    usage = ResourceUsage(cpu_seconds=0.25, read_bytes=10, write_bytes=None, peak_memory_bytes=4096)
    assert usage.as_dict() == dataclasses.asdict(usage)


def test_run_context_with_trace_is_dataclasses_replace():
    import dataclasses
    from types import SimpleNamespace

    from barecount_provider import context

    dag = SimpleNamespace(dag_id="etl", tags=["tenant:acme"], params={}, default_args={})
    ctx = context.resolve(task=None, dag=dag, dag_id="etl", run_id="r1", task_id="t", try_number=2, map_index=3)
    traced = ctx.with_trace("00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    assert traced == dataclasses.replace(ctx, traceparent=traced.traceparent)
    assert ctx.traceparent is None and traced is not ctx
    with pytest.raises(dataclasses.FrozenInstanceError):
        traced.tenant = "other"  # type: ignore[misc]


def test_cost_mapping_check_answers_as_isinstance_mapping():
    from collections.abc import Mapping
    from types import MappingProxyType

    from barecount_provider.schema import is_mapping

    for candidate in ({}, {"a": 1}, None, "x", 1, 1.5, [], (), MappingProxyType({"a": 1}), object()):
        assert is_mapping(candidate) == isinstance(candidate, Mapping), candidate


def test_task_side_tracing_builds_no_sdk_tracer_provider(monkeypatch, tmp_path):
    """No SDK TracerProvider in the processes task processes are forked from (its at-fork handler re-runs
    the resource detectors in every child): try spans and the fixed run / task spans are written without it,
    with the ids the tries refer to."""
    import json
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from barecount_provider import context
    from barecount_provider.telemetry import tracing

    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(tmp_path / "telemetry"))  # not there yet
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TRACES_EXPORTER", "file")
    tracer = tracing._build_tracing()
    monkeypatch.setattr(tracing, "get_tracing", lambda: tracer)
    dag = SimpleNamespace(dag_id="etl", tags=["tenant:acme"], params={}, default_args={})
    task = SimpleNamespace(dag=dag, upstream_task_ids={"extract"}, params={})
    ti = SimpleNamespace(
        dag_id="etl", run_id="r1", task_id="load", map_index=-1, try_number=1, task=task,
        start_date=datetime(2026, 11, 27, tzinfo=UTC), max_tries=1, _ti_context_from_server=None,
    )
    task_side.on_try_running(ti)
    task_side.on_try_finished(ti, "success")
    start, end = datetime(2026, 11, 27, tzinfo=UTC), datetime(2026, 11, 27, 0, 5, tzinfo=UTC)
    run_span = context.run_span_id_for("etl", "r1")
    trace_id = context.trace_id_for("etl", "r1")
    tracer.emit_fixed_span("dag_run etl", trace_id=trace_id, span_id=run_span, parent_span_id=None, sampled=True,
                           start=start, end=end, attributes={"airflow.dag_id": "etl"}, error=True)
    assert tracer._provider is None
    lines = [json.loads(line) for line in (tmp_path / "telemetry" / "spans.jsonl").read_text().splitlines()]
    try_span, run = lines
    assert try_span["name"] == "task_try load" and try_span["trace_id"] == f"{trace_id:032x}"
    assert try_span["parent_span_id"] == f"{context.task_span_id_for('etl', 'r1', 'load', -1):016x}"
    assert try_span["links"][0]["span_id"] == f"{context.task_span_id_for('etl', 'r1', 'extract', -1):016x}"
    assert run["span_id"] == f"{run_span:016x}" and run["parent_span_id"] is None and run["status"] == "ERROR"
    assert run["start_time_unix_nano"] == int(start.timestamp() * 1e9)


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


def test_warming_the_try_path_before_the_fork_leaves_no_trace(monkeypatch, tmp_path):
    """preload() runs a stand-in try's path in the scheduler: nothing written, sent, spooled or left bound."""
    import os

    import structlog

    from barecount_provider import outbox
    from barecount_provider.telemetry import metrics

    telemetry, evidence = tmp_path / "telemetry", tmp_path / "evidence"
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TELEMETRY_DIR", str(telemetry))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(evidence))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__OTLP_METRICS_ON", "True")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__TRACES_EXPORTER", "otlp")
    import socket

    statsd_server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a real StatsD socket: must hear nothing
    statsd_server.bind(("127.0.0.1", 0))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_ON", "True")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_PORT", str(statsd_server.getsockname()[1]))
    for name in ("BARECOUNT_CORRELATION_ID", "BARECOUNT_RUN_TOKEN", "TRACEPARENT"):
        monkeypatch.delenv(name, raising=False)
    metrics.EMIT_FAILURES.counts.clear()
    before = dict(structlog.contextvars.get_contextvars())
    preload._warm_try_path()
    try:
        with pytest.raises(BlockingIOError):
            statsd_server.recv(65535, socket.MSG_DONTWAIT)
    finally:
        statsd_server.close()
    assert not metrics.EMIT_FAILURES.counts
    assert not telemetry.exists() and not evidence.exists()
    assert not outbox._PENDING_POINTS and not outbox._PENDING_SPANS and not task_side._TRIES
    assert not [name for name in ("BARECOUNT_CORRELATION_ID", "BARECOUNT_RUN_TOKEN", "TRACEPARENT") if name in os.environ]
    assert structlog.contextvars.get_contextvars() == before
    from barecount_provider import context

    assert "barecount_warm" not in context._DECLARED  # the cluster policies ran on the stand-in, left nothing


def test_store_path_segments_are_urllib_quote():
    import urllib.parse

    from barecount_provider.evidence import store

    for value in (
        "etl", "manual__2026-11-27T12:00:00+00:00", "scheduled__2026-01-01T00:00:00.123456+00:00", "a:b+c:+",
        "a b/c", "", "x~y.z-_", "caf\u00e9", "..", "%41", "a+b c", "a:b/c",
    ):
        assert store._segment(value) == urllib.parse.quote(value, safe=""), value


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


def test_try_span_ids_without_a_span_context_are_the_span_contexts():
    from types import SimpleNamespace

    from opentelemetry.trace import format_span_id, format_trace_id

    from barecount_provider import context
    from barecount_provider.telemetry import tracing

    dag = SimpleNamespace(dag_id="etl", tags=[], params={}, default_args={})
    ctx = context.resolve(task=None, dag=dag, dag_id="etl", run_id="r1", task_id="t", try_number=1, map_index=-1)
    for sampled in (True, False):
        span = tracing.Tracing(airflow_mode=False).start_try_span(ctx, sampled=sampled)
        span_context = span.get_span_context()
        expected = (
            format_trace_id(span_context.trace_id),
            format_span_id(span_context.span_id),
            f"{int(span_context.trace_flags):02x}",
        )
        assert tracing.span_ids(span) == expected
        assert tracing.traceparent_of(span) == "00-{}-{}-{}".format(*expected)
    invalid = tracing.Tracing(airflow_mode=False).start_try_span(ctx, sampled=True)
    invalid.span_id = 0
    assert not invalid.get_span_context().is_valid and tracing.span_ids(invalid) is None
    assert tracing.span_ids(None) is None and tracing.traceparent_of(None) is None


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


def test_the_file_sink_events_sinks_are_described_once_per_emitter_and_tracer(monkeypatch, tmp_path):
    """The event's ``sinks`` is described once for a process's emitter and tracer, and again when either is
    rebuilt (another configuration)."""
    from barecount_provider import config
    from barecount_provider.telemetry import metrics

    events = str(tmp_path / "events.jsonl")
    first = task_side.sinks_description(events)
    emitter, tracer = metrics.get_emitter(), tracing.get_tracing()
    assert first == {
        **emitter.describe(), "traces": tracer.exporter_desc if tracer is not None else "off", "file": events,
        "written_by": "task",
    }
    assert task_side.sinks_description(events) is first
    monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_ON", "True")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_PORT", "8126")
    config.cache_clear()
    metrics.get_emitter.cache_clear()
    second = task_side.sinks_description(events)
    assert second is not first and second["statsd"].startswith("udp://") and ":8126" in second["statsd"]


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


def test_without_fast_paths_nothing_is_preloaded(monkeypatch):
    from barecount_provider import config

    monkeypatch.setenv("AIRFLOW__BARECOUNT__FAST_PATHS", "False")
    config.cache_clear()
    monkeypatch.setattr(preload, "_warm_try_path", lambda: pytest.fail("warmed with fast_paths = False"))
    monkeypatch.setattr(preload, "warm_task_frame_sources", lambda: pytest.fail("read sources with fast_paths = False"))
    monkeypatch.setattr(config, "warm", lambda: pytest.fail("read options with fast_paths = False"))
    preload.preload()
