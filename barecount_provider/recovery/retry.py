"""Automatic retries with capped budgets, built on Airflow 3.3's retry-policy seam.

**Attaching** (:func:`attach`, called by the cluster policy's ``task_policy``, see
:mod:`barecount_provider.cluster_policies`): every task of a DAG that has not opted out gets

* ``retries``: the tenant's ``retry_budget.max_retries_per_task`` (an author's explicit ``retries``, from
  the operator or ``default_args``, is kept when it is smaller: ``retries=0`` stays 0);
* Airflow's own exponential backoff (``retry_delay`` = ``backoff_base_seconds``,
  ``retry_exponential_backoff`` = 2, ``max_retry_delay`` = ``backoff_max_seconds``): what the scheduler uses
  when the retry policy cannot answer (the task process died, the policy raised);
* ``retry_policy``: a :class:`BareCountRetryPolicy`, wrapping the author's own retry policy if there is one.

Airflow serializes only a ``has_retry_policy`` flag, never the policy object: the task process re-parses
the DAG file, and the cluster policy runs again there (``BundleDagBag``), so the object is rebuilt where it
is evaluated. :class:`BareCountRetryPolicy` therefore holds no settings: it reads the tenant's policy when
it is evaluated. ``retries`` and the backoff are serialized as usual, so the scheduler sees them.

**Evaluating** (:meth:`BareCountRetryPolicy.evaluate`, in the task process, with the real exception):

1. the author's own policy first: its FAIL stands; its RETRY makes the failure transient;
2. when Airflow would not retry anyway (the task's retries are used up): Airflow's default;
3. the failure is classified (:mod:`barecount_provider.recovery.classify`): a **permanent** failure fails
   now and spends nothing;
4. a **transient** failure asks the ledger (:mod:`barecount_provider.recovery.budgets`) for one retry from
   the per-task, per-run and rolling-window budgets; granted: retry after the policy's backoff (doubling
   from ``backoff_base_seconds``, capped at ``backoff_max_seconds``, jittered); refused: the task fails now
   with ``retry budget exhausted: <budget> = <limit> ...``, the ``barecount.retry.refused`` metric and a
   policy exception (rule ``retry_budget``) in the try's evidence entry.

Whatever goes wrong inside BareCount (the ledger's database down, an invalid policy) falls back to Airflow's
own retries: a broken brake must not fail tasks that would have succeeded.
"""

from __future__ import annotations

import logging
import random
import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk.definitions.retry_policy import RetryAction, RetryDecision, RetryPolicy

from barecount_provider import config, selfmetrics
from barecount_provider import context as bc_context
from barecount_provider.adapters.airflow import ti_context_from_server
from barecount_provider.policy import RetryBudget, TenantPolicy, get_policy
from barecount_provider.recovery import budgets, classify

if TYPE_CHECKING:
    from airflow.sdk.definitions.context import Context

log = logging.getLogger(__name__)

RULE = "retry_budget"
BACKOFF_MULTIPLIER = 2.0
PERMANENT_FAILURE = "permanent_failure"
"""The ``budget`` tag of ``barecount.retry.refused`` for a failure not retried because it is permanent."""


# ------------------------------------------------------------------------------------------------ backoff


def backoff_seconds(budget: RetryBudget, retry_number: int, rng: random.Random | None = None) -> float:
    """Delay before retry ``retry_number`` (1 for the first): ``backoff_base_seconds`` doubled at each further
    retry, capped at ``backoff_max_seconds``; with ``jitter``, a uniform draw between half of it and all of it."""
    exponent = max(0, retry_number - 1)
    delay = budget.backoff_max_seconds if exponent > 60 else budget.backoff_base_seconds * BACKOFF_MULTIPLIER**exponent
    delay = min(delay, budget.backoff_max_seconds)
    if budget.jitter and delay > 0:
        delay = (rng or random).uniform(delay / 2.0, delay)
    return delay


# ------------------------------------------------------------------------------------------ the policy


def _tenant_settings(tenant: str) -> TenantPolicy:
    return get_policy().for_tenant(tenant)


class BareCountRetryPolicy(RetryPolicy):
    """BareCount's retry policy: classification, budgets, backoff (see the module docstring).

    :param inner: the task's own retry policy, consulted first.
    """

    def __init__(self, inner: RetryPolicy | None = None) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"BareCountRetryPolicy(inner={self.inner!r})"

    def evaluate(
        self,
        exception: BaseException,
        try_number: int,
        max_tries: int,
        context: Context | None = None,
    ) -> RetryDecision:
        try:
            return self._evaluate(exception, try_number, max_tries, context)
        except Exception:
            log.warning("BareCount could not decide the retry of this try; Airflow's retries apply", exc_info=True)
            selfmetrics.failure("retry", "evaluate")
            return RetryDecision.default()

    def _evaluate(
        self, exception: BaseException, try_number: int, max_tries: int, context: Context | None
    ) -> RetryDecision:
        inner = self.inner.evaluate(exception, try_number, max_tries, context) if self.inner is not None else None
        if inner is not None and inner.action == RetryAction.FAIL:
            return inner
        ti = context.get("ti") if context is not None else None
        if ti is None or not config.enabled():
            return inner or RetryDecision.default()
        if not _airflow_would_retry(ti, try_number, max_tries):
            return RetryDecision.default()  # the task's retries are used up: Airflow fails it, nothing to spend

        ctx = bc_context.resolve_for_ti(ti)
        settings = _tenant_settings(ctx.tenant)
        task = getattr(ti, "task", None)
        if inner is not None and inner.action == RetryAction.RETRY:
            failure = classify.Classification(classify.TRANSIENT, "retry_policy", "the task's own retry policy")
        else:
            runner_result = getattr(task, "barecount_runner_result", None)
            runner_error = runner_result.get("error") if isinstance(runner_result, dict) else None
            failure = classify.classify(exception, settings.failure_classes, ctx.runner_class, runner_error)

        if not failure.transient:
            reason = f"not retried: {failure.describe()}"
            _record(task, validation={"rule": "failure_classes", "outcome": "failed", "limit": "a transient failure", "requested": failure.describe()})
            _emit_refused(ctx, PERMANENT_FAILURE)
            log.warning("BareCount: %s", reason)
            return RetryDecision.fail(reason=reason)

        budget = settings.retry_budget
        request = budgets.RetryRequest(
            tenant=ctx.tenant,
            pipeline=ctx.pipeline,
            runner_class=ctx.runner_class,
            dag_id=ctx.dag_id,
            run_id=ctx.run_id,
            task_id=ctx.task_id,
            map_index=ctx.map_index,
            try_number=int(try_number),
            failure=failure.describe(),
        )
        decision = budgets.get_ledger().spend(request, budget)
        limits = {
            budgets.PER_TASK: budget.max_retries_per_task,
            budgets.PER_RUN: budget.max_retries_per_run,
            budgets.PER_WINDOW: budget.max_retries_per_window,
            "window_seconds": budget.window_seconds,
            "window_scope": budget.window_scope,
        }
        if not decision.granted:
            reason = decision.describe(budget)
            spent_now = decision.spent.get(decision.budget or "", 0)
            _record(
                task,
                validation={"rule": RULE, "outcome": "failed", "limit": limits, "requested": {**decision.spent, "budget": decision.budget}},
                exception={
                    "rule": RULE,
                    "tenant": ctx.tenant,
                    "limit": {"budget": decision.budget, "max_retries": decision.limit, "window_seconds": budget.window_seconds, "scope": decision.window_key},
                    "requested": {"retries_spent": spent_now, "retry": spent_now + 1, "failure": failure.describe()},
                    "reason": reason,
                },
            )
            if not decision.replayed:
                _emit_refused(ctx, decision.budget or budgets.PER_WINDOW)
            log.warning("BareCount: %s (%s)", reason, failure.describe())
            return RetryDecision.fail(reason=reason)

        delay = inner.retry_delay if inner is not None and inner.retry_delay is not None else None
        if delay is None:
            delay = timedelta(seconds=backoff_seconds(budget, int(try_number)))
        _record(task, validation={"rule": RULE, "outcome": "passed", "limit": limits, "requested": dict(decision.spent)})
        _emit_spent(ctx, budget, decision.spent.get(budgets.PER_WINDOW, 0) + 1)
        reason = (
            f"{failure.describe()}; retry {decision.spent[budgets.PER_TASK] + 1} of {budget.max_retries_per_task} "
            f"for this task, {decision.spent[budgets.PER_RUN] + 1} of {budget.max_retries_per_run} for the run, "
            f"{decision.spent[budgets.PER_WINDOW] + 1} of {budget.max_retries_per_window} for {decision.window_key} "
            f"in {budget.window_seconds} s; in {delay.total_seconds():.0f} s"
        )
        return RetryDecision.retry(delay=delay, reason=reason)

    def serialize(self) -> dict[str, Any]:
        """Airflow stores only ``has_retry_policy``; this is for anyone who asks (no settings to carry)."""
        return {"__type": "BareCountRetryPolicy"}

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> BareCountRetryPolicy:
        return cls()


def _airflow_would_retry(ti: Any, try_number: int, max_tries: int) -> bool:
    server = ti_context_from_server(ti)
    should_retry = getattr(server, "should_retry", None)
    if isinstance(should_retry, bool):
        return should_retry
    return int(try_number) <= int(max_tries)


# ------------------------------------------------------------------------------- evidence and metrics


def _record(task: Any, *, validation: dict[str, Any] | None = None, exception: dict[str, Any] | None = None) -> None:
    """Put the decision where the try's evidence entry reads it (barecount_provider.runtime.entries)."""
    if task is None:
        return
    try:
        if validation is not None:
            validations = getattr(task, "barecount_policy_validations", None)
            if validations is None:
                validations = []
                task.barecount_policy_validations = validations
            validations.append(validation)
        if exception is not None:
            exceptions = getattr(task, "barecount_policy_exceptions", None)
            if exceptions is None:
                exceptions = []
                task.barecount_policy_exceptions = exceptions
            exceptions.append(exception)
    except Exception:
        log.debug("BareCount could not note the retry decision for the evidence", exc_info=True)
        selfmetrics.failure("retry", "evidence")


def _emit_refused(ctx: bc_context.RunContext, budget: str) -> None:
    tags = {"tenant": ctx.tenant, "pipeline": ctx.pipeline, "runner_class": ctx.runner_class, "budget": budget}
    selfmetrics.emit([("barecount.retry.refused", selfmetrics.COUNTER, 1, tags)], sink="retry")


def _emit_spent(ctx: bc_context.RunContext, budget: RetryBudget, window_spent: int) -> None:
    fraction = window_spent / budget.max_retries_per_window if budget.max_retries_per_window else 1.0
    tags = {"tenant": ctx.tenant, "pipeline": ctx.pipeline, "runner_class": ctx.runner_class}
    selfmetrics.emit([("barecount.retry.budget_spent", selfmetrics.GAUGE, round(fraction, 4), tags)], sink="retry")


# ------------------------------------------------------------------------------------------- attaching

_CACHE_LOCK = threading.Lock()
_BUDGETS: dict[str, RetryBudget] = {}
_BUDGETS_OF: list[Any] = [None]  # the Policy object the cache was built from


def _budget_for(tenant: str) -> RetryBudget:
    """The tenant's retry budget, cached per loaded policy (the cluster policy runs for every task parsed)."""
    current = get_policy()
    with _CACHE_LOCK:
        if _BUDGETS_OF[0] is not current:
            _BUDGETS.clear()
            _BUDGETS_OF[0] = current
        budget = _BUDGETS.get(tenant)
        if budget is None:
            # A tenant the policy does not declare has the defaults' budget: for_tenant() would build a copy of
            # the defaults (dataclasses.replace) for its tenant field alone, in every task process.
            settings = current.tenants.get(tenant) or current.defaults
            budget = _BUDGETS[tenant] = settings.retry_budget
    return budget


def _explicit_retries(task: Any) -> int | None:
    """The ``retries`` the DAG author gave (operator argument or default_args); None when left to the default."""
    if getattr(task, "is_mapped", False):
        value = (getattr(task, "partial_kwargs", None) or {}).get("retries")
        return value if isinstance(value, int) and value != 0 else None  # a mapped task's 0 cannot be told apart
    init_kwargs = getattr(task, "_BaseOperator__init_kwargs", None) or {}
    value = init_kwargs.get("retries")
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def attach(task: Any) -> bool:
    """Give ``task`` BareCount's retries, backoff and retry policy (see the module docstring).

    False (nothing changed) for a task of a DAG that opted out. Safe to call again on the same task.
    """
    if not (hasattr(task, "task_id") and hasattr(task, "retries")):  # not an operator
        return False
    dag = getattr(task, "dag", None)
    if dag is not None and bc_context.is_opted_out(dag):
        return False
    from barecount_provider import pools

    budget = _budget_for(pools.tenant_of(task))
    current = getattr(task, "retry_policy", None)
    if not isinstance(current, BareCountRetryPolicy):
        task.retry_policy = BareCountRetryPolicy(inner=current)
    explicit = _explicit_retries(task)
    retries = budget.max_retries_per_task if explicit is None else min(explicit, budget.max_retries_per_task)
    if getattr(task, "retries", None) != retries:
        task.retries = retries
    task.retry_delay = timedelta(seconds=budget.backoff_base_seconds)
    task.retry_exponential_backoff = BACKOFF_MULTIPLIER
    task.max_retry_delay = timedelta(seconds=budget.backoff_max_seconds)
    return True
