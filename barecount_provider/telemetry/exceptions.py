"""A failed try's exception as span text: its traceback formatted as Python prints it (without column
markers), or its facts handed off to the forwarder, which renders the text there."""

from __future__ import annotations

import io
import os
import traceback
from typing import Any

from barecount_provider import config, redaction


def _frame_lines(error: BaseException) -> dict[str, set[int]]:
    """The source lines a traceback of ``error`` shows: file -> line numbers (chained exceptions included)."""
    needed: dict[str, set[int]] = {}
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            needed.setdefault(tb.tb_frame.f_code.co_filename, set()).add(tb.tb_lineno)
            tb = tb.tb_next
        todo.extend((current.__cause__, current.__context__))
        todo.extend(getattr(current, "exceptions", None) or ())  # exception groups
    return needed


def _source_lines(path: str, linenos: set[int]) -> dict[int, str] | None:
    """The lines ``linenos`` of the file at ``path`` as linecache gives them (the file's declared encoding,
    universal newlines; out of range: empty), reading the file only as far as the last of them; None where
    linecache must do it itself (a relative path)."""
    import tokenize

    if not os.path.isabs(path) or not linenos:
        return None
    last = max(linenos)
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks: list[bytes] = []
        newlines = 0
        while chunk := os.read(fd, 32768):  # without a buffered file object
            chunks.append(chunk)
            if b"\r" in chunk:  # \r\n or \r line ends: the whole file, split as universal newlines do
                while chunk := os.read(fd, 65536):
                    chunks.append(chunk)
                break
            newlines += chunk.count(b"\n")
            if newlines >= last:
                break
    finally:
        os.close(fd)
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    head = data[: data.find(b"\n", data.find(b"\n") + 1) + 1 or None]  # the first two lines
    if data.startswith(b"\xef\xbb\xbf") or b"coding" in head:  # a BOM or a coding cookie: as tokenize reads it
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    else:
        encoding = "utf-8"  # what tokenize.detect_encoding answers for a file with neither
    if b"\r" in data:
        raw = data.splitlines()
        return {lineno: raw[lineno - 1].decode(encoding) if 1 <= lineno <= len(raw) else "" for lineno in linenos}
    lines: dict[int, str] = {}  # \n only: find the wanted lines without making an object of every line
    position, number = 0, 1
    for wanted in sorted(linenos):
        while number < wanted and position >= 0:
            # Skip a run of whole lines at once: count the newlines in a stretch shorter than the lines left
            # at 24 bytes a line; one line at a time where the stretch holds too many or none.
            end = position + (wanted - number) * 24
            count = data.count(b"\n", position, end)
            if 0 < count <= wanted - number:
                position = data.rfind(b"\n", position, end) + 1
                number += count
            else:
                position = data.find(b"\n", position) + 1 or -1
                number += 1
        if wanted < 1 or position < 0 or position >= len(data):
            lines[wanted] = ""
            continue
        end = data.find(b"\n", position)
        lines[wanted] = (data[position:] if end < 0 else data[position:end]).decode(encoding)
    return lines


_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"
_RECURSIVE_CUTOFF = 3  # traceback._RECURSIVE_CUTOFF: a line repeated more often is summarised


def _chain(error: BaseException) -> list[tuple[str | None, BaseException]] | None:
    """The exceptions Python prints for ``error``, oldest first, each with the message that leads to the
    next; None where ``traceback`` must do it (exception groups, syntax errors)."""
    chain: list[tuple[str | None, BaseException]] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, (BaseExceptionGroup, SyntaxError)):
            return None
        seen.add(id(current))
        cause, context = current.__cause__, current.__context__
        if cause is not None and id(cause) not in seen:
            chain.append((_CAUSE, current))
            current = cause
        elif context is not None and not current.__suppress_context__ and id(context) not in seen:
            chain.append((_CONTEXT, current))
            current = context
        else:
            chain.append((None, current))
            current = None
    chain.reverse()
    return chain


def _exception_only(error: BaseException) -> list[str]:
    """``traceback.format_exception_only`` of an exception that is neither a group nor a syntax error."""
    kind = type(error)
    name, module = kind.__qualname__, kind.__module__
    if module not in ("__main__", "builtins"):
        name = f"{module if isinstance(module, str) else '<unknown>'}.{name}"
    try:
        message = str(error)
    except Exception:
        message = "<exception str() failed>"
    lines = [f"{name}: {message}\n" if message else f"{name}\n"]
    notes = getattr(error, "__notes__", None)
    if isinstance(notes, (list, tuple)):
        for note in notes:
            if not isinstance(note, str):
                try:
                    note = str(note)
                except Exception:
                    note = "<note str() failed>"
            lines.extend(part + "\n" for part in note.split("\n"))
    elif notes is not None:
        return []  # a __notes__ of another kind: traceback's own wording
    return lines


def _repeated(count: int) -> list[str]:
    """traceback's summary of a frame line shown ``count`` times in a row (none up to the cutoff)."""
    if count <= _RECURSIVE_CUTOFF:
        return []
    repeated = count - _RECURSIVE_CUTOFF
    return [f"  [Previous line repeated {repeated} more time{'s' if repeated > 1 else ''}]\n"]


def _lean_format(error: BaseException, source: Any) -> str | None:
    """The text of ``traceback.format_exception(error)`` without column markers, built from the traceback's
    frames and ``source(path, lineno)``; None where only ``traceback`` gives the right text."""
    import sys

    if getattr(sys, "tracebacklimit", None) is not None:
        return None
    chain = _chain(error)
    if chain is None:
        return None
    out: list[str] = []
    for message, current in chain:
        if message is not None:
            out.append(message)
        tb = current.__traceback__
        if tb is not None:
            out.append("Traceback (most recent call last):\n")
            last: tuple[str, int | None, str] | None = None
            count = 0
            while tb is not None:
                code = tb.tb_frame.f_code
                key = (code.co_filename, tb.tb_lineno, code.co_name)
                if key != last:
                    out.extend(_repeated(count))
                    last, count = key, 0
                count += 1
                if count <= _RECURSIVE_CUTOFF:
                    out.append(f'  File "{key[0]}", line {key[1]}, in {key[2]}\n')
                    line = source(key[0], key[1], tb.tb_frame.f_globals).strip() if key[1] is not None else ""
                    if line:
                        out.append(f"    {line}\n")
                tb = tb.tb_next
            out.extend(_repeated(count))
        only = _exception_only(current)
        if not only:
            return None
        out.extend(only)
    return "".join(out)


def format_exception_text(error: BaseException) -> str:
    """The traceback of ``error`` as Python prints it under ``-X no_debug_ranges``: the text of
    ``traceback.format_exception(error)`` without the ``^^^^`` column markers, reading only the source lines
    it shows.

    The markers are found by parsing and compiling every source line of the stack (``ast.parse``), the
    costliest part of formatting a traceback in a task process (about 0.3 ms and 50 page faults for a short
    one); the task's log, written by Airflow, keeps them. linecache reads and keeps every line of every file
    of a traceback (the task runner's, the operator's, the DAG file): about 1 ms and a few hundred page
    faults in a task process whose cache is cold, for the few lines the traceback shows. Those lines are
    read here, each file only as far as the last line shown, and not kept (files already in linecache, such
    as the Airflow modules preload() reads, are taken from it). The common case (a chain of ordinary
    exceptions) is formatted here from the frames, as ``traceback`` formats it, without its per-frame
    objects (0.6 ms and 120 page faults for a short traceback in a forked task process); exception groups,
    syntax errors and a set ``sys.tracebacklimit`` go through ``traceback`` itself, as does every case with
    ``[barecount] fast_paths = False`` (the same text).
    """
    import linecache

    read: dict[str, dict[int, str] | None] = {}
    needed: dict[str, set[int]] = {}

    def source(path: str, lineno: int, module_globals: Any) -> str:
        if path not in read:
            lines = None
            if path not in linecache.cache:
                if not needed:
                    needed.update(_frame_lines(error))
                try:
                    lines = _source_lines(path, needed.get(path, {lineno}))
                except (OSError, SyntaxError, UnicodeDecodeError, LookupError):
                    lines = None
            else:
                linecache.checkcache(path)  # as traceback does: a file changed on disk is read again
            read[path] = lines
        lines = read[path]
        if lines is None or lineno not in lines:  # linecache, as traceback uses it (a loader may have the source)
            linecache.lazycache(path, module_globals)
            return linecache.getline(path, lineno)
        return lines[lineno]

    text = _lean_format(error, source) if config.fast_paths() else None
    if text is not None:
        return text
    exception = traceback.TracebackException(type(error), error, error.__traceback__, compact=True)
    for current in _all_exceptions(exception):
        for frame in current.stack:
            frame.colno = frame.end_colno = None
    return "".join(exception.format())


PENDING_STACKTRACE = "barecount.pending.stacktrace"
"""Span event attribute of a failure whose ``exception.stacktrace`` the spool's forwarder renders (see
:func:`exception_facts`); the forwarder replaces it with the text before it writes or exports the span."""


def exception_facts(error: BaseException) -> list[list[Any]] | None:
    """What :func:`format_exception_text` would print for ``error``, without reading a source line: for each
    exception of the chain, oldest first, the line that leads to it, its frames (``[path, line, function,
    times in a row]``) or None, and its last lines (type, message, notes), redacted here, where the task's
    registered secrets are known. The forwarder renders the text from them (:func:`render_exception_facts`),
    reading the source lines itself: code, which Airflow shows in its UI, not the try's data; it redacts them
    with the value patterns. None where only ``traceback`` gives the right text (exception groups, syntax
    errors, a set ``sys.tracebacklimit``, ``[barecount] fast_paths = False``: the task formats the text)."""
    import sys

    if getattr(sys, "tracebacklimit", None) is not None or not config.fast_paths():
        return None
    chain = _chain(error)
    if chain is None:
        return None
    redact_text = redaction.redact_text
    facts: list[list[Any]] = []
    for message, current in chain:
        tb = current.__traceback__
        frames: list[list[Any]] | None = None
        if tb is not None:
            frames = []
            last: tuple[str, int | None, str] | None = None
            while tb is not None:
                code = tb.tb_frame.f_code
                key = (code.co_filename, tb.tb_lineno, code.co_name)
                if key == last:
                    frames[-1][3] += 1  # a recursion: counted, as traceback summarises it
                else:
                    frames.append([key[0], key[1], key[2], 1])
                    last = key
                tb = tb.tb_next
        only = _exception_only(current)
        if not only:
            return None
        facts.append([message, frames, [redact_text(line) for line in only]])
    return facts


def render_exception_facts(facts: list[list[Any]]) -> str:
    """The text of :func:`format_exception_text` from :func:`exception_facts`, source lines read here (in
    the forwarder: its linecache stays warm from one try to the next). Not redacted: the caller redacts it."""
    import linecache

    out: list[str] = []
    checked: set[str] = set()
    for message, frames, only in facts:
        if message is not None:
            out.append(message)
        if frames is not None:
            out.append("Traceback (most recent call last):\n")
            for path, lineno, name, count in frames:
                if path not in checked:
                    linecache.checkcache(path)  # a file changed on disk is read again
                    checked.add(path)
                line = linecache.getline(path, lineno).strip() if lineno is not None else ""
                for _ in range(min(count, _RECURSIVE_CUTOFF)):
                    out.append(f'  File "{path}", line {lineno}, in {name}\n')
                    if line:
                        out.append(f"    {line}\n")
                out.extend(_repeated(count))
        out.extend(only)
    return "".join(out)


def _all_exceptions(exception: traceback.TracebackException) -> list[traceback.TracebackException]:
    """The exception and every one chained to it or grouped in it."""
    found: list[traceback.TracebackException] = []
    todo = [exception]
    seen: set[int] = set()
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        todo.extend((current.__cause__, current.__context__))  # type: ignore[arg-type]
        todo.extend(getattr(current, "exceptions", None) or ())
    return found

