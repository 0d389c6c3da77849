"""The Evidence API (FastAPI), served by Airflow's API server under ``/barecount`` (see docs/api.md).

Every endpoint but the OpenAPI document depends on Airflow's ``get_user`` (``GetUserDep``): no valid JWT,
no answer (401 ``Not authenticated``; 403 ``Invalid JWT token`` for a forged one). What a user sees is
then limited to the DAGs the auth manager lets them read: ``get_authorized_dag_ids(user, method="GET")``,
the same set Airflow's own ``/api/v2/dags`` and ``/api/v2/dagRuns`` lists filter on. With ``[core]
multi_team`` that set already leaves out the DAGs of the bundles of other teams.

* ``GET /evidence``: records (newest first) filtered by tenant, pipeline, dag_id, state, since/until;
  ``limit``/``offset``, ``total_entries``. Only records of readable DAGs are counted or returned.
* ``GET /evidence/verify``: verify hash chains; a chain is verified for a user only when they may read
  every DAG that has a record in it.
* ``GET /evidence/{record_id}``: one full record; 404 when it does not exist *or* its DAG is not readable
  (the two cannot be told apart).
* ``GET /cost``: cost roll-ups by tenant, pipeline, runner_class, size, dag_id, per day.
* ``POST /agents/{name}/heartbeat``: an on-premise agent's heartbeat. Needs the auth manager's custom view
  ``BareCount Agents`` with method ``POST`` (:data:`AGENTS_RESOURCE`); the agent's tenants come from the
  policy (403 for an agent it does not list); one row per agent (health/records.py).
* ``GET /health``: every dependency's last health result and the agents' last heartbeats, for the tenants the
  user may read (:func:`readable_tenants`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import Body, Depends, FastAPI, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, Field, StringConstraints, WithJsonSchema

from barecount_provider import __version__, config, selfmetrics
from barecount_provider.api import queries
from barecount_provider.api.responses import RedactedJSONResponse
from barecount_provider.db import SchemaOutOfDate
from barecount_provider.evidence.store import EvidenceStore, RecordFilter, open_store
from barecount_provider.health import records
from barecount_provider.policy import TENANT_NAME, Policy, PolicyError, get_policy

log = logging.getLogger(__name__)

CostGroup = Literal["tenant", "pipeline", "runner_class", "size", "dag_id"]

DESCRIPTION = (
    "BareCount's Evidence API: per-run evidence records, their per-tenant hash chains and the cost "
    "roll-ups, served by Airflow's API server under `/barecount`. Authenticate as for Airflow's own API: "
    "`Authorization: Bearer <JWT>` from `POST /auth/token`. A user sees only the records of the DAGs "
    "Airflow's auth manager lets them read (with `[core] multi_team`, only their teams' DAGs). "
    "Errors are `{\"detail\": ...}` as in Airflow's API. On-premise agents send heartbeats to "
    "`POST /agents/{name}/heartbeat`; `GET /health` lists the dependencies' last health results. See docs/api.md."
)

AGENTS_RESOURCE = "BareCount Agents"
"""The auth manager's custom view (``is_authorized_custom_view``) a heartbeat needs, with method ``POST``."""

MAX_BODY_BYTES = 16384
"""The largest request body the API reads (a heartbeat is a few hundred bytes); larger: 413."""


# ------------------------------------------------------------------------------------------------ models


class ErrorDetail(BaseModel):
    """An error answer, as Airflow's API gives them."""

    detail: str


class EvidenceRecordSummary(BaseModel):
    """A record as the index knows it (the full record: ``GET /evidence/{record_id}``)."""

    record_id: str
    tenant: str
    sequence: int = Field(description="Position in the tenant's hash chain (1 = first).")
    hash: str = Field(description="SHA-256 of the record's canonical form without chain.hash.")
    pipeline: str
    dag_id: str
    run_id: str
    state: str
    complete: bool = Field(description="Every task try that had a task process left its own entry.")
    started_at: str | None
    ended_at: str | None
    total_cost_usd: float | None = Field(description="The sum of the tries whose cost is known.")
    cost_complete: bool = Field(True, description="False when some tries' cost is unknown (see the record's cost.unknown).")


class EvidenceRecordCollection(BaseModel):
    records: list[EvidenceRecordSummary]
    total_entries: int


class ChainProblemResponse(BaseModel):
    tenant: str
    sequence: int | None
    record_id: str | None
    kind: str = Field(
        description="altered | removed | inserted | reordered | foreign | truncated | vanished | forged | replayed"
    )
    detail: str
    message: str


class RedactedRecord(BaseModel):
    sequence: int
    record_id: str
    by_record: str = Field(description="The redaction record (later in the chain) that re-sealed it.")
    paths: list[str] = Field(description="The field paths redacted (never the values).")
    at: str


class ChainVerification(BaseModel):
    tenant: str
    records: int
    intact: bool
    problems: list[ChainProblemResponse]
    checkpoints: str = Field(
        description="not configured (no public key: the hash chain alone was checked) | none (no valid signed "
        "checkpoint of this tenant) | checked | unreadable (the checkpoint location could not be read)"
    )
    checkpointed_through: int | None = Field(description="Sequence of the latest valid signed checkpoint.")
    latest_checkpoint_at: str | None = Field(description="When the latest valid checkpoint was signed.")
    not_yet_checkpointed: list[int] = Field(
        description="Sequences after the latest checkpoint: linked by the hash chain only, not verified."
    )
    redacted: list[RedactedRecord]


class VerificationResponse(BaseModel):
    intact: bool = Field(description="Every chain verified is intact.")
    chains: list[ChainVerification]
    total_entries: int = Field(description="Chains verified.")
    skipped: int = Field(description="Chains not verified: they hold records of DAGs the user may not read.")


class CostRow(BaseModel):
    day: str | None = Field(None, description="UTC day (YYYY-MM-DD) the run ended; absent when per_day=false.")
    tenant: str | None = None
    pipeline: str | None = None
    runner_class: str | None = None
    size: str | None = None
    dag_id: str | None = None
    runtime_hours: float
    compute_usd: float
    storage_usd: float
    transfer_usd: float
    total_usd: float = Field(description="The sum of the tries whose cost is known (unknown costs are not 0: see unknown_tries).")
    runs: int = Field(description="Distinct runs (records) with a known cost in the row.")
    unknown_tries: int = Field(0, description="Tries of the row whose cost is unknown (never counted as 0).")
    unknown_reasons: list[str] = Field(default_factory=list, description="Why their cost is unknown (distinct reasons).")


class CostTotals(BaseModel):
    runtime_hours: float
    compute_usd: float
    storage_usd: float
    transfer_usd: float
    total_usd: float
    currency: str
    unknown_tries: int = Field(0, description="Tries in every row whose cost is unknown.")


class CostReport(BaseModel):
    by: list[CostGroup]
    per_day: bool
    rows: list[CostRow]
    total_entries: int
    totals: CostTotals = Field(description="Sums over every row (not only this page).")


# A text of the heartbeat: 1 to ``limit`` characters, no NUL.
def _bounded(limit: int) -> Any:
    return Annotated[str, StringConstraints(min_length=1, max_length=limit, pattern="^[^\\x00]*$")]


class HeartbeatBody(BaseModel):
    """What an agent says of itself (its tenants come from the policy, never from here)."""

    model_config = {"extra": "forbid"}

    version: _bounded(records.MAX_VERSION) | None = Field(None, description=f"The agent's version (1 to {records.MAX_VERSION} characters).")  # type: ignore[valid-type]
    capabilities: list[_bounded(records.MAX_CAPABILITY)] = Field(  # type: ignore[valid-type]
        default_factory=list,
        max_length=records.MAX_CAPABILITIES,
        description=f"What the agent can do (at most {records.MAX_CAPABILITIES}, each 1 to {records.MAX_CAPABILITY} characters).",
    )


class AgentHeartbeat(BaseModel):
    """An agent's last heartbeat as stored: one row per agent."""

    name: str
    tenants: list[str] = Field(description="The tenants whose policy lists the agent (from the policy, not the agent).")
    version: str | None
    capabilities: list[str]
    seen_at: str = Field(description="When the last heartbeat arrived (ISO 8601, UTC).")
    beats: int = Field(description="Heartbeats received since the agent's row was made.")


class AgentStatus(BaseModel):
    """An agent a reader sees in ``GET /health``."""

    name: str
    listed: bool = Field(description="The policy lists it (a network profile of one of its tenants names it).")
    tenants: list[str]
    version: str | None
    capabilities: list[str]
    seen_at: str | None = Field(description="Its last heartbeat (ISO 8601, UTC); null: never seen.")
    age_seconds: float | None = Field(description="Seconds since its last heartbeat; null: never seen.")
    beats: int
    max_age_seconds: int | None = Field(description="The smallest max_heartbeat_age_seconds of the profiles that list it.")
    stale: bool = Field(description="Never seen, or last seen longer ago than max_age_seconds.")


class DependencyModel(BaseModel):
    kind: str
    id: str
    tenant: str | None
    network_profile: str | None


class HealthResultModel(BaseModel):
    """One dependency's last result (docs/health.md, "The result")."""

    status: Literal["healthy", "degraded", "unhealthy", "unknown"]
    dependency: DependencyModel
    latency_ms: float
    phases_ms: dict[str, float | None]
    error_code: str | None
    detail: str
    checked_at: str
    measurements: dict[str, float] = Field(default_factory=dict)


class HealthReport(BaseModel):
    results: list[HealthResultModel] = Field(description="Every dependency's last result, by tenant, network profile, kind, id.")
    agents: list[AgentStatus] = Field(description="The agents the policy lists, and those that sent heartbeats, by name.")
    tenants: list[str] | None = Field(description="The tenants the user may read; null: every tenant.")
    total_entries: int = Field(description="Results.")


# ------------------------------------------------------------------------------------------ dependencies


@functools.cache
def _configured_store() -> EvidenceStore:
    return open_store()


def _store(request: Request) -> EvidenceStore:
    factory: Callable[[], EvidenceStore] = request.app.state.barecount_store
    return factory()


StoreDep = Annotated[EvidenceStore, Depends(_store)]


def readable_dag_ids(user: GetUserDep) -> frozenset[str]:
    """The DAG ids the authenticated user may read (GET), from Airflow's auth manager."""
    return frozenset(get_auth_manager().get_authorized_dag_ids(user=user, method="GET"))


ReadableDagIds = Annotated[frozenset[str], Depends(readable_dag_ids)]


def _policy(request: Request) -> Policy:
    factory: Callable[[], Policy] = request.app.state.barecount_policy
    return factory()


PolicyDep = Annotated[Policy, Depends(_policy)]


def _all_dag_ids() -> frozenset[str]:
    """Every DAG id Airflow's metadata database knows (the API server reaches it)."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return frozenset(session.scalars(sa.select(DagModel.dag_id)))


def may_send_heartbeats(user: GetUserDep) -> None:
    """403 unless the auth manager lets the user ``POST`` on the custom view ``BareCount Agents``."""
    if not get_auth_manager().is_authorized_custom_view(method="POST", resource_name=AGENTS_RESOURCE, user=user):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"Sending agent heartbeats needs the permission POST on `{AGENTS_RESOURCE}` (a custom view of the auth manager)",
        )


def readable_tenants(request: Request, user: GetUserDep, dag_ids: ReadableDagIds, store: StoreDep, policy: PolicyDep) -> frozenset[str] | None:
    """The tenants the user may read; None: every tenant.

    Every tenant when the user may read DAGs at all (``is_authorized_dag(method="GET")``) and every DAG
    Airflow knows; otherwise the tenants that have an evidence record of a DAG the user may read, and the
    tenants the policy binds (``declared_by.teams``) to a team the user belongs to."""
    manager = get_auth_manager()
    every: Callable[[], frozenset[str]] = request.app.state.barecount_all_dag_ids
    if manager.is_authorized_dag(method="GET", user=user) and every() <= dag_ids:
        return None
    tenants = queries.tenants_of_dags(store, dag_ids) if dag_ids else set()
    teams = {team for settings in policy.tenants.values() for team in settings.declared_by.teams}
    if teams:
        tenants |= queries.tenants_of_teams(policy, manager.filter_authorized_teams(teams_names=teams, user=user))
    return frozenset(tenants)


ReadableTenants = Annotated[frozenset[str] | None, Depends(readable_tenants)]


def _instant(value: Any) -> Any:
    """A time parameter: an ISO 8601 string only (a number is not taken as a Unix time), in UTC; a time on
    the calendar's first or last day, where its UTC equivalent may not exist, is refused (422)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an ISO 8601 time (2026-11-27T10:00:00+00:00)")
    return queries.parse_instant(value)


# An ISO 8601 time (naive: UTC), converted to UTC; anything else is a 422 naming the parameter. The OpenAPI
# states the same rule: a date-time whose text matches queries.INSTANT_PATTERN.
Instant = Annotated[
    datetime | None,
    BeforeValidator(_instant),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": queries.INSTANT_PATTERN}),
]
Limit = Annotated[int, Query(ge=1, le=queries.MAX_LIMIT, description=f"Page size (1 to {queries.MAX_LIMIT}).")]
Offset = Annotated[int, Query(ge=0, le=queries.MAX_OFFSET, description="Entries to skip (0 to 2^63 - 1).")]


# A name given as a parameter (tenant, pipeline, DAG id, state, record id): any text but NUL, which PostgreSQL
# cannot compare. Stated in the OpenAPI document (pattern); parameter_rules below answers it with a 422.
Name = Annotated[str, StringConstraints(pattern="^[^\\x00]*$")]

# The query parameters that may be repeated (each a list); any other given twice is a 422, where FastAPI would
# silently keep the last value.
REPEATABLE = frozenset({"by"})


def parameter_rules(request: Request, _user: GetUserDep) -> None:
    """422 naming every single-valued query parameter given more than once, and every parameter (query or
    path) holding a NUL character, which PostgreSQL cannot compare (a 500 otherwise). Runs after
    authentication: without a token, still 401."""
    errors: list[dict[str, Any]] = []
    for name in dict.fromkeys(request.query_params.keys()):
        values = request.query_params.getlist(name)
        if name not in REPEATABLE and len(values) > 1:
            errors.append(
                {"type": "too_many_values", "loc": ["query", name], "msg": f"given {len(values)} times; expected one value", "input": values}
            )
        if any("\x00" in value for value in values):
            errors.append({"type": "string_nul", "loc": ["query", name], "msg": "contains a NUL character", "input": values})
    for name, value in request.path_params.items():
        if "\x00" in str(value):
            errors.append({"type": "string_nul", "loc": ["path", name], "msg": "contains a NUL character", "input": value})
    if errors:
        raise RequestValidationError(errors)


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else queries.as_utc(value)


def _not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, what)


# --------------------------------------------------------------------------------------------------- app


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before the app reads it (the
    body is buffered up to the limit and handed on)."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def _refuse(self, send: Any) -> None:
        body = JSONResponse({"detail": f"The request body is larger than {self.limit} bytes"}, status_code=413).body
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers") or ():
            if key == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await self._refuse(send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, delivered = b"".join(chunks), False

        async def replay() -> Any:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(
    store_factory: Callable[[], EvidenceStore] | None = None,
    *,
    policy_factory: Callable[[], Policy] | None = None,
    all_dag_ids: Callable[[], frozenset[str]] | None = None,
) -> FastAPI:
    """The Evidence API. ``store_factory``: where evidence is read (default: the configured store); the health
    records are in the same database as its index. ``policy_factory``: the tenant policy (default: the
    configured one). ``all_dag_ids``: every DAG id Airflow knows (default: from Airflow's metadata database)."""
    try:
        from airflow.configuration import conf

        swagger = conf.getboolean("api", "enable_swagger_ui", fallback=True)
    except Exception:
        swagger = True
    app = FastAPI(
        title="BareCount Evidence API",
        description=DESCRIPTION,
        version=__version__,
        openapi_url="/openapi.json",
        docs_url="/docs" if swagger else None,
        redoc_url=None,
        default_response_class=RedactedJSONResponse,  # every answer's strings redacted on the way out
    )
    app.state.barecount_store = store_factory or _configured_store
    app.state.barecount_policy = policy_factory or get_policy
    app.state.barecount_all_dag_ids = all_dag_ids or _all_dag_ids
    app.add_middleware(BodyLimit)

    @app.exception_handler(PolicyError)
    async def _policy_invalid(_request: Request, err: PolicyError) -> JSONResponse:
        log.error("BareCount API: the tenant policy is invalid: %s", err)
        return JSONResponse(
            {"detail": "BareCount's tenant policy is invalid: run `barecount policy validate` (see docs/policy.md)"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )

    @app.exception_handler(sa.exc.OperationalError)
    async def _index_down(_request: Request, err: sa.exc.OperationalError) -> JSONResponse:
        log.warning("BareCount Evidence API: the evidence index is unreachable: %s", err)
        return JSONResponse(
            {"detail": "The evidence index is unreachable"}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE
        )

    @app.exception_handler(SchemaOutOfDate)
    async def _schema_out_of_date(_request: Request, err: SchemaOutOfDate) -> JSONResponse:
        log.error("BareCount Evidence API: %s", err)
        return JSONResponse(
            {"detail": "BareCount's database schema is out of date: run `barecount db migrate`"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )

    responses: dict[int | str, dict[str, Any]] = {
        401: {"description": "Not authenticated (no or expired token)", "model": ErrorDetail},
        403: {"description": "Invalid token, or not allowed", "model": ErrorDetail},
        503: {
            "description": "The evidence index is unreachable, or its schema is out of date (`barecount db migrate`)",
            "model": ErrorDetail,
        },
    }

    @app.get(
        "/evidence",
        dependencies=[Depends(parameter_rules)],
        response_model=EvidenceRecordCollection,
        summary="List evidence records",
        responses=responses,
        tags=["Evidence"],
    )
    def list_evidence(
        store: StoreDep,
        dag_ids: ReadableDagIds,
        tenant: Name | None = None,
        pipeline: Name | None = None,
        dag_id: Name | None = None,
        state: Name | None = None,
        since: Annotated[Instant, Query(description=f"Runs that ended at or after (ISO 8601; naive: UTC; {queries.TIME_RANGE}).")] = None,
        until: Annotated[Instant, Query(description=f"Runs that ended before (ISO 8601; naive: UTC; {queries.TIME_RANGE}).")] = None,
        limit: Limit = queries.DEFAULT_LIMIT,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        """Records newest first (by the time their run ended), only those of DAGs the user may read."""
        filters = RecordFilter(
            tenant=tenant,
            pipeline=pipeline,
            dag_id=dag_id,
            state=state,
            since=_utc(since),
            until=_utc(until),
            dag_ids=dag_ids,
        )
        rows, total = queries.list_records(store, filters, limit=limit, offset=offset)
        return {"records": rows, "total_entries": total}

    @app.get(
        "/evidence/verify",
        dependencies=[Depends(parameter_rules)],
        response_model=VerificationResponse,
        summary="Verify hash chains",
        responses={**responses, 404: {"description": "No record of this tenant the user may read", "model": ErrorDetail}},
        tags=["Evidence"],
    )
    def verify_chains(
        store: StoreDep,
        dag_ids: ReadableDagIds,
        tenant: Annotated[Name | None, Query(description="One tenant's chain (default: every chain).")] = None,
    ) -> dict[str, Any]:
        """Verify one tenant's chain, or every chain the user may verify: one whose records all belong to
        DAGs the user may read (403 for a named tenant when some do not)."""
        try:
            result = queries.verify(store, tenant, dag_ids)
        except queries.TenantNotFound:
            raise _not_found(f"No evidence of tenant `{tenant}` was found") from None
        except queries.TenantNotReadable:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"Verifying tenant `{tenant}`'s chain needs read access to every DAG that has a record in it",
            ) from None
        chains = [queries.chain_dict(result.reports[name], result.records.get(name, 0)) for name in sorted(result.problems)]
        return {"intact": result.intact, "chains": chains, "total_entries": len(chains), "skipped": result.skipped}

    @app.get(
        "/evidence/{record_id}",
        dependencies=[Depends(parameter_rules)],
        summary="Get one evidence record",
        responses={
            **responses,
            200: {
                "description": "The record (docs/evidence.schema.json) and its `integrity`",
                "content": {"application/json": {}},
                "headers": {
                    "X-BareCount-Integrity": {
                        "description": "ok | redacted | mismatch (the record's content does not give its hash, "
                        "or does not match the index)",
                        "schema": {"type": "string"},
                    }
                },
            },
            404: {"description": "No such record, or one of a DAG the user may not read", "model": ErrorDetail},
        },
        tags=["Evidence"],
    )
    def get_evidence(record_id: Name, store: StoreDep, dag_ids: ReadableDagIds, response: Response) -> dict[str, Any]:
        """The full record, as stored (its schema: docs/evidence.schema.json), plus ``integrity`` (not part of
        the record: drop it before hashing): whether its content still gives its hash and matches the index.
        The header ``X-BareCount-Integrity`` says the same: ``ok``, ``redacted`` or ``mismatch``."""
        record = queries.get_record(store, record_id, dag_ids)
        if record is None:
            raise _not_found(f"The evidence record with record_id: `{record_id}` was not found")
        integrity = store.integrity(record)
        response.headers["X-BareCount-Integrity"] = integrity["status"]
        return {**record, "integrity": integrity}

    @app.get(
        "/cost",
        dependencies=[Depends(parameter_rules)],
        response_model=CostReport,
        response_model_exclude_unset=True,
        summary="Cost roll-up",
        responses=responses,
        tags=["Cost"],
    )
    def cost(
        store: StoreDep,
        dag_ids: ReadableDagIds,
        by: Annotated[list[CostGroup] | None, Query(description="Group by (repeat for several); default tenant.")] = None,
        since: Annotated[Instant, Query(description=f"From this UTC day on (ISO 8601; naive: UTC; {queries.TIME_RANGE}).")] = None,
        until: Annotated[Instant, Query(description=f"Before this UTC day (ISO 8601; naive: UTC; {queries.TIME_RANGE}).")] = None,
        tenant: Name | None = None,
        per_day: Annotated[bool, Query(description="One row per day and group (false: per group).")] = True,
        limit: Limit = queries.DEFAULT_LIMIT,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        """Estimated cost of the runs of DAGs the user may read, summed per day (the UTC day each run ended)
        and group; ``totals`` sums every row."""
        groups = queries.validate_groups(list(by or ["tenant"]))
        rows, totals = queries.cost_report(
            store, groups, since=_utc(since), until=_utc(until), tenant=tenant, dag_ids=dag_ids, per_day=per_day
        )
        return {
            "by": groups,
            "per_day": per_day,
            "rows": rows[offset : offset + limit],
            "total_entries": len(rows),
            "totals": totals,
        }

    @app.post(
        "/agents/{name}/heartbeat",
        dependencies=[Depends(parameter_rules), Depends(may_send_heartbeats)],
        response_model=AgentHeartbeat,
        summary="Record an agent's heartbeat",
        responses={
            **responses,
            403: {"description": "Invalid token, no permission to send heartbeats, or an agent the policy does not list", "model": ErrorDetail},
            400: {"description": "A body that cannot be parsed (not UTF-8 text)", "model": ErrorDetail},
            413: {"description": f"A body larger than {MAX_BODY_BYTES} bytes", "model": ErrorDetail},
        },
        tags=["Agents"],
    )
    def agent_heartbeat(
        name: Annotated[str, Path(pattern=TENANT_NAME.pattern, description="The agent's name, as the policy lists it.")],
        store: StoreDep,
        policy: PolicyDep,
        user: GetUserDep,
        body: Annotated[HeartbeatBody | None, Body()] = None,
    ) -> dict[str, Any]:
        """Record that agent ``name`` is alive, with its version and capabilities: one row per agent (the
        previous heartbeat replaced). Its tenants are those whose policy lists it; an agent the policy does
        not list is refused (403), logged and counted."""
        tenants = queries.agent_tenants(policy, name, config.default_tenant())
        if not tenants:
            log.warning("BareCount: refused a heartbeat of agent %r from user %r: the policy lists no such agent", name, user.get_name())
            selfmetrics.failure("agent_heartbeat", "refused")
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"Agent `{name}` is not listed in the tenant policy (network_profiles.<profile>.dependencies.agents)",
            )
        body = body or HeartbeatBody(version=None)
        url = store.index.url
        records.record_heartbeat(
            name, tenants=sorted(tenants), version=body.version, capabilities=body.capabilities, reported_by=user.get_name(), url=url
        )
        (row,) = records.heartbeats([name], url=url)
        return row

    @app.get(
        "/health",
        dependencies=[Depends(parameter_rules)],
        response_model=HealthReport,
        summary="Dependencies' last health results and agents' heartbeats",
        responses=responses,
        tags=["Health"],
    )
    def health(
        store: StoreDep,
        policy: PolicyDep,
        tenants: ReadableTenants,
        tenant: Annotated[Name | None, Query(description="One tenant's results and agents.")] = None,
    ) -> dict[str, Any]:
        """The last result of every dependency of the tenants the user may read (every tenant when they may
        read every DAG), and the agents the policy lists for them or that sent heartbeats for them."""
        shown: frozenset[str] | None = tenants
        if tenant is not None:
            shown = frozenset({tenant}) & tenants if tenants is not None else frozenset({tenant})
        url = store.index.url
        results = records.latest_results(shown, url=url)
        agents = queries.agents_report(policy, records.heartbeats(url=url), shown, config.default_tenant())
        return {
            "results": results,
            "agents": agents,
            "tenants": None if tenants is None else sorted(tenants),
            "total_entries": len(results),
        }

    return app
