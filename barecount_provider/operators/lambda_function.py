"""The serverless runner class: ``LambdaRunnerOperator`` invokes an AWS Lambda function and records its run.

Lambda's memory, VPC and architecture belong to the function version, never to an invocation, and shared
configuration is never changed at run time: the size and network profile select a published version or
alias. The policy has no size -> alias mapping yet, so the DAG author's ``qualifier`` selects it; the size's
memory from the policy's size table is recorded as *requested* and compared with what the function has.

What is recorded, and from which response field, is documented in docs/runners.md (serverless).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.amazon.aws.operators.lambda_function import LambdaInvokeFunctionOperator
from airflow.sdk.exceptions import AirflowException

from barecount_provider import context as bc_context
from barecount_provider.hooks.lambda_function import BareCountLambdaHook
from barecount_provider.operators.base import (
    BARECOUNT_TEMPLATE_FIELDS,
    BareCountRunnerMixin,
    RunnerConsoleLink,
    RunnerResult,
    not_reported,
)
from barecount_provider.runtime import health as runtime_health

SUCCESS_STATUS_CODES = (200, 202, 204)
CLIENT_CONTEXT_MAX_BYTES = 3583  # Lambda's limit on the base64 ClientContext
PAYLOAD_IDENTITY_KEY = "barecount"


class LambdaFunctionError(AirflowException):
    """The function ran and failed (the Invoke response carried a FunctionError), or Lambda refused to run it."""


# ------------------------------------------------------------------------------------------- REPORT line


@dataclasses.dataclass(frozen=True)
class LambdaReport:
    """The platform's REPORT of one invocation, from the tail of its log (text or JSON log format)."""

    request_id: str | None
    duration_ms: float
    billed_duration_ms: float
    memory_size_mb: int
    max_memory_used_mb: int
    init_duration_ms: float | None  # None: warm start
    log_format: str  # "Text" or "JSON", as Lambda's LoggingConfig.LogFormat names them


_TEXT_FIELDS = {
    "request_id": re.compile(r"RequestId:\s*([0-9A-Za-z-]+)"),
    "duration_ms": re.compile(r"(?<!Billed )(?<!Init )Duration:\s*([\d.]+)\s*ms"),
    "billed_duration_ms": re.compile(r"Billed Duration:\s*([\d.]+)\s*ms"),
    "memory_size_mb": re.compile(r"Memory Size:\s*(\d+)\s*MB"),
    "max_memory_used_mb": re.compile(r"Max Memory Used:\s*(\d+)\s*MB"),
    "init_duration_ms": re.compile(r"Init Duration:\s*([\d.]+)\s*ms"),
}


def _parse_text_report(line: str) -> LambdaReport | None:
    found = {name: pattern.search(line) for name, pattern in _TEXT_FIELDS.items()}
    required = ("duration_ms", "billed_duration_ms", "memory_size_mb", "max_memory_used_mb")
    if any(found[name] is None for name in required):
        return None

    def group(name: str) -> str:
        match = found[name]
        assert match is not None
        return match.group(1)

    return LambdaReport(
        request_id=group("request_id") if found["request_id"] else None,
        duration_ms=float(group("duration_ms")),
        billed_duration_ms=float(group("billed_duration_ms")),
        memory_size_mb=int(group("memory_size_mb")),
        max_memory_used_mb=int(group("max_memory_used_mb")),
        init_duration_ms=float(group("init_duration_ms")) if found["init_duration_ms"] else None,
        log_format="Text",
    )


def _parse_json_report(line: str) -> LambdaReport | None:
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(event, dict) or event.get("type") != "platform.report":
        return None
    record = event.get("record") or {}
    metrics = record.get("metrics") or {}
    try:
        init = metrics.get("initDurationMs")
        return LambdaReport(
            request_id=record.get("requestId"),
            duration_ms=float(metrics["durationMs"]),
            billed_duration_ms=float(metrics["billedDurationMs"]),
            memory_size_mb=int(metrics["memorySizeMB"]),
            max_memory_used_mb=int(metrics["maxMemoryUsedMB"]),
            init_duration_ms=float(init) if init is not None else None,
            log_format="JSON",
        )
    except (KeyError, TypeError, ValueError):
        return None


def parse_report(log_tail: str) -> LambdaReport | None:
    """The last REPORT in a decoded log tail, in the text or the JSON log format; None when there is none
    (the tail is only the last 4 KB: a chatty function can push its REPORT out of it)."""
    for line in reversed(log_tail.splitlines()):
        line = line.strip()
        if line.startswith("REPORT "):
            report = _parse_text_report(line)
        elif line.startswith("{") and "platform.report" in line:
            report = _parse_json_report(line)
        else:
            continue
        if report is not None:
            return report
    return None


def decode_log_result(log_result: str) -> str:
    """The Invoke response's LogResult (base64 of the last 4 KB of the log) as text."""
    try:
        return base64.b64decode(log_result).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return ""


# ------------------------------------------------------------------------------------- identity in request


def client_context_with_identity(client_context: str | None, identity: Mapping[str, str]) -> str:
    """The base64 ClientContext with ``identity`` added under ``custom`` (an existing context is kept)."""
    data: dict[str, Any] = {}
    if client_context:
        try:
            decoded = json.loads(base64.b64decode(client_context))
        except (binascii.Error, ValueError) as err:
            raise ValueError(f"client_context: not base64 of a JSON object ({err})") from None
        if not isinstance(decoded, dict):
            raise ValueError(f"client_context: {decoded!r} is not a JSON object")
        data = decoded
    custom = data.get("custom")
    data["custom"] = {**(custom if isinstance(custom, dict) else {}), **identity}
    encoded = base64.b64encode(json.dumps(data, separators=(",", ":")).encode()).decode()
    if len(encoded) > CLIENT_CONTEXT_MAX_BYTES:
        raise ValueError(
            f"client_context: {len(encoded)} bytes with the BareCount identity exceeds Lambda's limit of "
            f"{CLIENT_CONTEXT_MAX_BYTES}"
        )
    return encoded


def payload_with_identity(payload: bytes | str | None, identity: Mapping[str, str]) -> bytes | str | None:
    """When the payload is a JSON object, the same object with ``identity`` under ``"barecount"``; any other
    payload is passed through unchanged (the identity then travels in the client context only)."""
    if payload is None:
        return payload
    try:
        event = json.loads(payload)
    except (TypeError, ValueError):
        return payload
    if not isinstance(event, dict):
        return payload
    existing = event.get(PAYLOAD_IDENTITY_KEY)
    event[PAYLOAD_IDENTITY_KEY] = {**(existing if isinstance(existing, dict) else {}), **identity}
    return json.dumps(event)


# ------------------------------------------------------------------------------------------------ operator


class LambdaRunnerOperator(BareCountRunnerMixin, LambdaInvokeFunctionOperator):
    """Invoke an AWS Lambda function as a BareCount serverless runner, and record its runner_result.

    Adds to :class:`LambdaInvokeFunctionOperator`: the tenant's policy checked before the invocation, the
    run's identity in the client context (and in the payload when it is a JSON object), the REPORT line
    parsed from the log tail (``log_type`` is always ``Tail``), the ``runner_result`` XCom and the runner
    metrics. A FunctionError fails the task after the runner_result is published.

    :param function_name: the function's name or ARN.
    :param qualifier: the published version or alias that implements the requested size and network
        profile (Lambda memory and VPC belong to the version; they are never changed at run time).
    :param tenant: see :class:`~barecount_provider.operators.base.BareCountRunnerMixin`.
    :param pipeline: see the mixin.
    :param size: size profile; its ``serverless.<size>.lambda`` entry is recorded as requested.
    :param network_profile: see the mixin.
    :param require_healthy: check its network profile's dependencies and the function and its qualifier
        (``lambda_function``) before launching; None: the tenant's policy. See docs/health.md.
    :param wait_for_healthy: a timedelta: wait (deferred) up to this long for them to be healthy; None: fail at
        once when one is not.
    :param payload: the event, JSON; when it is a JSON object the identity is added under ``"barecount"``.
    :param client_context: base64 JSON client context; the identity is added under ``custom``.
    :param invocation_type: RequestResponse (default) or Event; Event returns no REPORT.
    :param aws_conn_id: the Airflow AWS connection.
    """

    runner_class = "serverless"
    aws_hook_class = BareCountLambdaHook
    operator_extra_links = (*LambdaInvokeFunctionOperator.operator_extra_links, RunnerConsoleLink())
    template_fields: Sequence[str] = (*LambdaInvokeFunctionOperator.template_fields, *BARECOUNT_TEMPLATE_FIELDS)

    def __init__(
        self,
        *,
        function_name: str,
        tenant: str | None = None,
        pipeline: str | None = None,
        size: str = "m",
        network_profile: str = "public",
        require_healthy: bool | None = None,
        wait_for_healthy: timedelta | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("log_type", None)  # the REPORT line is in the tail: always ask for it
        super().__init__(
            function_name=function_name,
            tenant=tenant,
            pipeline=pipeline,
            size=size,
            network_profile=network_profile,
            require_healthy=require_healthy,
            wait_for_healthy=wait_for_healthy,
            log_type="Tail",
            **kwargs,
        )

    def runner_health_target(self, ctx: bc_context.RunContext) -> runtime_health.DependencySpec:
        """The function and the qualifier this try invokes: ``State`` Active, ``LastUpdateStatus`` Successful."""
        options = {"qualifier": self.qualifier} if self.qualifier else {}
        return runtime_health.runner_spec(
            "lambda_function",
            self.function_name,
            tenant=ctx.tenant,
            network_profile=ctx.network_profile,
            conn_id=self.aws_conn_id,
            region_name=self.region_name,
            **options,
        )

    @property
    def lambda_hook(self) -> BareCountLambdaHook:
        """``self.hook``, typed: the upstream operator builds it from ``aws_hook_class``."""
        hook = self.hook
        if not isinstance(hook, BareCountLambdaHook):
            raise TypeError(f"{type(self).__name__}.hook is a {type(hook).__name__}, not a BareCountLambdaHook")
        return hook

    def execute(self, context: Any) -> str:
        """Check the policy, add the identity, let :meth:`LambdaInvokeFunctionOperator.execute` invoke the
        function, then record the runner_result from the Invoke response the hook kept."""
        ctx = self.barecount_context(context)
        requested = self.governed_resources(ctx)  # raises PolicyViolation before anything is invoked
        qualifier, qualifier_source = self.policy_target(ctx, "lambda", self.function_name, self.qualifier)
        self.qualifier = qualifier
        self.check_health_before_launch(ctx)  # DependencyUnhealthy, or a deferral, before anything is invoked
        identity = self.identity_env(ctx)
        result = self.new_runner_result(ctx)
        self._record_requested(result, requested.get("lambda", {}), ctx.size)
        if qualifier:
            result.record("details.qualifier", qualifier, qualifier_source)
        else:
            result.record("details.qualifier", None, "none given and none in the policy: $LATEST")
        configuration = self._function_configuration(result)
        self._record_concurrency(result)

        started_at = datetime.now(UTC)
        started = time.monotonic()
        self.log.info("Invoking Lambda function %s (qualifier %s)", self.function_name, self.qualifier)
        event = payload_with_identity(self.payload, identity)
        self.payload = event
        self.client_context = client_context_with_identity(self.client_context, identity)
        self.lambda_hook.forget_last_invocation()
        upstream_error: ValueError | None = None
        try:
            super().execute(context)  # the upstream operator invokes; the hook keeps the response
        except ValueError as err:  # the upstream operator's error for a bad status code or a FunctionError
            if self.lambda_hook.last_invoke_response is None:
                raise
            upstream_error = err
        response = self.lambda_hook.last_invoke_response
        if response is None:
            raise AirflowException(f"Lambda function {self.function_name!r}: the upstream operator did not invoke it")
        wall_s = time.monotonic() - started
        result.record("timings.started_at", started_at.isoformat(), "clock of the Airflow worker, before Invoke")
        result.record("timings.finished_at", datetime.now(UTC).isoformat(), "clock of the Airflow worker, after Invoke")
        result.record("timings.wall_duration_s", round(wall_s, 3), "clock of the Airflow worker around Invoke")

        payload = self.lambda_hook.last_invoke_payload.decode()
        self._record_response(result, response, payload, configuration)
        if upstream_error is not None and result.error is None:
            result.fail("LambdaInvokeFailed", str(upstream_error))
        if result.error is not None:
            self.log.error("Lambda function %s failed: %s", self.function_name, result.error["message"])
        self.publish_runner_result(context, result)
        if result.error is not None:
            self.on_runner_failed(context, result, {"request": event, "response": payload})
            raise LambdaFunctionError(f"Lambda function {self.function_name!r}: {result.error['message']}")
        return payload

    # ---------------------------------------------------------------------------------------- recording

    def _record_requested(self, result: RunnerResult, lambda_size: Mapping[str, Any], size: str) -> None:
        source = f"policy size_tables.serverless.{size}.lambda (selects the qualifier; never applied at run time)"
        for key in ("memory_mb", "ephemeral_storage_mb"):
            if key in lambda_size:
                result.record(f"resources_requested.{key}", lambda_size[key], source)
            else:
                result.absent(f"resources_requested.{key}", f"not in the policy's size table ({source})")
        result.record("details.function_name", self.function_name, "operator argument function_name")

    def _function_configuration(self, result: RunnerResult) -> dict[str, Any]:
        """GetFunctionConfiguration of the qualifier; on failure, recorded as missing, never fatal."""
        try:
            return self.lambda_hook.get_function_configuration(self.function_name, self.qualifier)
        except Exception as err:
            reason = f"GetFunctionConfiguration failed ({type(err).__name__})"
            self.log.warning("BareCount could not read the function configuration: %s", err)
            result.record("details.configuration_error", str(err), reason)
            return {}

    def _record_concurrency(self, result: RunnerResult) -> None:
        """Reserved (function) and provisioned (qualifier) concurrency: how the function scales per event."""
        try:
            reserved = self.lambda_hook.get_reserved_concurrency(self.function_name)
        except Exception as err:
            result.absent("details.reserved_concurrency", f"GetFunctionConcurrency failed ({type(err).__name__})")
        else:
            result.record(
                "details.reserved_concurrency",
                reserved,
                "GetFunctionConcurrency ReservedConcurrentExecutions (None: unreserved, the account's pool)",
            )
        if not self.qualifier:
            result.record("details.provisioned_concurrency", None, "no qualifier: $LATEST cannot have any")
            return
        try:
            config = self.lambda_hook.get_provisioned_concurrency_config(self.function_name, self.qualifier)
        except Exception as err:
            code = (getattr(err, "response", None) or {}).get("Error", {}).get("Code")
            if code == "ProvisionedConcurrencyConfigNotFoundException":
                result.record(
                    "details.provisioned_concurrency", None, "GetProvisionedConcurrencyConfig: none configured"
                )
            else:
                result.absent(
                    "details.provisioned_concurrency",
                    f"GetProvisionedConcurrencyConfig failed ({code or type(err).__name__})",
                )
        else:
            result.record(
                "details.provisioned_concurrency",
                config.get("AllocatedProvisionedConcurrentExecutions"),
                "GetProvisionedConcurrencyConfig AllocatedProvisionedConcurrentExecutions",
            )

    def _record_response(
        self, result: RunnerResult, response: Mapping[str, Any], payload: str, configuration: Mapping[str, Any]
    ) -> None:
        config_source = "GetFunctionConfiguration"
        invoke = "Invoke response"
        status = response.get("StatusCode")
        result.record("details.status_code", status, f"{invoke} StatusCode")
        function_error = response.get("FunctionError")
        result.record("details.function_error", function_error, f"{invoke} FunctionError (None: the function succeeded)")

        executed = response.get("ExecutedVersion") or configuration.get("Version")
        if executed:
            source = f"{invoke} ExecutedVersion" if response.get("ExecutedVersion") else f"{config_source} Version"
            result.record("details.executed_version", executed, source)
        else:
            result.absent("details.executed_version", not_reported("the emulator/service", "no ExecutedVersion"))

        request_id = (response.get("ResponseMetadata") or {}).get("RequestId")
        if request_id:
            result.record("external_run_id", request_id, f"{invoke} ResponseMetadata.RequestId (x-amzn-RequestId)")
        else:
            result.absent("external_run_id", not_reported("the emulator/service", "no x-amzn-RequestId"))
        self._record_configuration(result, configuration)

        log_result = response.get("LogResult")
        report = parse_report(decode_log_result(log_result)) if log_result else None
        why = ""
        if log_result and report is None:
            why = "LogResult has no REPORT line (the 4 KB tail was filled by the function's own output)"
        elif not log_result:
            why = "no LogResult in the Invoke response (Event invocations and moto return none)"
        self._record_report(result, report, why)

        if status not in SUCCESS_STATUS_CODES:
            result.fail("LambdaInvokeFailed", f"Invoke returned status code {status}")
        elif function_error:
            result.fail(f"FunctionError.{function_error}", _function_error_message(function_error, payload))

    def _record_configuration(self, result: RunnerResult, configuration: Mapping[str, Any]) -> None:
        source = "GetFunctionConfiguration"
        gap = not_reported("the emulator/service", f"absent from {source}")
        memory = configuration.get("MemorySize")
        architectures = configuration.get("Architectures") or []
        storage = (configuration.get("EphemeralStorage") or {}).get("Size")
        for path, value, field in (
            ("resources_used.memory_size_mb", memory, "MemorySize"),
            ("resources_used.architecture", architectures[0] if architectures else None, "Architectures[0]"),
            ("resources_used.ephemeral_storage_mb", storage, "EphemeralStorage.Size"),
            ("digests.code_sha256", configuration.get("CodeSha256"), "CodeSha256"),
            ("driver_version", configuration.get("Runtime"), "Runtime"),
            ("details.log_format", (configuration.get("LoggingConfig") or {}).get("LogFormat"), "LoggingConfig.LogFormat"),
        ):
            if value is None:
                result.absent(path, gap)
            else:
                result.record(path, value, f"{source} {field}")
        for path, value in (
            ("billing_inputs.memory_size_mb", memory),
            ("billing_inputs.architecture", architectures[0] if architectures else None),
            ("billing_inputs.ephemeral_storage_mb", storage),
        ):
            if value is None:
                result.absent(path, gap)
            else:
                result.record(path, value, f"{source} (as billed)")
        result.record("billing_inputs.requests", 1, "one Invoke call")
        arn = configuration.get("FunctionArn")
        region = arn.split(":")[3] if isinstance(arn, str) and arn.count(":") >= 6 else None
        region = region or getattr(self.hook, "region_name", None)
        if region:
            name = self.function_name.split(":")[6] if self.function_name.startswith("arn:") else self.function_name
            link = (
                f"https://{region}.console.aws.amazon.com/lambda/home?region={region}#/functions/{name}"
                f"?tab=monitoring"
            )
            result.record("console_link", link, "built from the function name and the region")
        else:
            result.absent("console_link", "no region known for the function")
        if memory is not None and result.resources_requested.get("memory_mb") not in (None, memory):
            result.record(
                "details.size_mismatch",
                f"size {result.size!r} requests {result.resources_requested['memory_mb']} MB; "
                f"the qualifier's version has {memory} MB",
                "policy size table compared with GetFunctionConfiguration MemorySize",
            )

    def _record_report(self, result: RunnerResult, report: LambdaReport | None, why: str) -> None:
        if report is None:
            gap = not_reported("the emulator/service", why)
            for path in (
                "timings.duration_s",
                "timings.billed_duration_s",
                "timings.init_duration_s",
                "resources_used.max_memory_used_mb",
                "billing_inputs.billed_duration_ms",
            ):
                result.absent(path, gap)
            result.record("details.cold_start", None, gap)
            return
        source = f"REPORT line of LogResult ({report.log_format} log format)"
        result.record("timings.duration_s", report.duration_ms / 1000.0, f"{source}: Duration")
        result.record("timings.billed_duration_s", report.billed_duration_ms / 1000.0, f"{source}: Billed Duration")
        if report.init_duration_ms is None:
            result.absent("timings.init_duration_s", f"{source}: no Init Duration (a warm start)")
        else:
            result.record("timings.init_duration_s", report.init_duration_ms / 1000.0, f"{source}: Init Duration")
        result.record("details.cold_start", report.init_duration_ms is not None, f"{source}: Init Duration present")
        result.record("resources_used.max_memory_used_mb", report.max_memory_used_mb, f"{source}: Max Memory Used")
        result.record("resources_used.memory_size_mb", report.memory_size_mb, f"{source}: Memory Size")
        result.record("billing_inputs.billed_duration_ms", report.billed_duration_ms, f"{source}: Billed Duration")
        if report.request_id:
            result.record("external_run_id", report.request_id, f"{source}: RequestId")


def _function_error_message(function_error: str, payload: str) -> str:
    """``errorType: errorMessage`` from the error payload Lambda returns, else the FunctionError itself."""
    try:
        body = json.loads(payload)
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and ("errorType" in body or "errorMessage" in body):
        return f"{function_error} error {body.get('errorType', 'Error')}: {body.get('errorMessage', '')}".strip()
    return f"{function_error} error (payload: {payload[:200]!r})"
