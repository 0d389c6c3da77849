"""BareCount's structured log fields, carried by Airflow's own logging, and the governance of debug logs.

In the task process Airflow 3.3 logs through structlog, and its processor chain merges structlog's
context variables into every event (``structlog.contextvars.merge_contextvars``): the task runner binds
``dag_id``, ``run_id``, ``task_id``, ``try_number``, ``map_index`` and ``ti_id`` that way in ``startup()``.
:func:`bind_run_context` binds BareCount's fields next to them, so every line the task writes through Airflow's
logging (Airflow's own, the operator's ``self.log``, the task's ``logging`` and structlog calls) carries them.
Lines the task writes with ``print()`` or from subprocesses are plain text: the supervisor writes them into
the log file without context (and masks them, see :mod:`barecount_provider.redaction`).

Outside the task process (scheduler side) :func:`json_log_line` renders one BareCount line as JSON with the
same fields, redacted.

Debug governance: in production, unless the tenant's policy allows it, debug logging is refused: the level
is raised to info and one warning per process says so (:func:`govern_debug`).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO, cast

import structlog
import structlog.contextvars

from barecount_provider.adapters import airflow as airflow_adapter
from barecount_provider.redaction import get_redactor

CONTEXT_FIELDS: tuple[str, ...] = (
    "correlation_id",
    "run_token",
    "dag_id",
    "run_id",
    "task_id",
    "try_number",
    "tenant",
    "pipeline",
    "runner_class",
    "image_or_driver_digest",
    "network_profile",
    "trace_id",
    "span_id",
)
"""The fields every BareCount log line carries (when known)."""

AIRFLOW_BOUND_FIELDS: frozenset[str] = frozenset(
    {"ti_id", "dag_id", "task_id", "run_id", "try_number", "map_index"}
)
"""Bound by Airflow's task runner (``startup()``); BareCount never unbinds them."""

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
    "notset": logging.NOTSET,
}

PRODUCTION = "production"
DEBUG_REFUSED_MESSAGE = (
    "Debug logging is refused in production for tenant policy without debug_logs_in_production: "
    "the log level is raised to info"
)

# --------------------------------------------------------------------------------------------- run context

_bound_tokens: dict[str, Any] = {}


def bind_run_context(fields: Mapping[str, object]) -> None:
    """Bind BareCount's context fields for the current task process into Airflow's logging.

    Values pass through the redactor; None and empty values are left out. Binding again (the next try in a
    ``dag.test()`` process) replaces the previous fields.
    """
    unbind_run_context()
    values = {key: value for key, value in fields.items() if value is not None and value != ""}
    redacted = get_redactor().redact_mapping(values)
    _bound_tokens.update(structlog.contextvars.bind_contextvars(**redacted))


def warm_context_vars() -> None:
    """Create structlog's context variables of BareCount's fields once, in a process that forks task
    processes (they inherit them); binds nothing: every variable is set and reset at once."""
    tokens = structlog.contextvars.bind_contextvars(**dict.fromkeys(CONTEXT_FIELDS, Ellipsis))
    structlog.contextvars.reset_contextvars(**tokens)


def unbind_run_context() -> None:
    """Remove what :func:`bind_run_context` bound; a value it replaced (Airflow's ``dag_id``...) comes back."""
    if not _bound_tokens:
        return
    tokens = dict(_bound_tokens)
    _bound_tokens.clear()
    try:
        structlog.contextvars.reset_contextvars(**tokens)
    except (ValueError, RuntimeError, LookupError):
        # Bound in another context (another thread): forget our own fields, keep Airflow's.
        structlog.contextvars.unbind_contextvars(*(key for key in tokens if key not in AIRFLOW_BOUND_FIELDS))


# ------------------------------------------------------------------------------------------------- levels


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    try:
        return LEVELS[level.strip().lower()]
    except KeyError:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}") from None


def _level_name(number: int) -> str:
    if number <= logging.NOTSET:
        return "notset"
    return logging.getLevelName(number).lower()


def effective_level(requested: str, environment: str, debug_allowed: bool) -> str:
    """The level to use: a level below info becomes ``info`` in production unless the policy allows debug.

    Level names are returned in lower case, ``warn`` as ``warning``.
    """
    number = _level_number(requested)
    if number < logging.INFO and environment.strip().lower() == PRODUCTION and not debug_allowed:
        return "info"
    return _level_name(number)


class _DebugRefusal:
    """What govern_debug changed in this process, so that it can be undone and warned about once."""

    def __init__(self) -> None:
        self.active = False
        self.warned = False
        self.stdlib_levels: list[tuple[Any, int]] = []
        self.structlog_levels: list[tuple[Any, str, int]] = []

    def raise_to_info(self, target: Any, explicit: bool = False) -> None:
        """Raise a stdlib logger's or handler's own level to info (NOTSET inherits: left alone unless it is
        the root logger or the logger we were given)."""
        level = getattr(target, "level", None)
        if not isinstance(level, int) or level >= logging.INFO:
            return
        if level == logging.NOTSET and not explicit and target is not logging.getLogger():
            return
        self.stdlib_levels.append((target, level))
        target.setLevel(logging.INFO)

    def undo(self) -> None:
        for target, level in reversed(self.stdlib_levels):
            target.setLevel(level)
        for levels, name, level in reversed(self.structlog_levels):
            levels[name] = level
        self.stdlib_levels.clear()
        self.structlog_levels.clear()
        self.active = False


_REFUSAL = _DebugRefusal()


def _airflow_level_tries() -> list[Any]:
    """Airflow's per-logger structlog levels (task SDK and core), which pick the filtering logger class."""
    return airflow_adapter.per_logger_levels()


def _requested_level(target: Any) -> int:
    """The lowest level the target (a stdlib logger) or Airflow's logging (None) currently lets through."""
    if target is not None:
        if isinstance(target, logging.Logger):
            return target.getEffectiveLevel()
        level = getattr(target, "level", None)
        return level if isinstance(level, int) else logging.INFO
    levels = [logging.getLogger().getEffectiveLevel(), logging.getLogger("airflow").getEffectiveLevel()]
    for per_logger in _airflow_level_tries():
        levels.extend(level for level in per_logger.values() if isinstance(level, int))
    return min(levels)


def _drop_refused_debug(logger: Any, method_name: str, event_dict: Any) -> Any:
    """Inserted at the head of structlog's chain: loggers Airflow built at debug level before the refusal."""
    if _REFUSAL.active and method_name == "debug":
        raise structlog.DropEvent
    return event_dict


def _refuse_in_airflow_logging() -> None:
    root = logging.getLogger()
    _REFUSAL.raise_to_info(root)
    for handler in root.handlers:
        _REFUSAL.raise_to_info(handler)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            _REFUSAL.raise_to_info(logger)
    for per_logger in _airflow_level_tries():
        for name, level in list(per_logger.items()):
            if isinstance(level, int) and level < logging.INFO:
                _REFUSAL.structlog_levels.append((per_logger, name, level))
                per_logger[name] = logging.INFO
    # Loggers already built keep their level class; they share structlog's processor list, so a processor
    # at its head drops their debug events. Idempotent: inserted once per process.
    processors = structlog.get_config().get("processors")
    if isinstance(processors, list) and _drop_refused_debug not in processors:
        processors.insert(0, _drop_refused_debug)


def govern_debug(logger_or_none: Any, environment: str, debug_allowed: bool) -> None:
    """Refuse debug logging in production unless ``debug_allowed`` (the tenant's policy).

    ``logger_or_none``: a stdlib logger (or anything with ``level`` / ``setLevel``) to govern, or None for
    Airflow's logging in this process (the task logger: stdlib levels, Airflow's structlog per-logger levels
    and the loggers already built). When refused, the level becomes info and one warning per process is
    logged; when allowed, an earlier refusal in this process is undone.
    """
    if debug_allowed or environment.strip().lower() != PRODUCTION:  # nothing to refuse: no level to read
        if _REFUSAL.active:
            _REFUSAL.undo()
        return
    requested = _level_name(_requested_level(logger_or_none))
    if effective_level(requested, environment, debug_allowed) == requested:
        if _REFUSAL.active and (debug_allowed or environment.strip().lower() != PRODUCTION):
            _REFUSAL.undo()
        return
    _REFUSAL.active = True
    if logger_or_none is None:
        _refuse_in_airflow_logging()
    else:
        _REFUSAL.raise_to_info(logger_or_none, explicit=True)
    if not _REFUSAL.warned:
        _REFUSAL.warned = True
        get_logger().warning(DEBUG_REFUSED_MESSAGE, environment=environment, requested_level=requested)


def debug_refused() -> bool:
    """True while debug logging is refused in this process."""
    return _REFUSAL.active


# ------------------------------------------------------------------------------------------------- logger


class BareCountLogger:
    """A structlog logger that redacts its event and fields and respects the debug refusal.

    It writes through whatever structlog is configured with: Airflow's chain in the task process (with the
    bound context fields), Airflow's component logging on the scheduler side.
    """

    def __init__(self, name: str = "barecount", logger: Any = None) -> None:
        self.name = name
        self._logger = logger if logger is not None else structlog.get_logger(logger_name=name)

    def bind(self, **fields: Any) -> BareCountLogger:
        return BareCountLogger(self.name, self._logger.bind(**get_redactor().redact_mapping(fields)))

    def _emit(self, method: str, event: str, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
        if method == "debug" and _REFUSAL.active:
            return
        redactor = get_redactor()
        if args:
            try:
                event = event % args
            except (TypeError, ValueError, KeyError):
                event = f"{event} {args!r}"
        exc_info = fields.pop("exc_info", None)
        if exc_info:
            error = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
            if error is not None:
                redactor.redact(error)  # in place, before structlog renders the traceback
            fields["exc_info"] = exc_info
        getattr(self._logger, method)(redactor.redact_text(str(event)), **redactor.redact_mapping(fields))

    def debug(self, event: str, *args: Any, **fields: Any) -> None:
        self._emit("debug", event, args, fields)

    def info(self, event: str, *args: Any, **fields: Any) -> None:
        self._emit("info", event, args, fields)

    def warning(self, event: str, *args: Any, **fields: Any) -> None:
        self._emit("warning", event, args, fields)

    warn = warning

    def error(self, event: str, *args: Any, **fields: Any) -> None:
        self._emit("error", event, args, fields)

    def critical(self, event: str, *args: Any, **fields: Any) -> None:
        self._emit("critical", event, args, fields)

    def exception(self, event: str, *args: Any, **fields: Any) -> None:
        fields.setdefault("exc_info", True)
        self._emit("error", event, args, fields)

    def log(self, level: str | int, event: str, *args: Any, **fields: Any) -> None:
        self._emit(_level_name(max(_level_number(level), logging.DEBUG)), event, args, fields)


def get_logger(name: str = "barecount") -> BareCountLogger:
    """A logger writing through Airflow's logging, with the bound fields, redacted."""
    return BareCountLogger(name)


# ------------------------------------------------------------------------------------ JSON, scheduler side


def _timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_log_line(event: str, level: str, fields: Mapping[str, Any]) -> str:
    """One BareCount log line as JSON: timestamp, level, logger, event, the bound context fields and
    ``fields`` (which win), all redacted. No trailing newline."""
    record: dict[str, Any] = {
        "timestamp": _timestamp(),
        "level": _level_name(_level_number(level)),
        "logger": "barecount",
        "event": event,
    }
    record.update(structlog.contextvars.get_contextvars())
    record.update(fields)
    return json.dumps(get_redactor().redact_mapping(record), default=str, separators=(",", ":"))


def json_processors() -> list[Any]:
    """A structlog processor chain rendering BareCount's lines as JSON with the bound fields, redacted."""
    from barecount_provider.redaction import redact_event_dict

    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_event_dict,
        structlog.processors.JSONRenderer(default=str, separators=(",", ":")),
    ]


class JsonLogFormatter(logging.Formatter):
    """A stdlib formatter writing records as :func:`json_log_line` does (``extra=`` fields included)."""

    _STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        fields = {key: value for key, value in record.__dict__.items() if key not in self._STANDARD}
        fields["logger"] = record.name
        if record.exc_info and record.exc_info[1] is not None:
            fields["exception"] = get_redactor().redact_exception_text(record.exc_info[1])
        return json_log_line(record.getMessage(), record.levelname, fields)


class _Stderr:
    """Standard error as it is when a line is written (``sys.stderr`` may be replaced later: a test's
    capture, a redirection), never a stream that was closed since."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()

    @property
    def encoding(self) -> str:
        return getattr(sys.stderr, "encoding", "utf-8") or "utf-8"


STDERR = _Stderr()


def logs_to_stderr() -> None:
    """Send every log line of this process to standard error, leaving standard output to the caller's own
    output (the ``barecount`` command: ``--json`` prints one JSON document on stdout, nothing else).

    Airflow configures its logging when it is first imported (``settings.initialize()``): a stdlib
    ``StreamHandler`` on ``sys.stdout`` for the root logger and a structlog logger factory that writes to
    ``sys.stdout`` when given no stream. Airflow is imported here with ``sys.stdout`` pointing at standard
    error, so both take standard error, and so do the lines Airflow and its secrets masker log while it
    initialises; handlers bound to standard output before (or by anyone else) are moved to standard error.
    Never raises: logging stays as it was if any of it fails."""
    out, err = sys.stdout, cast(TextIO, STDERR)
    sys.stdout = err
    try:
        import airflow  # noqa: F401  (configures Airflow's logging, now onto standard error)
    except Exception:
        pass
    finally:
        sys.stdout = out
    stdouts = {id(stream) for stream in (out, sys.__stdout__) if stream is not None}
    loggers = [logging.getLogger()] + [
        logger for logger in list(logging.Logger.manager.loggerDict.values()) if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and id(getattr(handler, "stream", None)) in stdouts:
                try:
                    handler.setStream(err)
                except Exception:
                    pass
    try:
        factory: Any = structlog.get_config().get("logger_factory")
        if getattr(factory, "io", False) is None:  # Airflow's LoggerFactory: None means sys.stdout
            factory.io = err
    except Exception:
        pass
