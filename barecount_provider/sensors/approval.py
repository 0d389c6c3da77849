"""Governance approval for large replays, on Airflow 3.3's human-in-the-loop machinery.

``ReplayApprovalSensor`` is the standard provider's :class:`ApprovalOperator` (Approve / Reject) with its
settings taken from the tenant's policy (``replay_approval``) when it runs:

* a replay **below** the tenant's threshold (records and estimated cost) goes on without waiting;
* a replay **at or above** it parks the task in Airflow 3.3's ``awaiting_input`` state (no poking, no
  triggerer) with ``assigned_users`` = the policy's approvers (empty: anyone allowed to answer required
  actions), ``response_timeout`` = the policy's ``timeout_seconds`` and the policy's ``default`` (Reject
  unless configured otherwise) as the answer when nobody answers in time — applied by the scheduler;
* the answer comes from the UI's required actions or the REST API
  (``PATCH /api/v2/dags/{dag}/dagRuns/{run}/taskInstances/{task}/{map_index}/hitlDetails``);
* Reject (or a timeout that defaults to it) skips the downstream tasks: the replay does not run.

Who decided, when, what and on what scope goes to XCom (``replay_approval``) and into the try's evidence
entry (``approvals``). A decision on a ReplayOperator plan (one with a ``plan_id``) is also put on record in
the replay approvals table (:mod:`barecount_provider.recovery.approvals`): ``ReplayOperator`` refuses to deliver
a replay over the threshold unless an approval of its plan is there, whether or not the DAG has this sensor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

from barecount_provider import context as bc_context
from barecount_provider.policy import get_policy

log = logging.getLogger(__name__)

APPROVAL_XCOM_KEY = "replay_approval"
PLAN_XCOM_KEY = "replay_plan"


class ReplayApprovalSensor(ApprovalOperator):
    """Wait for a governance approval when a replay reaches the tenant's threshold.

    :param plan_task_id: the task whose XCom ``replay_plan`` (``{"records": n, "estimated_cost_usd": x,
        "scope": {...}}``, e.g. ReplayOperator's dry run) sizes the replay. Or give ``records`` and
        ``estimated_cost_usd`` directly (templated).
    :param records: number of records the replay would deliver (overrides the plan's).
    :param estimated_cost_usd: estimated cost of the replay in USD (overrides the plan's).
    :param tenant: the tenant whose policy decides; None: the DAG's (params, tags, default tenant).
    :param subject: the required action's title; a default names the DAG, the records and the cost.
    :param ledger_url: the database the decision on a ReplayOperator plan is recorded in, where the replay
        checks it (default ``[barecount] evidence_index_url``; give the replay's ``ledger_url`` if it has one).
    """

    template_fields: Sequence[str] = (*ApprovalOperator.template_fields, "records", "estimated_cost_usd")

    def __init__(
        self,
        *,
        plan_task_id: str | None = None,
        records: int | str | None = None,
        estimated_cost_usd: float | str | None = None,
        tenant: str | None = None,
        subject: str = "BareCount: approve a large replay",
        ledger_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        for fixed in ("assigned_users", "response_timeout", "defaults"):
            if fixed in kwargs:
                raise ValueError(f"ReplayApprovalSensor: {fixed} comes from the tenant's policy (replay_approval)")
        super().__init__(subject=subject, **kwargs)
        self.plan_task_id = plan_task_id
        self.records = records
        self.estimated_cost_usd = estimated_cost_usd
        self.tenant = tenant
        self.ledger_url = ledger_url
        self.barecount_approvals: list[dict[str, Any]] = []

    # --------------------------------------------------------------------------------------- the plan

    def _plan(self, context: Mapping[str, Any]) -> dict[str, Any]:
        plan: dict[str, Any] = {}
        if self.plan_task_id:
            pulled = context["ti"].xcom_pull(task_ids=self.plan_task_id, key=PLAN_XCOM_KEY)
            if isinstance(pulled, Mapping):
                plan.update(pulled)
        if self.records not in (None, ""):
            plan["records"] = int(str(self.records))
        if self.estimated_cost_usd not in (None, ""):
            plan["estimated_cost_usd"] = float(str(self.estimated_cost_usd))
        if "records" not in plan:
            raise ValueError(
                "ReplayApprovalSensor: no replay size: give plan_task_id (a task pushing XCom 'replay_plan') or records"
            )
        plan.setdefault("estimated_cost_usd", 0.0)
        return plan

    def _tenant(self, context: Mapping[str, Any]) -> str:
        if self.tenant:
            return self.tenant
        return bc_context.resolve_for_ti(context["ti"]).tenant

    # ------------------------------------------------------------------------------------- execution

    def execute(self, context: Any) -> Any:
        plan = self._plan(context)
        tenant = self._tenant(context)
        approval = get_policy().for_tenant(tenant).replay_approval
        records, cost = int(plan["records"]), float(plan["estimated_cost_usd"])
        scope = {"tenant": tenant, "records": records, "estimated_cost_usd": cost, "scope": plan.get("scope")}
        if plan.get("plan_id"):  # a ReplayOperator's plan: the approval is recorded for it
            scope.update(plan_id=plan["plan_id"], scope_id=plan.get("scope_id"))
        if not approval.needs_approval(records, cost):
            decision = {
                "approver": None,
                "decided_at": datetime.now(UTC).isoformat(),
                "decision": "not required",
                "scope": scope,
                "threshold": {"records": approval.threshold_records, "cost_usd": approval.threshold_cost_usd},
            }
            self._record(context, decision)
            self.log.info("Replay of %d records (~$%.4f) is below tenant %s's threshold: no approval needed", records, cost, tenant)
            return {"approved": True, **decision}
        self.assigned_users = [{"id": name, "name": name} for name in approval.approvers] or None
        self.response_timeout = timedelta(seconds=approval.timeout_seconds)
        self.defaults = [self.APPROVE if approval.default == "approve" else self.REJECT]
        if self.body is None:
            self.body = (
                f"Tenant **{tenant}** asks to replay **{records}** records (estimated ${cost:.2f}), at or above its "
                f"threshold ({approval.threshold_records} records / ${approval.threshold_cost_usd}). "
                f"No answer within {approval.timeout_seconds} s: **{approval.default}**."
            )
        context["ti"].xcom_push(key="replay_approval_request", value=scope)
        self.log.info("Replay of %d records (~$%.4f) needs approval by %s", records, cost, approval.approvers or "anyone")
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        request = context["ti"].xcom_pull(task_ids=self.task_id, key="replay_approval_request") or {}
        chosen = (event.get("chosen_options") or [None])[0]
        responder = event.get("responded_by_user")
        timed_out = responder is None and "error" not in event
        decided = event.get("responded_at")
        decision = {
            "approver": (responder or {}).get("name") if isinstance(responder, Mapping) else responder,
            "decided_at": decided.isoformat() if isinstance(decided, datetime) else (decided or datetime.now(UTC).isoformat()),
            "decision": ("timed out: " if timed_out else "") + ("approved" if chosen == self.APPROVE else "rejected"),
            "scope": request,
        }
        self._record(context, decision)
        self._record_for_plan(context, decision)
        return super().execute_complete(context, event)

    def _record_for_plan(self, context: Mapping[str, Any], decision: dict[str, Any]) -> None:
        """Put the decision on a ReplayOperator plan on record, where the replay task checks it before it
        delivers (:mod:`barecount_provider.recovery.approvals`). Raises when it cannot: an approval that is
        not on record would not let the replay run."""
        request = decision.get("scope") or {}
        if not request.get("plan_id"):
            return
        from barecount_provider.recovery.approvals import open_approvals

        ti = context["ti"]
        open_approvals(self.ledger_url).record(
            plan_id=request["plan_id"],
            tenant=request.get("tenant") or self._tenant(context),
            scope_id=request.get("scope_id") or "",
            scope=request.get("scope"),
            records=int(request.get("records") or 0),
            estimated_cost_usd=float(request.get("estimated_cost_usd") or 0.0),
            decision=decision["decision"],
            approver=decision["approver"],
            decided_at=decision["decided_at"],
            dag_id=getattr(ti, "dag_id", None),
            run_id=getattr(ti, "run_id", None),
            task_id=getattr(ti, "task_id", None),
        )

    def _record(self, context: Mapping[str, Any], decision: dict[str, Any]) -> None:
        self.barecount_approvals = [*self.barecount_approvals, decision]  # the try's evidence entry reads it
        try:
            context["ti"].xcom_push(key=APPROVAL_XCOM_KEY, value=decision)
        except Exception:
            log.warning("BareCount could not push the approval decision", exc_info=True)
