"""Retries with capped budgets: classification, backoff, the ledger on SQLite, the retry policy's decisions,
and how the cluster policy attaches it (and what Airflow serializes of it)."""

from __future__ import annotations

import contextlib
import os
import time
import urllib.error
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import botocore.exceptions
import pytest
import requests
from airflow.sdk.definitions.retry_policy import (
    ExceptionRetryPolicy,
    RetryAction,
    RetryRule,
)

from barecount_provider import cluster_policies
from barecount_provider.policy import RetryBudget, load_policy, parse_policy, validate_file
from barecount_provider.recovery import budgets, classify, retry

from ..conftest import PolicyFile

# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def fresh_ledger() -> Any:
    budgets.clear_caches()
    retry._BUDGETS.clear()
    retry._BUDGETS_OF[0] = None
    yield
    budgets.clear_caches()
    retry._BUDGETS.clear()
    retry._BUDGETS_OF[0] = None


def budget(**overrides: Any) -> RetryBudget:
    values: dict[str, Any] = {
        "max_retries_per_task": 3,
        "max_retries_per_run": 10,
        "max_retries_per_window": 100,
        "window_seconds": 3600,
        "backoff_base_seconds": 30.0,
        "backoff_max_seconds": 900.0,
        "jitter": False,
        "window_scope": "tenant",
    }
    values.update(overrides)
    return RetryBudget(**values)


DEFAULTS = load_policy().defaults.failure_classes


def kind_of(error: BaseException, runner_class: str = "local", runner_error: dict[str, str] | None = None) -> str:
    return classify.classify(error, DEFAULTS, runner_class, runner_error).kind


def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


def http_error(status: int) -> requests.exceptions.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.exceptions.HTTPError(f"{status}", response=response)


# ---------------------------------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (client_error("ThrottlingException", 400), "transient"),  # AWS throttles with a 400: the code decides
        (client_error("TooManyRequestsException", 429), "transient"),
        (client_error("InternalServerError", 500), "transient"),
        (client_error("ValidationException", 400), "permanent"),
        (client_error("AccessDeniedException", 403), "permanent"),
        (client_error("SomethingNew", 503), "transient"),
        (client_error("SomethingNew", 404), "permanent"),
        (http_error(429), "transient"),
        (http_error(502), "transient"),
        (http_error(501), "permanent"),  # an exact status beats the 5xx range
        (http_error(400), "permanent"),
        (urllib.error.HTTPError("http://x", 503, "unavailable", {}, None), "transient"),  # type: ignore[arg-type]
        (ConnectionResetError("reset by peer"), "transient"),
        (TimeoutError("read"), "transient"),
        (requests.exceptions.ConnectionError("refused"), "transient"),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), "transient"),
        (ValueError("bad input"), "permanent"),
        (KeyError("column"), "permanent"),
        (TypeError("None"), "permanent"),
        (ZeroDivisionError(), "permanent"),
        (RuntimeError("Rate exceeded"), "transient"),
        (RuntimeError("Invalid parameter: size"), "permanent"),
        (RuntimeError("no idea"), "transient"),  # unmatched
    ],
    ids=lambda value: value if isinstance(value, str) else type(value).__name__,
)
def test_default_classification(error: BaseException, expected: str) -> None:
    assert kind_of(error) == expected


def test_the_cause_of_a_wrapped_error_is_looked_at() -> None:
    try:
        try:
            raise client_error("ValidationException", 400)
        except Exception as err:
            raise RuntimeError("the step failed") from err
    except RuntimeError as wrapped:
        result = classify.classify(wrapped, DEFAULTS)
    assert result.kind == "permanent"
    assert result.rule == "failure_classes.permanent.error_codes"
    assert "ValidationException" in result.describe()


def test_airflow_exception_status_code_class_default_is_not_an_http_status() -> None:
    from airflow.sdk.exceptions import AirflowException

    result = classify.classify(AirflowException("the job failed"), DEFAULTS)
    assert result.rule == "failure_classes.unmatched"


@pytest.mark.parametrize(
    ("runner_class", "error_class", "expected"),
    [
        ("container", "PodFailed.Evicted", "transient"),
        ("container", "PodFailed.OOMKilled", "permanent"),
        ("container", "EcsTaskFailed.SpotInterruption", "transient"),
        ("managed_etl", "GlueJobRun.TIMEOUT", "transient"),
        ("dedicated", "InsufficientInstanceCapacity", "transient"),
        ("dedicated", "InvalidAMIID.NotFound", "permanent"),
        ("serverless", "InvalidRequestContentException", "permanent"),
    ],
)
def test_runner_class_defaults_read_the_runner_error(runner_class: str, error_class: str, expected: str) -> None:
    from airflow.sdk.exceptions import AirflowException

    result = classify.classify(AirflowException("failed"), DEFAULTS, runner_class, {"error_class": error_class, "message": "x"})
    assert result.kind == expected
    assert result.rule.startswith(f"failure_classes.runner_classes.{runner_class}.")


def test_a_lambda_timeout_is_transient_and_an_import_error_permanent() -> None:
    from barecount_provider.operators.lambda_function import LambdaFunctionError

    timeout = LambdaFunctionError("Lambda function 'f': Task timed out after 3.00 seconds")
    broken = LambdaFunctionError("Lambda function 'f': Runtime.ImportModuleError: No module named 'x'")
    assert kind_of(timeout, "serverless", {"error_class": "FunctionError.Unhandled", "message": str(timeout)}) == "transient"
    assert kind_of(broken, "serverless", {"error_class": "FunctionError.Unhandled", "message": str(broken)}) == "permanent"


def test_tenant_rules_come_from_the_policy() -> None:
    policy = parse_policy(
        """
version: 1
tenants:
  strict:
    failure_classes:
      unmatched: permanent
      runner_classes:
        local:
          transient: {exceptions: [builtins.RuntimeError], messages: ['(?i)flaky']}
"""
    )
    strict = policy.for_tenant("strict").failure_classes
    assert classify.classify(RuntimeError("x"), strict).kind == "transient"
    assert classify.classify(LookupError("x"), strict).kind == "permanent"
    assert classify.classify(Exception("something"), strict).rule == "failure_classes.unmatched"
    assert classify.classify(Exception("something"), strict).kind == "permanent"
    # the general lists are inherited (mappings merge key by key)
    assert strict.transient.error_codes == DEFAULTS.transient.error_codes


def test_failure_class_mistakes_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("policy.yaml").write_text(
        """
version: 1
defaults:
  retry_budget: {window_scope: dag}
  failure_classes:
    unmatched: maybe
    transient: {messages: ['(unclosed'], status_codes: [700, '5x'], exceptions: ['not a class']}
    runner_classes: {gpu: {}}
"""
    )
    problems = [str(problem) for problem in validate_file("policy.yaml")]
    assert "policy.yaml: defaults.retry_budget.window_scope: 'dag' is not one of tenant, pipeline" in problems
    assert "policy.yaml: defaults.failure_classes.unmatched: 'maybe' is not one of transient, permanent" in problems
    assert any(p.startswith("policy.yaml: defaults.failure_classes.transient.messages[0]: '(unclosed' is not a valid regular expression") for p in problems)
    assert "policy.yaml: defaults.failure_classes.transient.status_codes[0]: '700' is not an HTTP status such as 429, '503' or a range such as '5xx'" in problems
    assert any(p.startswith("policy.yaml: defaults.failure_classes.transient.exceptions[0]: 'not a class'") for p in problems)
    assert any(p.startswith("policy.yaml: defaults.failure_classes.runner_classes.gpu: 'gpu' is not a runner class") for p in problems)
    assert len(problems) == 7


# ----------------------------------------------------------------------------------------------- backoff


def test_backoff_doubles_and_is_capped() -> None:
    plain = budget(backoff_base_seconds=30, backoff_max_seconds=100, jitter=False)
    assert [retry.backoff_seconds(plain, n) for n in (1, 2, 3, 4, 500)] == [30, 60, 100, 100, 100]


def test_jitter_stays_between_half_and_all_of_the_delay() -> None:
    jittered = budget(backoff_base_seconds=40, backoff_max_seconds=1000, jitter=True)
    delays = [retry.backoff_seconds(jittered, 2) for _ in range(200)]
    assert all(40 <= delay <= 80 for delay in delays)
    assert len(set(delays)) > 100


# ------------------------------------------------------------------------------------ the ledger (SQLite)


def request(task_id: str = "t", try_number: int = 1, *, tenant: str = "acme", run_id: str = "r1", pipeline: str = "p") -> budgets.RetryRequest:
    return budgets.RetryRequest(tenant, pipeline, "local", "dag", run_id, task_id, -1, try_number, "transient")


def test_ledger_per_task_budget(index_url: str) -> None:
    ledger = budgets.get_ledger(index_url)
    limits = budget(max_retries_per_task=2)
    decisions = [ledger.spend(request(try_number=n), limits) for n in (1, 2, 3)]
    assert [d.granted for d in decisions] == [True, True, False]
    assert decisions[2].budget == budgets.PER_TASK and decisions[2].limit == 2
    assert "retry budget exhausted: max_retries_per_task = 2" in decisions[2].describe(limits)


def test_ledger_per_run_budget(index_url: str) -> None:
    ledger = budgets.get_ledger(index_url)
    limits = budget(max_retries_per_run=3)
    granted = [ledger.spend(request(task_id=f"t{i}"), limits).granted for i in range(5)]
    assert granted == [True, True, True, False, False]
    assert ledger.spend(request(task_id="t9", run_id="r2"), limits).granted  # another run has its own budget


def test_ledger_rolling_window_per_tenant(index_url: str) -> None:
    ledger = budgets.get_ledger(index_url)
    limits = budget(max_retries_per_window=2, window_seconds=60)
    start = 1_000_000.0
    assert ledger.spend(request("a", run_id="r1"), limits, now=start).granted
    assert ledger.spend(request("b", run_id="r2"), limits, now=start + 10).granted
    refused = ledger.spend(request("c", run_id="r3"), limits, now=start + 20)
    assert not refused.granted and refused.budget == budgets.PER_WINDOW
    assert "of tenant 'acme' in the last 60 s (rolling window)" in refused.describe(limits)
    assert ledger.spend(request("d", run_id="r4", tenant="other"), limits, now=start + 20).granted  # other tenant
    # the first grant leaves the window: room for one more
    assert ledger.spend(request("e", run_id="r5"), limits, now=start + 61).granted
    assert not ledger.spend(request("f", run_id="r6"), limits, now=start + 62).granted
    assert ledger.window_spent("acme", limits, now=start + 62) == 2


def test_ledger_window_per_pipeline(index_url: str) -> None:
    ledger = budgets.get_ledger(index_url)
    limits = budget(max_retries_per_window=1, window_scope="pipeline")
    assert ledger.spend(request("a", run_id="r1", pipeline="orders"), limits).granted
    assert not ledger.spend(request("b", run_id="r2", pipeline="orders"), limits).granted
    assert ledger.spend(request("c", run_id="r3", pipeline="billing"), limits).granted


def test_ledger_decides_a_try_once(index_url: str) -> None:
    ledger = budgets.get_ledger(index_url)
    limits = budget(max_retries_per_task=1)
    first = ledger.spend(request(try_number=1), limits)
    again = ledger.spend(request(try_number=1), limits)
    assert first.granted and again.granted and again.replayed
    assert len(ledger.rows(outcome="granted")) == 1
    assert ledger.prune(time.time() + 1) == 1 and ledger.rows() == []


# -------------------------------------------------------------------------------- the retry policy itself


class FakeTask:
    def __init__(self, task_id: str = "load", dag: Any = None, runner_class: str | None = None) -> None:
        self.task_id = task_id
        self.dag = dag or SimpleNamespace(dag_id="orders_dag", tags=["tenant:acme", "pipeline:orders"], params={}, default_args={})
        if runner_class:
            self.runner_class = runner_class


def fake_ti(task: Any, try_number: int = 1, *, run_id: str = "run-1", should_retry: bool = True) -> Any:
    return SimpleNamespace(
        task=task,
        dag_id=task.dag.dag_id,
        run_id=run_id,
        task_id=task.task_id,
        map_index=-1,
        try_number=try_number,
        _ti_context_from_server=SimpleNamespace(should_retry=should_retry, dag_run=SimpleNamespace(conf={})),
    )


class Captured:
    def __init__(self) -> None:
        self.points: list[tuple[str, str, float, dict[str, Any]]] = []

    def emit(self, points: Any) -> None:
        self.points.extend((name, kind, value, dict(tags)) for name, kind, value, tags in points)


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Captured:
    from barecount_provider.telemetry import metrics

    sink = Captured()
    monkeypatch.setattr(metrics, "get_emitter", lambda: sink)
    return sink


TIGHT = """
version: 1
defaults:
  retry_budget: {max_retries_per_task: 2, max_retries_per_run: 3, max_retries_per_window: 4, window_seconds: 600,
                 backoff_base_seconds: 10, backoff_max_seconds: 15, jitter: false}
"""


def evaluate(task: Any, error: BaseException, try_number: int = 1, **kwargs: Any) -> Any:
    ti = fake_ti(task, try_number, **kwargs)
    return retry.BareCountRetryPolicy().evaluate(error, try_number, 3, {"ti": ti})  # type: ignore[arg-type]


def test_transient_failure_is_retried_with_the_policy_backoff(
    index_url: str, captured: Captured, policy_file: PolicyFile
) -> None:
    policy_file(TIGHT)
    task = FakeTask()
    first = evaluate(task, TimeoutError("read timed out"), 1)
    second = evaluate(task, TimeoutError("read timed out"), 2)
    assert first.action == RetryAction.RETRY and first.retry_delay == timedelta(seconds=10)
    assert second.action == RetryAction.RETRY and second.retry_delay == timedelta(seconds=15)  # doubled, capped
    assert "transient failure" in first.reason and "retry 1 of 2 for this task" in first.reason
    assert [v["outcome"] for v in task.barecount_policy_validations] == ["passed", "passed"]
    assert [name for name, *_ in captured.points] == ["barecount.retry.budget_spent"] * 2
    assert captured.points[-1][2] == 0.5 and captured.points[-1][3]["tenant"] == "acme"


def test_permanent_failure_fails_at_once_and_spends_nothing(
    index_url: str, captured: Captured, policy_file: PolicyFile
) -> None:
    policy_file(TIGHT)
    task = FakeTask()
    decision = evaluate(task, ValueError("column 'x' missing"))
    assert decision.action == RetryAction.FAIL
    assert decision.reason.startswith("not retried: permanent failure (exception builtins.ValueError")
    assert budgets.get_ledger().rows() == []
    assert captured.points == [("barecount.retry.refused", "counter", 1, {"tenant": "acme", "pipeline": "orders", "runner_class": "local", "budget": "permanent_failure"})]
    assert task.barecount_policy_validations[0]["rule"] == "failure_classes"


def test_spent_budget_fails_fast_with_metric_and_evidence(
    index_url: str, captured: Captured, policy_file: PolicyFile
) -> None:
    policy_file(TIGHT)
    tasks = [FakeTask(f"t{i}") for i in range(4)]
    decisions = [evaluate(task, ConnectionResetError("reset")) for task in tasks]
    assert [d.action for d in decisions] == [RetryAction.RETRY] * 3 + [RetryAction.FAIL]
    refused = decisions[3]
    assert refused.reason == "retry budget exhausted: max_retries_per_run = 3 retries of this DAG run already spent"
    entry = tasks[3].barecount_policy_exceptions[0]
    assert entry["rule"] == "retry_budget" and entry["tenant"] == "acme"
    assert entry["limit"] == {"budget": "max_retries_per_run", "max_retries": 3, "window_seconds": 600, "scope": "tenant 'acme'"}
    assert entry["requested"]["retries_spent"] == 3 and entry["requested"]["retry"] == 4
    refusals = [p for p in captured.points if p[0] == "barecount.retry.refused"]
    assert refusals == [("barecount.retry.refused", "counter", 1, {"tenant": "acme", "pipeline": "orders", "runner_class": "local", "budget": "max_retries_per_run"})]


def test_refusal_lands_in_the_evidence_entry(index_url: str, policy_file: PolicyFile) -> None:
    policy_file(TIGHT.replace("max_retries_per_run: 3", "max_retries_per_run: 0"))
    from barecount_provider import context as bc_context
    from barecount_provider.evidence.facts import CONTEXT_FIELDS, TryFacts
    from barecount_provider.evidence.record import build_entry

    task = FakeTask()
    ti = fake_ti(task)
    assert retry.BareCountRetryPolicy().evaluate(ConnectionResetError(), 1, 3, {"ti": ti}).action == RetryAction.FAIL  # type: ignore[arg-type]
    ctx = bc_context.resolve_for_ti(ti)
    # what barecount_provider.runtime.entries.record_try reads from the task
    entry = build_entry(
        TryFacts(
            **{name: getattr(ctx, name) for name in CONTEXT_FIELDS},
            state="failed",
            policy_validations=task.barecount_policy_validations,
            policy_exceptions=task.barecount_policy_exceptions,
        )
    )
    assert entry["policy"]["exceptions"][0]["rule"] == "retry_budget"
    assert entry["policy"]["exceptions"][0]["limit"]["budget"] == "max_retries_per_run"
    assert entry["policy"]["validations"][0]["outcome"] == "failed"


def test_no_retry_left_is_airflows_decision(index_url: str, captured: Captured) -> None:
    decision = evaluate(FakeTask(), TimeoutError(), 4, should_retry=False)
    assert decision.action == RetryAction.DEFAULT
    assert budgets.get_ledger().rows() == [] and captured.points == []


def test_a_broken_ledger_falls_back_to_airflows_retries(monkeypatch: pytest.MonkeyPatch, captured: Captured) -> None:
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_INDEX_URL", "postgresql+psycopg2://nobody@127.0.0.1:1/none")
    from barecount_provider import config

    config.cache_clear()
    assert evaluate(FakeTask(), TimeoutError()).action == RetryAction.DEFAULT


def test_the_authors_own_policy_is_asked_first(index_url: str) -> None:
    inner = ExceptionRetryPolicy(
        rules=[
            RetryRule(exception=ConnectionError, action=RetryAction.FAIL, reason="mine"),
            RetryRule(exception=ValueError, action=RetryAction.RETRY, retry_delay=timedelta(seconds=7)),
        ]
    )
    policy = retry.BareCountRetryPolicy(inner=inner)
    task = FakeTask()
    failed = policy.evaluate(ConnectionResetError(), 1, 3, {"ti": fake_ti(task)})  # type: ignore[arg-type]
    assert failed.action == RetryAction.FAIL and failed.reason == "mine"
    retried = policy.evaluate(ValueError("the author says retry"), 1, 3, {"ti": fake_ti(task)})  # type: ignore[arg-type]
    assert retried.action == RetryAction.RETRY and retried.retry_delay == timedelta(seconds=7)
    assert len(budgets.get_ledger().rows(outcome="granted")) == 1  # still spends the budget


def test_runner_error_is_read_from_the_runner_result(index_url: str) -> None:
    from airflow.sdk.exceptions import AirflowException

    task = FakeTask(runner_class="container")
    task.barecount_runner_result = {"error": {"error_class": "PodFailed.OOMKilled", "message": "OOMKilled"}}  # type: ignore[attr-defined]
    decision = evaluate(task, AirflowException("pod failed"))
    assert decision.action == RetryAction.FAIL and "PodFailed.OOMKilled" in decision.reason


# ----------------------------------------------------------------------------------- attaching and serializing


def _dag(**dag_kwargs: Any) -> Any:
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG

    with DAG("retry_attach", schedule=None, start_date=datetime(2026, 1, 1), **dag_kwargs) as dag:
        EmptyOperator(task_id="plain")
        EmptyOperator(task_id="explicit_zero", retries=0)
        EmptyOperator(task_id="explicit_many", retries=9)
        EmptyOperator.partial(task_id="mapped").expand_kwargs([{}])
    return dag


def _apply(dag: Any) -> None:
    cluster_policies.dag_policy(dag)
    for task in dag.tasks:
        cluster_policies.task_policy(task)


def test_task_policy_attaches_retries_backoff_and_policy() -> None:
    dag = _dag(tags=["tenant:acme"])
    _apply(dag)
    tasks = {task.task_id: task for task in dag.tasks}
    assert isinstance(tasks["plain"].retry_policy, retry.BareCountRetryPolicy)
    assert tasks["plain"].retries == 3  # built-in max_retries_per_task
    assert tasks["explicit_zero"].retries == 0  # an author's smaller explicit value stays
    assert tasks["explicit_many"].retries == 3  # capped
    assert tasks["mapped"].retries == 3 and isinstance(tasks["mapped"].retry_policy, retry.BareCountRetryPolicy)
    plain = tasks["plain"]
    assert plain.retry_delay == timedelta(seconds=30) and plain.max_retry_delay == timedelta(seconds=900)
    assert plain.retry_exponential_backoff == 2.0
    _apply(dag)  # parsing again does not wrap the policy twice
    assert tasks["plain"].retry_policy.inner is None


def test_an_opted_out_dag_is_left_alone() -> None:
    dag = _dag(tags=["barecount:off"])
    _apply(dag)
    assert all(task.retry_policy is None for task in dag.tasks)


def test_only_a_flag_is_serialized_and_the_scheduler_sees_retries_and_backoff() -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    dag = _dag(tags=["tenant:acme"])
    _apply(dag)
    data = DagSerialization.to_dict(dag)
    tasks = {t["__var"]["task_id"]: t["__var"] for t in data["dag"]["tasks"]}
    assert tasks["plain"].get("has_retry_policy") is True and "retry_policy" not in tasks["plain"]
    assert tasks["plain"]["retries"] == 3
    assert tasks["mapped"]["partial_kwargs"].get("has_retry_policy") is True
    restored = DagSerialization.from_dict(data)
    assert restored.get_task("plain").retries == 3
    assert restored.get_task("plain").max_retry_delay == timedelta(seconds=900)


@contextlib.contextmanager
def _parsing(**ids: str) -> Iterator[None]:
    """The parsing context Airflow's task runner (``startup()``) sets while it parses the try's DAG file.

    Airflow's context manager leaves its variables set afterwards (it only restores earlier values): in a
    task process that is harmless, in a test it would leak into the next one, so they are removed here."""
    from airflow.sdk.definitions._internal.dag_parsing_context import _airflow_parsing_context_manager
    from airflow.sdk.definitions.context import (
        _AIRFLOW_PARSING_CONTEXT_DAG_ID,
        _AIRFLOW_PARSING_CONTEXT_TASK_ID,
    )

    try:
        with _airflow_parsing_context_manager(**ids):
            yield
    finally:
        os.environ.pop(_AIRFLOW_PARSING_CONTEXT_DAG_ID, None)
        os.environ.pop(_AIRFLOW_PARSING_CONTEXT_TASK_ID, None)


def test_in_a_task_process_the_policies_handle_only_the_running_task() -> None:
    """A task process parses its whole DAG file and runs one task: only that task and its DAG are handled."""
    from barecount_provider import context

    running, other = _dag(tags=["tenant:acme"]), _dag(tags=["tenant:acme"])
    other.dag_id = "retry_attach_other"
    context._DECLARED.pop("retry_attach", None)
    context._DECLARED.pop("retry_attach_other", None)
    with _parsing(dag_id="retry_attach", task_id="plain"):
        assert cluster_policies.running_task() == ("retry_attach", "plain")
        _apply(running)
        _apply(other)
    assert cluster_policies.running_task() is None
    tasks = {task.task_id: task for task in running.tasks}
    assert isinstance(tasks["plain"].retry_policy, retry.BareCountRetryPolicy) and tasks["plain"].retries == 3
    assert tasks["explicit_many"].retry_policy is None and tasks["explicit_many"].retries == 9  # not this process's
    assert all(task.retry_policy is None for task in other.tasks)
    assert "retry_attach" in context._DECLARED and "retry_attach_other" not in context._DECLARED


def test_without_a_running_try_every_task_is_handled() -> None:
    """The DAG processor and the scheduler set no parsing context; the CLI sets a DAG alone (and may write
    what it parses to the database), which is not a task process's context."""
    dag = _dag(tags=["tenant:acme"])
    with _parsing(dag_id="retry_attach"):
        assert cluster_policies.running_task() is None
        _apply(dag)
    assert all(isinstance(task.retry_policy, retry.BareCountRetryPolicy) for task in dag.tasks)


def test_a_task_policy_called_alone_reads_the_running_try_itself() -> None:
    """No dag_policy before it (a caller other than Airflow's DagBag): the scope is read, not assumed."""
    dag = _dag(tags=["tenant:acme"])
    with _parsing(dag_id="retry_attach", task_id="plain"):
        for task in dag.tasks:
            cluster_policies.task_policy(task)
    assert [task.task_id for task in dag.tasks if task.retry_policy is not None] == ["plain"]


def test_a_task_process_parse_through_airflows_dagbag_handles_its_task_only(tmp_path: Path) -> None:
    """The entry point installed, Airflow's own DagBag parses a file of two DAGs as a task process would."""
    from airflow.dag_processing.dagbag import DagBag

    (tmp_path / "two_dags.py").write_text(
        "from datetime import datetime\n"
        "from airflow.providers.standard.operators.empty import EmptyOperator\n"
        "from airflow.sdk import DAG\n"
        "for dag_id in ('first', 'second'):\n"
        "    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), tags=['tenant:acme']) as dag:\n"
        "        EmptyOperator(task_id='a')\n"
        "        EmptyOperator(task_id='b')\n"
        "    globals()[dag_id] = dag\n"
    )
    with _parsing(dag_id="second", task_id="b"):
        bag = DagBag(dag_folder=str(tmp_path))
    assert not bag.import_errors
    handled = sorted(
        f"{dag_id}.{task.task_id}"
        for dag_id, dag in bag.dags.items()
        for task in dag.tasks
        if isinstance(task.retry_policy, retry.BareCountRetryPolicy)
    )
    assert handled == ["second.b"]
