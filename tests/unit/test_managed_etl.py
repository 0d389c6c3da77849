"""GlueRunnerOperator and EmrServerlessRunnerOperator together: both refuse bad sizes and force synchronous
waiting, both can be mapped with the BareCount arguments; and the helpers test_glue.py and
test_emr_serverless.py share (real-shape fixtures, a stub hook, a task instance that keeps its XComs).

Named after both managed ETL runners (operators/managed_etl.py, their old import path), not one module: these
tests check the two operators side by side on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

from barecount_provider.operators.base import RunnerResult
from barecount_provider.operators.emr_serverless import EmrServerlessRunnerOperator
from barecount_provider.operators.glue import GlueRunnerOperator

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
IDENTITY = {"BARECOUNT_CORRELATION_ID": "c1", "BARECOUNT_RUN_TOKEN": "t1", "TRACEPARENT": "00-a-b-01"}


def fixture(service: str, name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / service / name).read_text())


def _result() -> RunnerResult:
    return RunnerResult(
        runner_class="managed_etl", size="m", tenant="acme", pipeline="orders", network_profile="public"
    )


# ---------------------------------------------------------- shared by test_glue.py and test_emr_serverless.py


class _TI(SimpleNamespace):
    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def _stub_hook(conn: Any, hook_class: type[AwsBaseHook]) -> AwsBaseHook:
    """The operator's own hook class over a stub boto3 client."""
    hook = hook_class(aws_conn_id=None, region_name="eu-west-1")
    hook.__dict__["conn"] = conn
    hook.__dict__["_client"] = SimpleNamespace(meta=SimpleNamespace(region_name="eu-west-1", partition="aws"))
    return hook


def _ti(op: Any, monkeypatch: pytest.MonkeyPatch) -> _TI:
    emitted: list[Any] = []
    monkeypatch.setattr(
        "barecount_provider.operators.base.get_emitter", lambda: SimpleNamespace(emit=emitted.extend)
    )
    return _TI(
        task=op,
        dag_id="d",
        run_id="r",
        task_id=op.task_id,
        try_number=1,
        map_index=-1,
        pushed={},
        emitted=emitted,
    )


def _emr_op(size: str) -> EmrServerlessRunnerOperator:
    from airflow.sdk import DAG

    with DAG("emr_fixture", schedule=None):
        return EmrServerlessRunnerOperator(
            task_id="aggregate",
            application_id="00fk8d7j5q1r2s09",
            execution_role_arn="arn:aws:iam::123456789012:role/emr-serverless-job",
            job_driver={"sparkSubmit": {"entryPoint": "s3://orders-code/aggregate.py"}},
            tenant="acme",
            size=size,
        )


# ----------------------------------------------------------------------------------------------- both runners


def test_operators_refuse_bad_sizes_and_force_synchronous_waiting() -> None:
    with pytest.raises(ValueError, match="size: 'huge' is not one of"):
        GlueRunnerOperator(task_id="g", job_name="j", size="huge")
    # the runner_result is read inside execute(): asking it to return earlier is a parse-time error
    for kwargs in ({"deferrable": True}, {"wait_for_completion": False}):
        with pytest.raises(ValueError, match=r"GlueRunnerOperator: wait_for_completion=.*expected True and False"):
            GlueRunnerOperator(task_id="g2", job_name="j", **kwargs)
    with pytest.raises(ValueError, match="EmrServerlessRunnerOperator: .*deferrable=True"):
        EmrServerlessRunnerOperator(
            task_id="e2", application_id="a", execution_role_arn="arn:aws:iam::1:role/r", job_driver={}, deferrable=True
        )
    op = GlueRunnerOperator(task_id="g3", job_name="j")
    assert (op.deferrable, op.wait_for_completion) == (False, True)
    emr = _emr_op("s")
    assert (emr.deferrable, emr.wait_for_completion) == (False, True)
    assert {"size", "pipeline", "network_profile"} <= set(GlueRunnerOperator.template_fields)
    assert {"size", "pipeline", "network_profile"} <= set(EmrServerlessRunnerOperator.template_fields)


def test_operators_can_be_mapped_with_the_barecount_arguments() -> None:
    from airflow.sdk import DAG

    with DAG("managed_etl_mapped", schedule=None):
        GlueRunnerOperator.partial(task_id="g", job_name="j", tenant="acme", size="s").expand(
            script_args=[{"--day": "1"}, {"--day": "2"}]
        )
        EmrServerlessRunnerOperator.partial(
            task_id="e", application_id="a", execution_role_arn="r", network_profile="vpn"
        ).expand(job_driver=[{"sparkSubmit": {"entryPoint": "s3://b/x.py"}}])
