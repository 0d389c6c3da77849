"""The queries behind the Evidence API and the ``barecount evidence`` / ``barecount cost`` commands.

No FastAPI here: the command imports this module on a machine that may have no API server. Every function
takes the store and, for the API, the set of DAG ids the caller may read (None: no restriction, the
command's case: it runs with the store's own configuration).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from barecount_provider.evidence.record import ChainProblem, ChainReport
from barecount_provider.evidence.store import COST_GROUPS, EvidenceStore, RecordFilter, records_table
from barecount_provider.policy import Policy

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
# The largest offset: the index's integers are 64-bit (SQLite's INTEGER, PostgreSQL's bigint).
MAX_OFFSET = 2**63 - 1

# The index columns a listing shows (``location``, where the body is kept, stays internal).
SUMMARY_FIELDS = (
    "record_id",
    "tenant",
    "sequence",
    "hash",
    "pipeline",
    "dag_id",
    "run_id",
    "state",
    "complete",
    "started_at",
    "ended_at",
    "total_cost_usd",
    "cost_complete",
)
COST_SUMS = ("runtime_hours", "compute_usd", "storage_usd", "transfer_usd", "total_usd")

_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# What a time parameter must look like (the Evidence API's OpenAPI states it as the parameter's ``pattern``): an
# ISO 8601 time starts with a four-digit year and a month, so a bare number (``0.5``, ``1700000000``) is not
# taken as a Unix time. Its day lies from 0001-01-02 to 9999-12-30: on the first and the last day of the
# calendar a zone offset can put the UTC time outside it (``0001-01-01T00:00:00+01:00``).
INSTANT_PATTERN = r"^(?!0001-01-01|9999-12-31)[0-9]{4}-[0-9]{2}"
TIME_RANGE = "days 0001-01-02 to 9999-12-30, in any zone"
_INSTANT = re.compile(INSTANT_PATTERN)
_CALENDAR_ENDS = re.compile(r"^(0001-01-01|9999-12-31)")


class TimeOutOfRange(ValueError):
    """A time too close to either end of the calendar for its UTC equivalent to be sure to exist."""


def parse_instant(value: str) -> datetime:
    """An ISO 8601 instant (naive: UTC) as a UTC datetime; ValueError with a message on anything else
    (TimeOutOfRange on the calendar's first or last day)."""
    if _CALENDAR_ENDS.match(value):
        raise TimeOutOfRange(f"{value!r} is outside the supported range of times ({TIME_RANGE})")
    try:
        if not _INSTANT.match(value):
            raise ValueError
        parsed = datetime.fromisoformat(value)
        return as_utc(parsed)
    except (ValueError, OverflowError):
        raise ValueError(f"{value!r} is not an ISO 8601 time (2026-11-27T10:00:00+00:00)") from None


def parse_time(value: str, *, now: datetime | None = None) -> datetime:
    """An ISO 8601 instant (naive: UTC) or a duration back from now: ``30d``, ``12h``, ``90m``, ``2w``."""
    match = _RELATIVE.match(value)
    if match:
        amount = int(match.group(1))
        try:
            return (now or datetime.now(UTC)) - timedelta(**{_UNITS[match.group(2)]: amount})
        except OverflowError:
            raise TimeOutOfRange(f"{value!r} reaches back before the first supported time ({TIME_RANGE})") from None
    try:
        return parse_instant(value.strip())
    except TimeOutOfRange:
        raise
    except ValueError:
        raise ValueError(
            f"{value!r} is neither an ISO 8601 time (2026-11-27T10:00:00+00:00) nor a duration (30d, 12h, 90m, 2w)"
        ) from None


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC (naive: taken as UTC); OverflowError when that falls outside the calendar."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def summary(row: Mapping[str, Any]) -> dict[str, Any]:
    """A listing's view of an index row."""
    return {name: row.get(name) for name in SUMMARY_FIELDS}


def list_records(
    store: EvidenceStore,
    filters: RecordFilter,
    *,
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """One page of records (newest first) and how many match. ``filters.dag_ids``: only those DAGs."""
    if filters.dag_ids is not None and not filters.dag_ids:
        return [], 0  # may read no DAG: nothing, without asking the index
    rows, total = store.list_records(filters, limit=limit, offset=offset)
    return [summary(row) for row in rows], total


def get_record(store: EvidenceStore, record_id: str, dag_ids: frozenset[str] | None = None) -> dict[str, Any] | None:
    """The full record, or None when it does not exist, its body is gone, or its DAG is not in ``dag_ids``
    (the caller cannot tell these apart: a record of a DAG one may not read does not exist for them)."""
    row = store.index.row(record_id)
    if row is None or (dag_ids is not None and row["dag_id"] not in dag_ids):
        return None
    return store.bodies.get(row["location"])


def tenant_dags(store: EvidenceStore, tenants: Iterable[str] | None = None) -> dict[str, set[str]]:
    """The DAG ids of each tenant's records (every tenant, or those named)."""
    columns = records_table.c
    query = sa.select(columns.tenant, columns.dag_id).distinct()
    names = None if tenants is None else sorted(set(tenants))
    if names is not None:
        query = query.where(columns.tenant.in_(names))
    result: dict[str, set[str]] = {name: set() for name in names or ()}
    with store.index.engine.connect() as connection:
        for tenant, dag_id in connection.execute(query):
            result.setdefault(str(tenant), set()).add(str(dag_id))
    return result


def chain_lengths(store: EvidenceStore, tenants: Iterable[str]) -> dict[str, int]:
    columns = records_table.c
    names = sorted(set(tenants))
    if not names:
        return {}
    query = sa.select(columns.tenant, sa.func.count()).where(columns.tenant.in_(names)).group_by(columns.tenant)
    with store.index.engine.connect() as connection:
        counts = {str(tenant): int(count) for tenant, count in connection.execute(query)}
    return {name: counts.get(name, 0) for name in names}


class TenantNotFound(LookupError):
    """No record of this tenant that the caller may read."""


class TenantNotReadable(PermissionError):
    """The caller may read some but not every DAG of this tenant's chain."""

    def __init__(self, tenant: str, unreadable: int) -> None:
        super().__init__(tenant)
        self.tenant, self.unreadable = tenant, unreadable


@dataclass
class Verification:
    """Chains verified (tenant -> problems) with their length; ``skipped``: chains the caller may not verify;
    ``reports``: each chain's full report (checkpoints, not yet checkpointed, redacted)."""

    problems: dict[str, list[ChainProblem]] = field(default_factory=dict)
    records: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    reports: dict[str, ChainReport] = field(default_factory=dict)

    @property
    def intact(self) -> bool:
        return not any(self.problems.values())


def verify(store: EvidenceStore, tenant: str | None = None, dag_ids: frozenset[str] | None = None) -> Verification:
    """Verify one tenant's chain or every chain.

    A chain is verified for a caller only when they may read **every** DAG that has a record in it: verifying
    reads each record and names the broken ones. With ``tenant`` named: TenantNotFound when the caller may
    read none of its records (or there are none), TenantNotReadable when some but not all. Without: the
    chains they may not wholly read are skipped (counted in ``skipped``).
    """
    result = Verification()
    if tenant is not None:
        dags = tenant_dags(store, [tenant])[tenant]
        if dag_ids is not None:
            if not dags or not (dags & dag_ids):
                raise TenantNotFound(tenant)
            if not dags <= dag_ids:
                raise TenantNotReadable(tenant, len(dags - dag_ids))
        names = [tenant]
    elif dag_ids is None:  # every chain, and every tenant the checkpoints know (one may have vanished)
        result.reports = store.verify_report()
        names = sorted(result.reports)
    else:
        by_tenant = tenant_dags(store)
        names = sorted(name for name, dags in by_tenant.items() if dags <= dag_ids)
        result.skipped = len(by_tenant) - len(names)
    for name in names:
        if name not in result.reports:
            result.reports[name] = store.verify_report(name)[name]
        result.problems[name] = result.reports[name].problems
    result.records = chain_lengths(store, names)
    return result


def chain_dict(report: ChainReport, records: int) -> dict[str, Any]:
    """One chain's verification as the command's --json and the API show it (no server path in it)."""
    return {
        "tenant": report.tenant,
        "records": records,
        "intact": report.intact,
        "problems": [problem_dict(p) for p in report.problems],
        "checkpoints": report.checkpoints,
        "checkpointed_through": report.checkpointed_through,
        "latest_checkpoint_at": report.latest_checkpoint_at,
        "not_yet_checkpointed": report.not_yet_checkpointed,
        "redacted": report.redacted,
    }


def problem_dict(problem: ChainProblem) -> dict[str, Any]:
    return {
        "tenant": problem.tenant,
        "sequence": problem.sequence,
        "record_id": problem.record_id,
        "kind": problem.kind,
        "detail": problem.detail,
        "message": str(problem),
    }


def validate_groups(by: Sequence[str]) -> list[str]:
    """The roll-up's groups, in order, without repeats; ValueError on an unknown one."""
    groups: list[str] = []
    for item in by:
        for name in (part.strip() for part in item.split(",")):
            if not name:
                continue
            if name not in COST_GROUPS:
                raise ValueError(f"cost roll-up by {name!r}: expected one of {', '.join(COST_GROUPS)}")
            if name not in groups:
                groups.append(name)
    return groups or ["tenant"]


def cost_report(
    store: EvidenceStore,
    by: Sequence[str],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    tenant: str | None = None,
    dag_ids: frozenset[str] | None = None,
    per_day: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of the cost roll-up (per day when ``per_day``) and their totals."""
    groups = validate_groups(by)
    if dag_ids is not None and not dag_ids:
        rows: list[dict[str, Any]] = []
    else:
        rows = store.index.cost_rollup(groups, since=since, until=until, tenant=tenant, dag_ids=dag_ids, per_day=per_day)
    keys = (["day"] if per_day else []) + groups
    by_key: dict[tuple[str, ...], dict[str, Any]] = {}
    for row in rows:
        item = {name: row[name] for name in keys}
        item.update({name: round(float(row[name] or 0.0), 10) for name in COST_SUMS})
        item.update(runs=int(row["runs"]), unknown_tries=0, unknown_reasons=[])
        by_key[tuple(str(item[name]) for name in keys)] = item
    if dag_ids is None or dag_ids:
        for facts, reason in _unknown_tries(store, since=since, until=until, tenant=tenant, dag_ids=dag_ids):
            item = by_key.setdefault(
                tuple(str(facts[name]) for name in keys),
                {**{name: facts[name] for name in keys}, **dict.fromkeys(COST_SUMS, 0.0), "runs": 0, "unknown_tries": 0, "unknown_reasons": []},
            )
            item["unknown_tries"] += 1
            if reason not in item["unknown_reasons"]:
                item["unknown_reasons"].append(reason)
    clean = [by_key[key] for key in sorted(by_key)]
    for item in clean:
        item["unknown_reasons"] = sorted(item["unknown_reasons"])
    totals: dict[str, Any] = {name: round(sum(item[name] for item in clean), 10) for name in COST_SUMS}
    totals["currency"] = "USD"
    totals["unknown_tries"] = sum(item["unknown_tries"] for item in clean)
    return clean, totals


ABSENT_REASON = "the try's evidence entry is absent (the record was sealed without it)"


def absent_reasons(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(try key, why its cost is unknown) of each absent try of ``record``: :data:`ABSENT_REASON`, with the
    code of the entry's ``reason`` (heartbeat_timeout, killed_externally, ended_without_entry) when it has one."""
    codes = {entry.get("key"): (entry.get("reason") or {}).get("code") for entry in record.get("entries") or () if entry.get("absent")}
    return [(str(key), f"{ABSENT_REASON}: {codes[key]}" if codes.get(key) else ABSENT_REASON) for key in record.get("absent") or ()]


def _unknown_tries(
    store: EvidenceStore,
    *,
    since: datetime | None,
    until: datetime | None,
    tenant: str | None,
    dag_ids: frozenset[str] | None,
) -> Iterable[tuple[dict[str, str], str]]:
    """The tries whose cost is unknown in the records of the range (the UTC day each run ended, as the cost
    lines): their day, tenant, pipeline, runner class, size and DAG, and why. A try whose entry is absent
    has an unknown cost too (its runner class and size are then ``unknown``). Only records the index marks
    incomplete, or with some cost unknown, are read."""
    columns = records_table.c
    query = sa.select(columns.location).where(sa.or_(columns.cost_complete.is_(False), columns.complete.is_(False)))
    if since is not None:
        day = datetime.combine(since.astimezone(UTC).date(), datetime.min.time(), UTC)
        query = query.where(columns.ended_epoch >= day.timestamp())
    if until is not None:
        day = datetime.combine(until.astimezone(UTC).date(), datetime.min.time(), UTC)
        query = query.where(columns.ended_epoch < day.timestamp())
    if tenant is not None:
        query = query.where(columns.tenant == tenant)
    if dag_ids is not None:
        query = query.where(columns.dag_id.in_(sorted(dag_ids)))
    with store.index.engine.connect() as connection:
        locations = [str(location) for location in connection.scalars(query.order_by(columns.ended_epoch))]
    for location in locations:
        record = store.bodies.get(location)
        if not record:
            continue
        ended_day = str(record.get("ended_at") or record.get("sealed_at") or "")[:10]
        base = {"day": ended_day, "tenant": record.get("tenant"), "pipeline": record.get("pipeline"), "dag_id": record.get("dag_id")}
        unknown = set((record.get("cost") or {}).get("unknown") or ())
        for entry in record.get("entries") or ():
            if entry.get("key") not in unknown:
                continue
            context = entry.get("context") or {}
            missing = (entry.get("cost") or {}).get("missing") or ["no reason recorded"]
            facts = {**base, "runner_class": context.get("runner_class") or "unknown", "size": context.get("size") or "unknown"}
            yield {name: str(value) for name, value in facts.items()}, "; ".join(str(m) for m in missing)
        for _key, why in absent_reasons(record):
            yield {name: str(value) for name, value in {**base, "runner_class": "unknown", "size": "unknown"}.items()}, why


# ------------------------------------------------------------------------------------- health and agents


def agent_tenants(policy: Policy, name: str, default_tenant: str | None = None) -> dict[str, int]:
    """The tenants whose policy lists agent ``name`` among the dependencies of a network profile they may use
    (``network_profiles.<profile>.dependencies.agents``), each with the smallest ``max_heartbeat_age_seconds``
    of those profiles (see :func:`listed_agents`). Never what an agent says of itself."""
    return listed_agents(policy, default_tenant).get(name, {})


def listed_agents(policy: Policy, default_tenant: str | None = None) -> dict[str, dict[str, int]]:
    """Every agent the policy lists: name -> tenant -> largest heartbeat age allowed (the smallest
    ``max_heartbeat_age_seconds`` of the tenant's profiles that list it). The tenants: every tenant the policy
    declares, and ``default_tenant`` (a tenant it does not declare gets the policy's defaults)."""
    tenants = dict(policy.tenants)
    if default_tenant and default_tenant not in tenants:
        tenants[default_tenant] = policy.for_tenant(default_tenant)
    agents: dict[str, dict[str, int]] = {}
    for tenant, settings in tenants.items():
        for profile in settings.allowed_network_profiles:
            for agent in settings.dependencies(profile).agents:
                ages = agents.setdefault(agent.name, {})
                ages[tenant] = min(ages.get(tenant, agent.max_heartbeat_age_seconds), agent.max_heartbeat_age_seconds)
    return agents


def tenants_of_dags(store: EvidenceStore, dag_ids: frozenset[str]) -> set[str]:
    """The tenants that have an evidence record of one of ``dag_ids``."""
    return {tenant for tenant, dags in tenant_dags(store).items() if dags & dag_ids}


def tenants_of_teams(policy: Policy, teams: Iterable[str]) -> set[str]:
    """The tenants the policy binds to one of ``teams`` (``declared_by.teams``)."""
    wanted = set(teams)
    return {tenant for tenant, settings in policy.tenants.items() if wanted & set(settings.declared_by.teams)}


def agents_report(
    policy: Policy,
    stored: Sequence[Mapping[str, Any]],
    tenants: Collection[str] | None,
    default_tenant: str | None = None,
) -> list[dict[str, Any]]:
    """The agents a reader of ``tenants`` (None: every tenant) sees: every agent the policy lists for one of
    them, seen or not, and every agent that sent a heartbeat for one of them (``listed`` false once the policy
    no longer lists it). ``max_age_seconds``: the smallest largest-age of the profiles that list it; ``stale``:
    never seen, or seen longer ago than that."""
    listed = listed_agents(policy, default_tenant)
    by_name = {str(row["name"]): row for row in stored}
    report: list[dict[str, Any]] = []
    for name in sorted(set(listed) | set(by_name)):
        ages = listed.get(name, {})
        row = by_name.get(name)
        agent_tenants_now = sorted(ages) if ages else list(row["tenants"] if row else [])
        visible = set(agent_tenants_now) | set(row["tenants"] if row else [])
        if tenants is not None and not (visible & set(tenants)):
            continue
        max_age = min(ages.values()) if ages else None
        age = None if row is None else float(row["age_seconds"])
        report.append(
            {
                "name": name,
                "listed": bool(ages),
                "tenants": agent_tenants_now,
                "version": row["version"] if row else None,
                "capabilities": list(row["capabilities"]) if row else [],
                "seen_at": row["seen_at"] if row else None,
                "age_seconds": age,
                "beats": int(row["beats"]) if row else 0,
                "max_age_seconds": max_age,
                "stale": age is None or (max_age is not None and age > max_age),
            }
        )
    return report
