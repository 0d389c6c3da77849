"""Structured log fields through Airflow's own structlog chain, JSON lines, and debug governance."""

from __future__ import annotations

import io
import json
import logging
from typing import Any, cast

import pytest
import structlog
import structlog.contextvars

from barecount_provider.telemetry import logging as bc_logging
from barecount_provider.telemetry.logging import (
    CONTEXT_FIELDS,
    DEBUG_REFUSED_MESSAGE,
    JsonLogFormatter,
    bind_run_context,
    debug_refused,
    effective_level,
    get_logger,
    govern_debug,
    json_log_line,
    json_processors,
    unbind_run_context,
)

HEX32 = "4f" * 16
HEX40 = "a1b2" * 10
AIRFLOW_FIELDS = {
    "ti_id": "0199-ti",
    "dag_id": "orders",
    "task_id": "load",
    "run_id": "manual__2026-11-27T13:00:00+00:00",
    "try_number": 2,
    "map_index": -1,
}
BARECOUNT_FIELDS = {
    "correlation_id": HEX32,
    "run_token": HEX40,
    "tenant": "acme",
    "pipeline": "orders",
    "runner_class": "container",
    "image_or_driver_digest": "sha256:" + "9c" * 32,
    "network_profile": "privatelink",
    "trace_id": "0af7651916cd43dd8448eb211c80319c",
    "span_id": "b7ad6b7169203331",
}


class AirflowTaskLogging:
    """structlog configured with Airflow's own task-side processor chain (JSON), writing to a buffer."""

    def __init__(self) -> None:
        from airflow.sdk._shared.logging import structlog as airflow_structlog

        self.module = airflow_structlog
        self.buffer = io.BytesIO()
        self._saved_config = structlog.get_config()
        self._saved_processors = list(self._saved_config["processors"])
        self._saved_levels = dict(airflow_structlog.PER_LOGGER_LEVELS.items())
        procs, _, final_writer = airflow_structlog.structlog_processors(json_output=True)
        structlog.configure(
            processors=[*procs, final_writer],
            wrapper_class=cast(Any, airflow_structlog.make_filtering_logger()),
            logger_factory=airflow_structlog.LoggerFactory(
                airflow_structlog.NamedBytesLogger, io=self.buffer
            ),
            cache_logger_on_first_use=False,
        )

    def set_level(self, level: int) -> None:
        self.module.PER_LOGGER_LEVELS[""] = level

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.buffer.getvalue().decode().splitlines() if line.strip()]

    def restore(self) -> None:
        self.module.PER_LOGGER_LEVELS.clear()
        self.module.PER_LOGGER_LEVELS.update(self._saved_levels)
        config = dict(self._saved_config)
        config["processors"] = self._saved_processors
        structlog.configure(**config)


@pytest.fixture
def task_logging():
    captured = AirflowTaskLogging()
    structlog.contextvars.clear_contextvars()
    yield captured
    unbind_run_context()
    structlog.contextvars.clear_contextvars()
    bc_logging._REFUSAL.undo()
    bc_logging._REFUSAL.warned = False
    captured.restore()


def test_bound_fields_are_on_every_line_written_through_airflow_logging(task_logging):
    structlog.contextvars.bind_contextvars(**AIRFLOW_FIELDS)  # what the task runner's startup() binds
    bind_run_context(BARECOUNT_FIELDS)

    get_logger().info("runner %s submitted", "glue", external_run_id="jr_123")
    structlog.get_logger(logger_name="airflow.task.operators").info("operator line")  # Airflow's / the task's

    lines = task_logging.lines()
    assert len(lines) == 2
    for line in lines:
        for field in CONTEXT_FIELDS:
            assert field in line, f"{field} missing from {line}"
        assert line["run_token"] == HEX40
        assert line["correlation_id"] == HEX32
        assert line["try_number"] == 2
    assert lines[0]["event"] == "runner glue submitted"
    assert lines[0]["external_run_id"] == "jr_123"
    assert lines[0]["logger"] == "barecount"


def test_bound_values_and_log_arguments_are_redacted(task_logging):
    secret = "hunter" + "2-" + "x9"
    key = "AK" + "IA" + "Z" * 16
    bind_run_context({**BARECOUNT_FIELDS, "network_profile": f"vpn://ops:{secret}@gw.internal", "size": None})
    get_logger().warning("calling with key %s", key, password="plain-" + secret, detail={"token": "t" * 12})

    (line,) = task_logging.lines()
    text = json.dumps(line)
    assert secret not in text and key not in text
    assert line["network_profile"] == "vpn://ops:***@gw.internal"
    assert line["password"] == "***"
    assert line["detail"] == {"token": "***"}
    assert "size" not in line
    assert line["run_token"] == HEX40


def test_exception_text_is_redacted_before_rendering(task_logging):
    token = "gh" + "p_" + "A1" * 18
    try:
        raise RuntimeError(f"push rejected for {token}")
    except RuntimeError:
        get_logger().exception("upload failed")
    text = task_logging.buffer.getvalue().decode()
    assert "upload failed" in text
    assert token not in text


def test_unbind_restores_what_airflow_bound(task_logging):
    structlog.contextvars.bind_contextvars(dag_id="orders")
    bind_run_context({"dag_id": "orders-override", "tenant": "acme"})
    assert structlog.contextvars.get_contextvars()["dag_id"] == "orders-override"
    unbind_run_context()
    context = structlog.contextvars.get_contextvars()
    assert context["dag_id"] == "orders"
    assert "tenant" not in context


def test_binding_again_replaces_the_previous_try(task_logging):
    bind_run_context({"tenant": "acme", "pipeline": "orders"})
    bind_run_context({"tenant": "globex"})
    context = structlog.contextvars.get_contextvars()
    assert context["tenant"] == "globex"
    assert "pipeline" not in context


# ------------------------------------------------------------------------------------------------ levels


@pytest.mark.parametrize(
    ("requested", "environment", "allowed", "expected"),
    [
        ("debug", "production", False, "info"),
        ("DEBUG", "Production", False, "info"),
        ("notset", "production", False, "info"),
        ("debug", "production", True, "debug"),
        ("debug", "staging", False, "debug"),
        ("debug", "development", False, "debug"),
        ("info", "production", False, "info"),
        ("warn", "production", False, "warning"),
        ("error", "production", False, "error"),
    ],
)
def test_effective_level(requested, environment, allowed, expected):
    assert effective_level(requested, environment, allowed) == expected


def test_effective_level_rejects_unknown_names():
    with pytest.raises(ValueError, match="'verbose' is not one of"):
        effective_level("verbose", "production", False)


def _warnings(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("event") == DEBUG_REFUSED_MESSAGE]


def test_debug_refused_in_production_with_exactly_one_warning(task_logging):
    task_logging.set_level(logging.DEBUG)  # [logging] logging_level = DEBUG
    # Built before the refusal, at debug level (Airflow's task runner logger is such a one).
    early = structlog.get_logger(logger_name="airflow.task").bind()
    early.debug("before refusal")

    for _ in range(3):
        govern_debug(None, "production", debug_allowed=False)
    assert debug_refused()

    early.debug("debug from an early logger")
    structlog.get_logger(logger_name="task").debug("debug from a new logger")
    get_logger().debug("debug from barecount")
    early.info("info still flows")
    for _ in range(5):
        structlog.get_logger(logger_name="task").debug("more debug")

    lines = task_logging.lines()
    events = [line["event"] for line in lines]
    assert events.count(DEBUG_REFUSED_MESSAGE) == 1
    assert "before refusal" in events
    assert "info still flows" in events
    assert not any(line["event"].startswith(("debug from", "more debug")) for line in lines)
    (warning,) = _warnings(lines)
    assert warning["level"] == "warning"
    assert warning["requested_level"] == "debug"
    assert task_logging.module.PER_LOGGER_LEVELS[""] == logging.INFO


def test_debug_allowed_when_the_tenant_policy_allows_it(task_logging):
    task_logging.set_level(logging.DEBUG)
    govern_debug(None, "production", debug_allowed=True)
    assert not debug_refused()
    structlog.get_logger(logger_name="task").debug("debug line")
    get_logger().debug("barecount debug line")
    lines = task_logging.lines()
    assert [line["event"] for line in lines] == ["debug line", "barecount debug line"]
    assert not _warnings(lines)


def test_debug_not_governed_outside_production(task_logging):
    task_logging.set_level(logging.DEBUG)
    govern_debug(None, "staging", debug_allowed=False)
    structlog.get_logger(logger_name="task").debug("debug line")
    assert [line["event"] for line in task_logging.lines()] == ["debug line"]


def test_a_later_allowing_policy_undoes_the_refusal(task_logging):
    task_logging.set_level(logging.DEBUG)
    govern_debug(None, "production", debug_allowed=False)
    govern_debug(None, "production", debug_allowed=True)
    assert not debug_refused()
    assert task_logging.module.PER_LOGGER_LEVELS[""] == logging.DEBUG
    structlog.get_logger(logger_name="task").debug("debug again")
    assert "debug again" in [line["event"] for line in task_logging.lines()]


def test_govern_a_stdlib_logger(task_logging):
    logger = logging.getLogger("barecount.test.governed")
    logger.setLevel(logging.DEBUG)
    try:
        govern_debug(logger, "production", debug_allowed=False)
        govern_debug(logger, "production", debug_allowed=False)
        assert logger.level == logging.INFO
        assert len(_warnings(task_logging.lines())) == 1
    finally:
        logger.setLevel(logging.NOTSET)


def test_info_level_is_left_alone(task_logging):
    task_logging.set_level(logging.INFO)
    govern_debug(None, "production", debug_allowed=False)
    assert not debug_refused()
    assert not task_logging.lines()


# --------------------------------------------------------------------------------------- scheduler side


def test_json_log_line_carries_bound_and_given_fields_redacted():
    structlog.contextvars.clear_contextvars()
    try:
        bind_run_context(BARECOUNT_FIELDS)
        url = "postgresql://etl:" + "s3cr" + "et9x@db/w"
        line = json.loads(
            json_log_line(
                f"evidence stored at {url}", "warn", {"dag_id": "orders", "tenant": "globex", "secret": "x"}
            )
        )
    finally:
        unbind_run_context()
    assert line["level"] == "warning"
    assert line["logger"] == "barecount"
    assert line["event"] == "evidence stored at postgresql://etl:***@db/w"
    assert line["tenant"] == "globex"  # given fields win over bound ones
    assert line["secret"] == "***"
    assert line["run_token"] == HEX40
    assert line["timestamp"].endswith("Z")


def test_json_processors_render_redacted_json():
    buffer = io.StringIO()
    logger = structlog.wrap_logger(structlog.PrintLogger(buffer), processors=json_processors())
    logger.info("hello", api_key="k" * 20, tenant="acme")
    line = json.loads(buffer.getvalue())
    assert line["api_key"] == "***"
    assert line["tenant"] == "acme"
    assert line["level"] == "info"


def test_json_formatter_for_stdlib_handlers():
    record = logging.LogRecord(
        "barecount.scheduler", logging.ERROR, __file__, 1, "sink %s down", ("statsd",), None
    )
    record.tenant = "acme"
    record.password = "hunter2x"
    line = json.loads(JsonLogFormatter().format(record))
    assert line["event"] == "sink statsd down"
    assert line["level"] == "error"
    assert line["logger"] == "barecount.scheduler"
    assert line["tenant"] == "acme"
    assert line["password"] == "***"
