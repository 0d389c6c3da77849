"""``ReplayOperator``: re-ingest dead letters into a target, idempotently (see :mod:`barecount_provider.recovery.replay`).

A large replay is approved before it runs: a dry run pushes its plan (XCom ``replay_plan``: records,
bytes, estimated cost, scope), ``ReplayApprovalSensor`` waits for an approval when the tenant's policy asks
for one, and the real run delivers at most what the plan counted::

    plan = ReplayOperator(task_id="plan", dlq_location=QUEUE_URL, target="sqs:" + TARGET_URL, plan_only=True)
    approve = ReplayApprovalSensor(task_id="approve", plan_task_id="plan")
    replay = ReplayOperator(task_id="replay", dlq_location=QUEUE_URL, target="sqs:" + TARGET_URL,
                            approved_plan_task_id="plan", rate=200)
    plan >> approve >> replay

The run's outcome goes to XCom ``replay_outcome`` and to the attribute ``barecount_replay_outcome`` (the
evidence entry of the try carries it); progress goes to the log and to ``barecount.replay.*`` metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from barecount_provider.hooks.dlq import DeadLetterQueueHook
from barecount_provider.recovery.approvals import canonical_scope, open_approvals, plan_id_for
from barecount_provider.recovery.ledger import open_ledger
from barecount_provider.recovery.letters import Scope
from barecount_provider.recovery.replay import Replayer, ReplayTarget, target_from_spec

log = logging.getLogger(__name__)

PLAN_XCOM_KEY = "replay_plan"
OUTCOME_XCOM_KEY = "replay_outcome"


class ReplayOperator(BaseOperator):
    """Replay a dead-letter queue into a target, once per record.

    :param target: a :class:`~barecount_provider.recovery.replay.ReplayTarget`, a Python callable
        ``f(payload, idempotency_key)``, or a spec: ``lambda:FUNCTION[:QUALIFIER]``, ``sqs:QUEUE_URL`` (FIFO:
        the key is the deduplication id), ``sql:URL_OR_CONN_ID#TABLE`` (upsert by key),
        ``callable:module:function``.
    :param dlq_backend: / dlq_location: the queue (``DeadLetterQueueHook``'s backend and location).
    :param tenant: / pipeline: / error_classes: / since: / until: the scope (None: the whole queue;
        since/until: ISO times on the letters' enqueue time, until exclusive).
    :param rate: records per second at most (None: unthrottled).
    :param batch_size: records claimed and delivered together (at most this many are re-delivered after a
        crash).
    :param plan_only: the dry run: only count, estimate and push ``replay_plan`` (BaseOperator's own
        ``dry_run`` is a method: hence the name).
    :param approved_plan_task_id: the dry-run task whose plan was approved: deliver at most its record count.
    :param max_records: deliver at most this many (templated).
    :param replay_id: the ledger scope (default: one per queue and target, shared by every replay of them).
    :param ledger_url: the ledger's database (default ``[barecount] evidence_index_url``).
    :param lease_seconds: how long a claimed batch stays this run's (a crashed run's batch is taken over
        when its lease ends, or at once when its process is known dead).
    :param remove_delivered: delete delivered letters from the queue.
    :param fail_on_failed_records: fail the task when records could not be delivered (they stay queued).
    """

    template_fields: Sequence[str] = (
        "dlq_location", "pipeline", "error_classes", "since", "until", "max_records", "replay_id", "rate",
    )
    ui_color = "#f5e6cc"

    def __init__(
        self,
        *,
        target: ReplayTarget | Callable[..., Any] | str,
        dlq_backend: str | None = None,
        dlq_location: str | None = None,
        aws_conn_id: str | None = "aws_default",
        tenant: str | None = None,
        pipeline: str | None = None,
        error_classes: Sequence[str] | str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        rate: float | str | None = None,
        batch_size: int = 500,
        plan_only: bool = False,
        approved_plan_task_id: str | None = None,
        max_records: int | str | None = None,
        replay_id: str | None = None,
        ledger_url: str | None = None,
        lease_seconds: float = 300.0,
        remove_delivered: bool = True,
        fail_on_failed_records: bool = True,
        progress_interval_s: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if tenant is not None and "{{" in str(tenant):
            raise ValueError("tenant: templates are refused (a run must not choose the tenant)")
        self.target = target
        self.dlq_backend, self.dlq_location, self.aws_conn_id = dlq_backend, dlq_location, aws_conn_id
        self.tenant, self.pipeline, self.error_classes = tenant, pipeline, error_classes
        self.since, self.until = since, until
        self.rate, self.batch_size, self.plan_only = rate, batch_size, plan_only
        self.approved_plan_task_id, self.max_records, self.replay_id = approved_plan_task_id, max_records, replay_id
        self.ledger_url, self.lease_seconds = ledger_url, lease_seconds
        self.remove_delivered, self.fail_on_failed_records = remove_delivered, fail_on_failed_records
        self.progress_interval_s = progress_interval_s
        self.barecount_replay_outcome: dict[str, Any] | None = None
        self.barecount_replay_plan: dict[str, Any] | None = None

    def _tenant_pipeline(self, context: Mapping[str, Any]) -> tuple[str, str]:
        from barecount_provider.context import resolve_for_ti

        ctx = resolve_for_ti(context["ti"])
        return self.tenant or ctx.tenant, self.pipeline or ctx.pipeline

    def replayer(self, context: Mapping[str, Any]) -> Replayer:
        tenant, pipeline = self._tenant_pipeline(context)
        hook = DeadLetterQueueHook(
            self.dlq_backend, self.dlq_location, aws_conn_id=self.aws_conn_id, tenant=tenant, pipeline=pipeline,
            visibility_timeout=int(max(self.lease_seconds, 30)),
        )
        scope = Scope.of(
            tenant=self.tenant,
            pipeline=self.pipeline or None,
            error_classes=self.error_classes,
            since=self.since or None,
            until=self.until or None,
        )
        from barecount_provider.cost import configured_price_table
        from barecount_provider.telemetry.metrics import get_emitter

        return Replayer(
            hook.backend,
            target_from_spec(self.target, aws_conn_id=self.aws_conn_id, prices=configured_price_table()),
            open_ledger(self.ledger_url),
            scope=scope,
            scope_id=self.replay_id or None,
            batch_size=self.batch_size,
            rate=float(self.rate) if self.rate not in (None, "") else None,
            max_records=self._max_records(context),
            lease_seconds=self.lease_seconds,
            remove_delivered=self.remove_delivered,
            progress_interval_s=self.progress_interval_s,
            metric_tags={"tenant": tenant, "pipeline": pipeline},
            emit=get_emitter().emit,
            logger=self.log,
        )

    def _max_records(self, context: Mapping[str, Any]) -> int | None:
        limit = int(str(self.max_records)) if self.max_records not in (None, "") else None
        if self.approved_plan_task_id:
            plan = context["ti"].xcom_pull(task_ids=self.approved_plan_task_id, key=PLAN_XCOM_KEY)
            if not isinstance(plan, Mapping) or "records" not in plan:
                raise AirflowException(f"no replay_plan from task {self.approved_plan_task_id!r}: nothing was approved")
            limit = int(plan["records"]) if limit is None else min(limit, int(plan["records"]))
        return limit

    def plan(self, context: Mapping[str, Any]) -> dict[str, Any]:
        """Count and estimate (the dry run); pushes XCom ``replay_plan`` (with the policy's verdict)."""
        replayer = self.replayer(context)
        plan = replayer.plan().as_dict()
        ti = context["ti"]
        plan["plan_id"] = plan_id_for(plan, ti.dag_id, ti.run_id)
        tenant, _ = self._tenant_pipeline(context)
        try:
            from barecount_provider.policy import get_policy

            approval = get_policy().for_tenant(tenant).replay_approval
            plan["tenant"] = tenant
            plan["needs_approval"] = approval.needs_approval(plan["records"], plan["estimated_cost_usd"])
            plan["approval_thresholds"] = {
                "threshold_records": approval.threshold_records,
                "threshold_cost_usd": approval.threshold_cost_usd,
            }
        except Exception:
            self.log.warning("BareCount could not read the replay approval policy", exc_info=True)
        self.barecount_replay_plan = plan
        context["ti"].xcom_push(key=PLAN_XCOM_KEY, value=plan)
        self.log.info(
            "Replay plan %s: %d record(s), %d bytes, estimated %.6f USD (%s); %d delivered before; needs approval: %s",
            plan["scope_id"], plan["records"], plan["bytes"], plan["estimated_cost_usd"], plan["cost_basis"],
            plan["already_delivered"], plan.get("needs_approval"),
        )
        return plan

    def execute(self, context: Any) -> dict[str, Any]:
        plan = self.plan(context)
        if self.plan_only:
            return plan
        approval = self._approval_gate(context, plan)
        replayer = self.replayer(context)
        try:
            outcome = replayer.run()
        except Exception as err:
            self._publish(context, {"status": "failed", "scope_id": replayer.scope_id, "error": f"{type(err).__name__}: {err}"})
            raise
        result = {**outcome.as_dict(), "plan": {k: plan.get(k) for k in ("records", "estimated_cost_usd", "needs_approval")}}
        if approval is not None:
            result["approval"] = approval
        self._publish(context, result)
        if outcome.failed and self.fail_on_failed_records:
            raise AirflowException(
                f"replay {outcome.scope_id}: {outcome.failed} record(s) not delivered ({outcome.last_error}); "
                "they stay in the dead-letter queue and the next run tries them again"
            )
        return result

    def _approval_gate(self, context: Mapping[str, Any], plan: Mapping[str, Any]) -> dict[str, Any] | None:
        """Refuse a replay at or above the tenant's approval threshold unless this plan's approval is on record.

        The records about to be delivered are the fresh plan's, capped by ``max_records`` and the approved
        plan's count; the cost is the plan's estimate for that many. Over the threshold the approved plan
        (XCom ``replay_plan`` of ``approved_plan_task_id``) must be intact (its ``plan_id`` matches its
        content and this DAG run), cover the same scope as now, and have an approval on record (the replay
        approvals table, written by ReplayApprovalSensor) for at least that many records. Returns what the
        evidence shows of the approval (None below the threshold); raises AirflowException otherwise."""
        from barecount_provider.policy import get_policy

        tenant, _ = self._tenant_pipeline(context)
        policy = get_policy()
        thresholds = policy.for_tenant(tenant).replay_approval
        limit = self._max_records(context)
        records = int(plan["records"]) if limit is None else min(int(plan["records"]), limit)
        cost = float(plan["estimated_cost_usd"]) * records / int(plan["records"]) if plan["records"] else 0.0
        if not thresholds.needs_approval(records, cost):
            return None
        limits = [f"{thresholds.threshold_records} records"] if thresholds.threshold_records is not None else []
        limits += [f"{thresholds.threshold_cost_usd} USD"] if thresholds.threshold_cost_usd is not None else []
        what = (
            f"replay of {records} record(s) (estimated {cost:.4f} USD) in scope {plan['scope_id']} reaches the "
            f"approval threshold of tenant {tenant!r} ({' or '.join(limits)} in {policy.source})"
        )
        how = (
            "plan it with ReplayOperator(plan_only=True), ask for the approval with ReplayApprovalSensor("
            "plan_task_id=...) and give this task approved_plan_task_id="
        )
        if not self.approved_plan_task_id:
            raise AirflowException(f"{what}, and no approved plan was given: {how}<the plan task>; nothing was delivered")
        ti = context["ti"]
        approved = ti.xcom_pull(task_ids=self.approved_plan_task_id, key=PLAN_XCOM_KEY)
        approved_id = approved.get("plan_id") if isinstance(approved, Mapping) else None
        if not approved_id or approved_id != plan_id_for(approved, ti.dag_id, ti.run_id):
            raise AirflowException(
                f"{what}, and the plan of task {self.approved_plan_task_id!r} is missing or does not match its plan "
                f"id (changed after it was planned): {how}{self.approved_plan_task_id!r}; nothing was delivered"
            )
        if approved.get("scope_id") != plan["scope_id"] or canonical_scope(approved.get("scope")) != canonical_scope(plan["scope"]):
            raise AirflowException(
                f"{what}, and plan {approved_id} of task {self.approved_plan_task_id!r} was for another scope "
                f"({approved.get('scope_id')}, {canonical_scope(approved.get('scope'))}); nothing was delivered"
            )
        record = open_approvals(self.ledger_url).approval_for(
            plan_id=approved_id, tenant=tenant, scope_id=plan["scope_id"], scope=plan["scope"], records=records
        )
        if record is None:
            raise AirflowException(
                f"{what}, and no approval of plan {approved_id} for tenant {tenant!r} and at least {records} "
                f"record(s) is on record: {how}{self.approved_plan_task_id!r}; nothing was delivered"
            )
        self.log.info(
            "Replay of %d record(s) approved by %s at %s (plan %s)", records, record["approver"], record["decided_at"], approved_id
        )
        return {
            "plan_id": approved_id,
            "approver": record["approver"],
            "decided_at": record["decided_at"],
            "decision": record["decision"],
            "records": int(record["records"]),
        }

    def _publish(self, context: Mapping[str, Any], outcome: dict[str, Any]) -> None:
        self.barecount_replay_outcome = outcome
        context["ti"].xcom_push(key=OUTCOME_XCOM_KEY, value=outcome)
