"""Old import path of the serverless runner; the code lives in ``barecount_provider.operators.lambda_function`` (one service a module).

Kept so that no DAG breaks: every public name this module had is importable from here and is the same
object as in its new module (tests/unit/test_operator_import_paths.py checks it). New code imports from
the new module.
"""

from __future__ import annotations

from barecount_provider.operators.lambda_function import (
    CLIENT_CONTEXT_MAX_BYTES,
    PAYLOAD_IDENTITY_KEY,
    SUCCESS_STATUS_CODES,
    LambdaFunctionError,
    LambdaReport,
    LambdaRunnerOperator,
    client_context_with_identity,
    decode_log_result,
    parse_report,
    payload_with_identity,
)

__all__ = [
    "CLIENT_CONTEXT_MAX_BYTES",
    "LambdaFunctionError",
    "LambdaReport",
    "LambdaRunnerOperator",
    "PAYLOAD_IDENTITY_KEY",
    "SUCCESS_STATUS_CODES",
    "client_context_with_identity",
    "decode_log_result",
    "parse_report",
    "payload_with_identity",
]
