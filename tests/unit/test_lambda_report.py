"""LambdaRunnerOperator's parsing and recording, on fixtures of the real response shapes.

moto 5.2.5 returns no LogResult and no ExecutedVersion, so the REPORT parser and the recording of what Lambda
reports are tested here on real-shape responses (tests/fixtures/lambda/); the request path runs against moto
in tests/integration/test_lambda_runner.py.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from barecount_provider.hooks.lambda_function import BareCountLambdaHook
from barecount_provider.operators.lambda_function import (
    LambdaFunctionError,
    LambdaReport,
    LambdaRunnerOperator,
    client_context_with_identity,
    decode_log_result,
    parse_report,
    payload_with_identity,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lambda"
IDENTITY = {"BARECOUNT_CORRELATION_ID": "c1", "BARECOUNT_RUN_TOKEN": "t1", "TRACEPARENT": "00-a-b-01"}


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def test_report_parsed_on_fixture_text_log_format_cold_start() -> None:
    tail = decode_log_result(fixture("invoke_response_text_report.json")["LogResult"])
    assert parse_report(tail) == LambdaReport(
        request_id="6f8e1c2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
        duration_ms=12.34,
        billed_duration_ms=13.0,
        memory_size_mb=128,
        max_memory_used_mb=70,
        init_duration_ms=150.2,
        log_format="Text",
    )


def test_report_parsed_on_fixture_json_log_format_warm_start() -> None:
    tail = decode_log_result(fixture("invoke_response_json_report.json")["LogResult"])
    report = parse_report(tail)
    assert report == LambdaReport(
        request_id="c0ffee00-1234-4abc-9def-0123456789ab",
        duration_ms=22.41,
        billed_duration_ms=23.0,
        memory_size_mb=1024,
        max_memory_used_mb=41,
        init_duration_ms=None,
        log_format="JSON",
    )


def test_report_absent_or_cut_off_gives_none() -> None:
    assert parse_report("START RequestId: x Version: $LATEST\nhello\n") is None
    assert parse_report("REPORT RequestId: x\tDuration: 1 ms") is None  # cut off by the 4 KB tail
    assert parse_report('{"type":"platform.report","record":{"metrics":{}}}') is None
    assert decode_log_result("not base64!") == ""


def test_identity_goes_into_client_context_and_json_object_payloads() -> None:
    existing = base64.b64encode(json.dumps({"client": {"app": "x"}, "custom": {"k": "v"}}).encode()).decode()
    decoded = json.loads(base64.b64decode(client_context_with_identity(existing, IDENTITY)))
    assert decoded == {"client": {"app": "x"}, "custom": {"k": "v", **IDENTITY}}
    assert json.loads(base64.b64decode(client_context_with_identity(None, IDENTITY))) == {"custom": IDENTITY}
    with pytest.raises(ValueError, match="client_context: not base64 of a JSON object"):
        client_context_with_identity("%%%", IDENTITY)
    assert json.loads(payload_with_identity('{"n": 1}', IDENTITY) or "") == {"n": 1, "barecount": IDENTITY}
    assert payload_with_identity("[1, 2]", IDENTITY) == "[1, 2]"  # not an object: client context only
    assert payload_with_identity(None, IDENTITY) is None


# ----------------------------------------------------------------------------- execute() on a stub hook


class _StubHook(BareCountLambdaHook):
    """The real BareCountLambdaHook over a stub boto3 client answering with a fixture response."""

    def __init__(self, response: dict[str, Any], configuration: dict[str, Any]) -> None:
        super().__init__(aws_conn_id=None, region_name="eu-west-1")
        self.response, self.configuration = dict(response), configuration
        self.calls: list[dict[str, Any]] = []
        self.conn = SimpleNamespace(invoke=self._invoke, get_function_configuration=lambda **kwargs: self.configuration)

    def _invoke(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        response = dict(self.response)
        response["Payload"] = io.BytesIO(response["Payload"].encode())
        return response


class _TI(SimpleNamespace):
    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def _run(monkeypatch: pytest.MonkeyPatch, response_fixture: str) -> tuple[LambdaRunnerOperator, _StubHook, _TI]:
    from airflow.sdk import DAG

    with DAG("lambda_fixture", schedule=None):
        op = LambdaRunnerOperator(
            task_id="ingest", function_name="orders-ingest", qualifier="3", tenant="acme", size="xs", payload='{"n": 1}'
        )
    hook = _StubHook(fixture(response_fixture), fixture("get_function_configuration.json"))
    monkeypatch.setattr(LambdaRunnerOperator, "hook", hook)
    emitted: list[Any] = []
    monkeypatch.setattr(
        "barecount_provider.operators.base.get_emitter", lambda: SimpleNamespace(emit=emitted.extend)
    )
    ti = _TI(task=op, dag_id="d", run_id="r", task_id="ingest", try_number=1, map_index=-1, pushed={}, emitted=emitted)
    return op, hook, ti


def test_runner_result_on_fixture_text_report(monkeypatch: pytest.MonkeyPatch) -> None:
    op, hook, ti = _run(monkeypatch, "invoke_response_text_report.json")
    assert json.loads(op.execute({"ti": ti})) == {"records": 120}
    assert hook.calls[0]["LogType"] == "Tail" and hook.calls[0]["Qualifier"] == "3"
    result = ti.pushed["runner_result"]
    assert result["timings"]["duration_s"] == pytest.approx(0.01234)
    assert result["timings"]["billed_duration_s"] == pytest.approx(0.013)
    assert result["timings"]["init_duration_s"] == pytest.approx(0.1502)
    assert result["details"]["cold_start"] is True
    assert result["resources_requested"] == {"memory_mb": 128, "ephemeral_storage_mb": 512}
    assert result["resources_used"] == {
        "memory_size_mb": 128, "architecture": "arm64", "ephemeral_storage_mb": 512, "max_memory_used_mb": 70,
    }
    assert result["digests"] == {"code_sha256": "9nM6m9Y1n5B7rG0sCf3u1I5oH2uJ4Qv0c8YkzQe1xkA="}
    assert result["driver_version"] == "python3.11"
    assert result["details"]["executed_version"] == "3"
    assert result["details"]["status_code"] == 200
    assert result["external_run_id"] == "6f8e1c2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b"
    assert result["billing_inputs"]["billed_duration_ms"] == 13.0
    assert result["console_link"].startswith("https://eu-west-1.console.aws.amazon.com/lambda/")
    assert result["error"] is None
    assert "REPORT line of LogResult (Text log format)" in result["field_sources"]["timings.duration_s"]
    names = [name for name, *_ in ti.emitted]
    assert names.count("barecount.runner.invocations") == 1 and "barecount.runner.errors" not in names


def test_runner_result_on_fixture_json_report_warm_start(monkeypatch: pytest.MonkeyPatch) -> None:
    op, _, ti = _run(monkeypatch, "invoke_response_json_report.json")
    op.execute({"ti": ti})
    result = ti.pushed["runner_result"]
    assert result["timings"]["init_duration_s"] is None
    assert result["field_sources"]["timings.init_duration_s"].endswith("no Init Duration (a warm start)")
    assert result["resources_used"]["max_memory_used_mb"] == 41


def test_function_error_on_fixture_fails_after_the_result_is_published(monkeypatch: pytest.MonkeyPatch) -> None:
    op, _, ti = _run(monkeypatch, "invoke_response_function_error.json")
    failed: list[Any] = []
    monkeypatch.setattr(op, "on_runner_failed", lambda context, result, event: failed.append(event))
    with pytest.raises(LambdaFunctionError, match=r"'orders-ingest': Unhandled error KeyError: 'order_id'"):
        op.execute({"ti": ti})
    result = ti.pushed["runner_result"]
    assert result["error"] == {"error_class": "FunctionError.Unhandled", "message": "Unhandled error KeyError: 'order_id'"}
    assert result["timings"]["billed_duration_s"] == pytest.approx(0.004)  # what was spent
    errors = [tags for name, _, _, tags in ti.emitted if name == "barecount.runner.errors"]
    assert errors and errors[0]["error_class"] == "FunctionError.Unhandled"
    assert json.loads(failed[0]["request"])["barecount"]["BARECOUNT_RUN_TOKEN"]  # the DLQ candidate


def test_no_log_result_is_recorded_as_not_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    op, hook, ti = _run(monkeypatch, "invoke_response_text_report.json")
    del hook.response["LogResult"]
    hook.configuration = {**hook.configuration, "MemorySize": 1024}
    op.execute({"ti": ti})
    result = ti.pushed["runner_result"]
    assert result["timings"]["duration_s"] is None
    assert result["field_sources"]["timings.duration_s"].startswith("not reported by the emulator/service: no LogResult")
    assert result["resources_used"]["memory_size_mb"] == 1024
    assert result["details"]["size_mismatch"] == "size 'xs' requests 128 MB; the qualifier's version has 1024 MB"


def test_a_function_error_on_fixture_goes_to_the_dead_letter_queue_once_per_event(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from barecount_provider import config
    from barecount_provider.hooks.dlq import DeadLetterQueueHook

    monkeypatch.setenv("AIRFLOW__BARECOUNT__DLQ_LOCATION", str(tmp_path / "dlq"))
    config.cache_clear()
    for _ in range(2):  # the same event failing on a retry: one dead letter
        op, _, ti = _run(monkeypatch, "invoke_response_function_error.json")
        with pytest.raises(LambdaFunctionError):
            op.execute({"ti": ti})
    letters = list(DeadLetterQueueHook(location=str(tmp_path / "dlq")).scan())
    assert len({letter.idempotency_key for letter in letters}) == 1
    letter = letters[0]
    assert letter.error_class == "FunctionError.Unhandled"
    assert letter.source["kind"] == "runner:serverless"
    assert op.barecount_dead_letters == [letter.idempotency_key]


def test_the_runner_lets_the_upstream_execute_invoke_the_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """The upstream LambdaInvokeFunctionOperator.execute runs (wrapped, not copied): its fixes reach the runner."""
    from airflow.providers.amazon.aws.operators.lambda_function import LambdaInvokeFunctionOperator

    upstream = LambdaInvokeFunctionOperator.execute
    calls: list[Any] = []

    def spy(self: Any, context: Any) -> Any:
        calls.append(self.payload)
        return upstream(self, context)

    monkeypatch.setattr(LambdaInvokeFunctionOperator, "execute", spy)
    op, hook, ti = _run(monkeypatch, "invoke_response_text_report.json")
    assert json.loads(op.execute({"ti": ti})) == {"records": 120}
    assert len(calls) == 1 and json.loads(calls[0])["barecount"]["BARECOUNT_RUN_TOKEN"]  # with the identity
    assert len(hook.calls) == 1
