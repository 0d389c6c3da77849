"""``[barecount] policy_invalid``: what an invalid policy file does to task processes, and what the evidence says."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from barecount_provider import config, context, policy

BAD_POLICY = "version: 1\ndefaults:\n  max_size: xxl\n  limits: {max_workers: 0}\n"


@pytest.fixture
def invalid_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "policy.yaml"
    path.write_text(BAD_POLICY, encoding="utf-8")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__POLICY_PATH", str(path))
    monkeypatch.delenv("AIRFLOW__BARECOUNT__POLICY_INVALID", raising=False)
    monkeypatch.delenv("AIRFLOW__BARECOUNT__ENVIRONMENT", raising=False)
    config.cache_clear()
    policy.get_policy.cache_clear()
    yield path
    config.cache_clear()
    policy.get_policy.cache_clear()


def _mode(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(f"AIRFLOW__BARECOUNT__{name.upper()}", value)
    config.cache_clear()
    return config.policy_invalid()


def test_policy_invalid_defaults_to_fail_in_production_and_warn_elsewhere(invalid_policy, monkeypatch) -> None:
    assert config.policy_invalid() == "warn"
    assert _mode(monkeypatch, environment="staging") == "warn"
    assert _mode(monkeypatch, environment="production") == "fail"
    assert _mode(monkeypatch, environment="production", policy_invalid="WARN") == "warn"
    assert _mode(monkeypatch, environment="development", policy_invalid="fail") == "fail"
    monkeypatch.setenv("AIRFLOW__BARECOUNT__POLICY_INVALID", "sometimes")
    config.cache_clear()
    with pytest.raises(ValueError, match=r"\[barecount\] policy_invalid: 'sometimes' is not one of fail, warn"):
        config.policy_invalid()


def test_the_option_is_published_to_airflow() -> None:
    options = config.provider_config_section()["barecount"]["options"]
    assert options["policy_invalid"]["default"] == "" and options["policy_invalid"]["example"] == "fail"


def _ctx(tenant: str = "acme") -> context.RunContext:
    return context.RunContext(
        tenant=tenant, pipeline="orders", runner_class="serverless", size="m", network_profile="public",
        dag_id="d", run_id="r", task_id="t", try_number=1, map_index=-1, correlation_id="c" * 32, run_token="t" * 40,
    )


def test_fail_refuses_a_runner_task_before_launch_with_the_policy_errors(invalid_policy, monkeypatch) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from barecount_provider.operators.lambda_function import LambdaRunnerOperator

    _mode(monkeypatch, environment="production")
    op = LambdaRunnerOperator(task_id="t", function_name="f")
    with pytest.raises(AirflowFailException) as refused:
        op.governed_resources(_ctx())
    message = str(refused.value)
    assert message.startswith(
        f"BareCount refuses to launch: the governance policy {invalid_policy} is invalid ([barecount] policy_invalid = fail)"
    )
    assert f"{invalid_policy}: defaults.max_size: 'xxl' is not one of xs, s, m, l, xl" in message
    assert f"{invalid_policy}: defaults.limits.max_workers: 0 is not an integer >= 1" in message
    [exception] = op.barecount_policy_exceptions
    assert exception["rule"] == "policy_invalid" and exception["mode"] == "fail" and exception["tenant"] == "acme"
    assert len(exception["problems"]) == 2


def test_warn_lets_the_policy_check_fail_as_before_and_records_the_exception(invalid_policy, monkeypatch) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from barecount_provider.operators.lambda_function import LambdaRunnerOperator

    _mode(monkeypatch, policy_invalid="warn")
    op = LambdaRunnerOperator(task_id="t", function_name="f")
    with pytest.raises(policy.PolicyError) as raised:  # a runner cannot be sized without a policy
        op.governed_resources(_ctx())
    assert not isinstance(raised.value, AirflowFailException)
    assert [e["mode"] for e in op.barecount_policy_exceptions] == ["warn"]


def test_a_valid_policy_records_no_exception(tmp_path, monkeypatch) -> None:
    from barecount_provider.operators.lambda_function import LambdaRunnerOperator

    monkeypatch.setenv("AIRFLOW__BARECOUNT__POLICY_PATH", "")
    config.cache_clear()
    policy.get_policy.cache_clear()
    op = LambdaRunnerOperator(task_id="t", function_name="f")
    assert op.governed_resources(_ctx())["lambda"]["memory_mb"] == 1024
    assert not getattr(op, "barecount_policy_exceptions", None)


@pytest.mark.parametrize("mode", ["warn", "fail"])
def test_every_try_entry_made_while_the_policy_is_invalid_carries_the_exception(invalid_policy, monkeypatch, tmp_path, mode) -> None:
    """A local task (no runner): the cluster policy notes the invalid policy on the task when the DAG file is
    parsed (in the task process too), and the try's evidence entry carries it."""
    from airflow.dag_processing.dagbag import DagBag

    from barecount_provider.runtime import entries as evidence_task

    _mode(monkeypatch, policy_invalid=mode)
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "local.py").write_text(
        "from datetime import datetime\n"
        "from airflow.providers.standard.operators.empty import EmptyOperator\n"
        "from airflow.sdk import DAG\n"
        "with DAG('local', schedule=None, start_date=datetime(2026, 1, 1), tags=['tenant:acme']):\n"
        "    EmptyOperator(task_id='a')\n"
    )
    bag = DagBag(dag_folder=str(folder))
    assert not bag.import_errors
    task = bag.dags["local"].get_task("a")
    start = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    ti = SimpleNamespace(dag_id="local", run_id="r", task_id="a", map_index=-1, try_number=1, task=task,
                         start_date=start, max_tries=0, _ti_context_from_server=None, queued_dttm=None)
    ctx = context.resolve_for_ti(ti)
    entry = evidence_task.build_try_entry(ctx, ti, state="success", started_at=start, ended_at=start, duration_s=0.0,
                                          metrics={}, trace=None, error=None)
    [exception] = entry["policy"]["exceptions"]
    assert exception["rule"] == "policy_invalid" and exception["mode"] == mode and exception["tenant"] == "acme"
    assert exception["limit"] == str(invalid_policy)
    assert f"{invalid_policy}: defaults.max_size: 'xxl' is not one of xs, s, m, l, xl" in exception["problems"]
