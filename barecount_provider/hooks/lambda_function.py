"""``BareCountLambdaHook``: the amazon provider's ``LambdaHook`` plus what the serverless runner reads.

The runner operator lets the upstream ``LambdaInvokeFunctionOperator.execute`` do the invocation (so upstream
fixes reach it); this hook keeps that Invoke's response, with its payload buffered, for the runner_result.
"""

from __future__ import annotations

import io
from typing import Any

from airflow.providers.amazon.aws.hooks.lambda_function import LambdaHook


class BareCountLambdaHook(LambdaHook):
    """``LambdaHook`` that keeps the last Invoke response for the BareCount serverless runner.

    :ivar last_invoke_response: the response of the last :meth:`invoke_lambda` (None before the first one).
        Its ``Payload`` is a fresh stream over the buffered payload, readable by the upstream operator.
    :ivar last_invoke_payload: the payload bytes of that response (b"" when it had none).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_invoke_response: dict[str, Any] | None = None
        self.last_invoke_payload: bytes = b""

    def invoke_lambda(self, **kwargs: Any) -> dict[str, Any]:
        """Invoke (:meth:`LambdaHook.invoke_lambda`) and keep the response and its payload."""
        response = dict(super().invoke_lambda(**kwargs))
        stream = response.get("Payload")
        self.last_invoke_payload = stream.read() if stream is not None else b""
        if stream is not None:
            response["Payload"] = io.BytesIO(self.last_invoke_payload)
        self.last_invoke_response = response
        return response

    def forget_last_invocation(self) -> None:
        """Forget the last Invoke (called before a new one, so a failed call leaves nothing stale)."""
        self.last_invoke_response = None
        self.last_invoke_payload = b""

    def get_function_configuration(self, function_name: str, qualifier: str | None = None) -> dict[str, Any]:
        """GetFunctionConfiguration of ``function_name`` (at ``qualifier``: a version or alias, if given)."""
        args = {"FunctionName": function_name}
        if qualifier:
            args["Qualifier"] = qualifier
        return dict(self.conn.get_function_configuration(**args))

    def get_reserved_concurrency(self, function_name: str) -> int | None:
        """GetFunctionConcurrency's ``ReservedConcurrentExecutions`` (None: unreserved, the account's pool)."""
        return self.conn.get_function_concurrency(FunctionName=function_name).get("ReservedConcurrentExecutions")

    def get_provisioned_concurrency_config(self, function_name: str, qualifier: str) -> dict[str, Any]:
        """GetProvisionedConcurrencyConfig of ``qualifier``; raises botocore's ClientError
        ``ProvisionedConcurrencyConfigNotFoundException`` when none is configured."""
        return dict(self.conn.get_provisioned_concurrency_config(FunctionName=function_name, Qualifier=qualifier))
