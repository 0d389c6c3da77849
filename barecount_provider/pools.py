"""Airflow pools per tenant and runner class: planned from the policy, synced through Airflow's REST API,
assigned by the cluster policy and checked when a DAG is parsed.

* **Naming**: ``barecount_<tenant>_<runner_class>`` (:func:`pool_name`), one pool per tenant the policy
  declares plus ``[barecount] default_tenant``, times each runner class of
  :data:`POOLED_RUNNER_CLASSES` the tenant's ``allowed_runner_classes`` lists. ``local`` has no pool: a
  local task is an ordinary Airflow task and keeps Airflow's default pool.
* **Slots**: the tenant's ``limits.max_parallel_tasks``; deferred tasks take a slot (``include_deferred``):
  a deferred runner task still has its workload running.
* **Sync**: a task process cannot create a pool (it has no database access and the Execution API has no
  pool route), so ``barecount pools sync`` (:func:`sync`) creates and updates them through the public REST
  API (``/api/v2/pools``) and then writes the **registry**, the Airflow Variable ``barecount_pools``: the
  names and slots of every ``barecount_*`` pool that exists after the sync.
* **Assignment and parse-time check**: the parse process of the DAG processor has no database access
  either and no way to list pools, but it can read a Variable (through the supervisor, as a DAG file's
  ``Variable.get`` does). :func:`apply_to_task` (the cluster policy's ``task_policy``) reads the registry
  once per process and, for a BareCount runner task left in ``default_pool``: assigns the tenant's pool when
  the registry lists it; raises :class:`~airflow.exceptions.AirflowClusterPolicyViolation` (an import error
  of the DAG file, shown in the UI and by ``airflow dags list-import-errors``) when the registry does not
  list it, instead of leaving the task to wait in the scheduler for a pool that does not exist.
  Without a registry (``barecount pools sync`` never ran) pools are off: nothing is assigned, nothing is
  reported.

docs/pools.md is the user's guide.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from barecount_provider.adapters import airflow as airflow_adapter

if TYPE_CHECKING:
    from barecount_provider.policy import Policy

log = logging.getLogger(__name__)

POOL_PREFIX = "barecount_"
POOLED_RUNNER_CLASSES = ("serverless", "container", "managed_etl", "dedicated")
"""Runner classes with a pool (the policy's sized runner classes); ``local`` tasks keep Airflow's pools."""
DEFAULT_POOL = "default_pool"  # Airflow's default pool; a task left in it has not chosen a pool
REGISTRY_VARIABLE = "barecount_pools"
REGISTRY_VERSION = 1
MANAGED_MARKER = "Managed by BareCount"
"""Start of the description of every pool ``barecount pools sync`` creates: ``--prune`` deletes only these."""
REGISTRY_TTL_SECONDS = 30.0

# Exit codes of `barecount pools sync` and `barecount pools check` (documented in docs/pools.md).
EXIT_OK = 0
EXIT_FAILED = 1  # sync: an API call failed; check: pools differ from the policy (drift)
EXIT_USAGE = 2  # missing or invalid URL / credentials, invalid policy or configuration
EXIT_UNREACHABLE = 3  # the API could not be reached (connection refused, DNS, TLS, timeout)
EXIT_AUTH = 4  # the API refused the credentials (401) or the permission (403)


def pool_name(tenant: str, runner_class: str) -> str:
    """The pool of ``tenant``'s tasks of ``runner_class``: ``barecount_<tenant>_<runner_class>``."""
    return f"{POOL_PREFIX}{tenant}_{runner_class}"


def parse_pool_name(name: str) -> tuple[str, str] | None:
    """(tenant, runner class) of a BareCount pool name; None for any other name.

    Unambiguous: no runner class of :data:`POOLED_RUNNER_CLASSES` ends with ``_<another one>``."""
    if not name.startswith(POOL_PREFIX):
        return None
    rest = name[len(POOL_PREFIX) :]
    for runner_class in POOLED_RUNNER_CLASSES:
        suffix = f"_{runner_class}"
        if rest.endswith(suffix) and len(rest) > len(suffix):
            return rest[: -len(suffix)], runner_class
    return None


def pool_description(tenant: str, runner_class: str) -> str:
    return (
        f"{MANAGED_MARKER} (barecount pools sync): tenant {tenant}, runner class {runner_class}; "
        "slots = the tenant's limits.max_parallel_tasks"
    )


# ------------------------------------------------------------------------------------------------- planning


@dataclasses.dataclass(frozen=True)
class DesiredPool:
    """A pool the policy asks for."""

    name: str
    tenant: str
    runner_class: str
    slots: int
    description: str
    include_deferred: bool = True


@dataclasses.dataclass(frozen=True)
class ExistingPool:
    """A pool as the REST API reports it."""

    name: str
    slots: int
    description: str | None
    include_deferred: bool

    @property
    def managed(self) -> bool:
        """Created by ``barecount pools sync`` (its description starts with :data:`MANAGED_MARKER`)."""
        return (self.description or "").startswith(MANAGED_MARKER)

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> ExistingPool:
        return cls(
            name=str(item.get("name") or item.get("pool") or ""),
            slots=int(item.get("slots", 0)),
            description=item.get("description"),
            include_deferred=bool(item.get("include_deferred", False)),
        )


def tenants_with_pools(policy: Policy, default_tenant: str) -> list[str]:
    """Every tenant the policy declares, plus ``default_tenant``, sorted."""
    return sorted({*policy.tenants, default_tenant})


def desired_pools(policy: Policy, default_tenant: str) -> list[DesiredPool]:
    """The pools ``policy`` asks for, sorted by name."""
    wanted = []
    for tenant in tenants_with_pools(policy, default_tenant):
        settings = policy.for_tenant(tenant)
        for runner_class in POOLED_RUNNER_CLASSES:
            if settings.allows_runner_class(runner_class):
                wanted.append(
                    DesiredPool(
                        name=pool_name(tenant, runner_class),
                        tenant=tenant,
                        runner_class=runner_class,
                        slots=settings.limits.max_parallel_tasks,
                        description=pool_description(tenant, runner_class),
                    )
                )
    return sorted(wanted, key=lambda pool: pool.name)


CREATE, UPDATE, KEEP, DELETE, LEAVE = "create", "update", "keep", "delete", "leave"


@dataclasses.dataclass(frozen=True)
class Action:
    """One line of a plan: what happens to one pool, and why."""

    kind: str  # create, update, keep, delete, leave
    name: str
    desired: DesiredPool | None = None
    existing: ExistingPool | None = None
    changes: tuple[str, ...] = ()
    reason: str = ""

    @property
    def changes_something(self) -> bool:
        return self.kind in (CREATE, UPDATE, DELETE)

    def describe(self) -> str:
        symbol = {CREATE: "+", UPDATE: "~", KEEP: "=", DELETE: "-", LEAVE: "!"}[self.kind]
        text = f"  {symbol} {self.kind:<6} {self.name}"
        if self.kind == CREATE and self.desired is not None:
            text += f"  slots {self.desired.slots}  (tenant {self.desired.tenant}, {self.desired.runner_class})"
        elif self.kind == UPDATE:
            text += "  " + "; ".join(self.changes)
        elif self.kind == KEEP and self.desired is not None:
            text += f"  slots {self.desired.slots}"
        if self.reason:
            text += f"  ({self.reason})"
        return text


def plan(desired: Iterable[DesiredPool], existing: Iterable[ExistingPool], *, prune: bool = False) -> list[Action]:
    """What a sync does to go from ``existing`` to ``desired``, one action per ``barecount_*`` pool.

    A desired pool is created, updated (slots, description, include_deferred) or kept. An existing
    ``barecount_*`` pool the policy no longer asks for is deleted only with ``prune`` and only if the sync
    created it (:attr:`ExistingPool.managed`); otherwise it is left, with the reason. Pools whose name does
    not start with ``barecount_`` are never touched nor listed.
    """
    by_name = {pool.name: pool for pool in existing if pool.name.startswith(POOL_PREFIX)}
    actions: list[Action] = []
    wanted_names = set()
    for want in desired:
        wanted_names.add(want.name)
        have = by_name.get(want.name)
        if have is None:
            actions.append(Action(CREATE, want.name, desired=want))
            continue
        changes = []
        if have.slots != want.slots:
            changes.append(f"slots {have.slots} -> {want.slots}")
        if (have.description or "") != want.description:
            changes.append("description" + ("" if have.managed else " (adopts a pool BareCount did not create)"))
        if have.include_deferred != want.include_deferred:
            changes.append(f"include_deferred {have.include_deferred} -> {want.include_deferred}")
        kind = UPDATE if changes else KEEP
        actions.append(Action(kind, want.name, desired=want, existing=have, changes=tuple(changes)))
    for name in sorted(set(by_name) - wanted_names):
        have = by_name[name]
        if not have.managed:
            actions.append(Action(LEAVE, name, existing=have, reason="not created by BareCount: never deleted"))
        elif prune:
            actions.append(Action(DELETE, name, existing=have, reason="no longer in the policy"))
        else:
            actions.append(Action(LEAVE, name, existing=have, reason="no longer in the policy; --prune deletes it"))
    return sorted(actions, key=lambda action: action.name)


# ------------------------------------------------------------------------------------------------ REST API


class ApiError(Exception):
    """A failed call to Airflow's REST API. ``exit_code`` is the command's exit code for it."""

    def __init__(self, message: str, *, exit_code: int = EXIT_FAILED, status: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.status = status


@dataclasses.dataclass
class Credentials:
    """How to authenticate: a token, or a user name and password exchanged for one at ``/auth/token``."""

    token: str | None = None
    username: str | None = None
    password: str | None = None

    def secrets(self) -> list[str]:
        return [value for value in (self.token, self.password) if value]


class AirflowApi:
    """A small client of Airflow 3's public REST API (``/api/v2``), on the standard library only; also what
    ``barecount agent heartbeat`` sends with (:meth:`send`, :meth:`login`, :meth:`fresh_token`).

    ``base_url`` is the API server's URL (``[api] base_url``, e.g. ``https://airflow.example.com`` or with a
    path prefix). Messages never contain the password or the token.
    """

    def __init__(self, base_url: str, credentials: Credentials, *, timeout: float = 30.0) -> None:
        parsed = urllib.parse.urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ApiError(
                f"API URL {base_url!r} is not an http(s) URL (e.g. http://localhost:8080)", exit_code=EXIT_USAGE
            )
        self.base_url = base_url.rstrip("/")
        self.credentials = credentials
        self.timeout = timeout
        self._token = credentials.token

    def _redact(self, text: str) -> str:
        for secret in self.credentials.secrets():
            text = text.replace(secret, "***")
        return text

    def send(
        self, method: str, path: str, body: Any = None, *, token: str | None = None
    ) -> tuple[int, Any]:
        """``method`` ``base_url + path`` with ``body`` as JSON; (status, decoded payload) whatever the
        status. :class:`ApiError` (``EXIT_UNREACHABLE``) when no answer came."""
        url = f"{self.base_url}{path}"
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as err:
            raw = err.read() or b""
            status = err.code
        except (urllib.error.URLError, OSError) as err:  # refused, DNS, TLS, timeout
            reason = getattr(err, "reason", err)
            raise ApiError(
                f"cannot reach the Airflow API at {self.base_url}: {self._redact(str(reason))}",
                exit_code=EXIT_UNREACHABLE,
            ) from None
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode(errors="replace")
        return status, payload

    def detail(self, payload: Any) -> str:
        """An error answer's ``detail`` (or the whole answer) as one redacted line of at most 300 characters."""
        if isinstance(payload, dict) and "detail" in payload:
            payload = payload["detail"]
        text = payload if isinstance(payload, str) else json.dumps(payload)
        return self._redact(text)[:300]

    def login(self) -> str:
        """The bearer token: the given one, or one from ``POST /auth/token`` (SimpleAuthManager, FAB)."""
        if self._token:
            return self._token
        creds = self.credentials
        if not (creds.username and creds.password):
            raise ApiError(
                "no credentials: give --token (or BARECOUNT_API_TOKEN), or --username and --password "
                "(or BARECOUNT_API_USERNAME and BARECOUNT_API_PASSWORD)",
                exit_code=EXIT_USAGE,
            )
        status, payload = self.send("POST", "/auth/token", {"username": creds.username, "password": creds.password})
        if status in (200, 201) and isinstance(payload, dict) and payload.get("access_token"):
            self._token = str(payload["access_token"])
            return self._token
        if status in (400, 401, 403, 422):
            # the body of a refused login is not shown: some auth managers echo what was sent
            raise ApiError(
                f"POST /auth/token: the API refused user {creds.username!r} ({status}): check the user name "
                "and password",
                exit_code=EXIT_AUTH,
                status=status,
            )
        if status in (404, 405):
            raise ApiError(
                f"POST {self.base_url}/auth/token: {status}: is {self.base_url} the Airflow 3 API server (its "
                "[api] base_url)? An auth manager without /auth/token needs --token",
                exit_code=EXIT_USAGE,
                status=status,
            )
        raise ApiError(f"POST /auth/token -> {status}", status=status)

    def fresh_token(self) -> str:
        """After a 401: a new token from ``/auth/token`` (the given ``--token`` when there is one: it cannot
        be renewed)."""
        self._token = self.credentials.token
        return self.login()

    def call(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (200,)) -> tuple[int, Any]:
        """``method`` ``/api/v2<path>``; raise :class:`ApiError` unless the status is in ``ok``."""
        status, payload = self.send(method, f"/api/v2{path}", body, token=self.login())
        if status in ok:
            return status, payload
        what = f"{method} /api/v2{path.split('?')[0]}"
        if status == 401:
            raise ApiError(f"{what}: 401 unauthorized: the token is invalid or expired", exit_code=EXIT_AUTH, status=401)
        if status == 403:
            raise ApiError(
                f"{what}: 403 forbidden: the user may not do this (needs the pool permissions, and the "
                "variable permissions for the registry)",
                exit_code=EXIT_AUTH,
                status=403,
            )
        if status == 404 and path.startswith("/pools?"):
            raise ApiError(
                f"{what}: 404: is {self.base_url} the Airflow 3 API server (its [api] base_url)?",
                exit_code=EXIT_USAGE,
                status=404,
            )
        raise ApiError(f"{what}: {status}: {self.detail(payload)}", status=status)

    # pools

    def list_pools(self) -> list[ExistingPool]:
        pools: list[ExistingPool] = []
        offset = 0
        while True:
            query = urllib.parse.urlencode({"limit": 100, "offset": offset, "order_by": "id"})
            _, page = self.call("GET", f"/pools?{query}")
            batch = page.get("pools", []) if isinstance(page, dict) else []
            pools.extend(ExistingPool.from_api(item) for item in batch)
            offset += len(batch)
            if not batch or offset >= int(page.get("total_entries", 0)):
                return pools

    def create_pool(self, pool: DesiredPool) -> None:
        body = {
            "name": pool.name,
            "slots": pool.slots,
            "description": pool.description,
            "include_deferred": pool.include_deferred,
        }
        self.call("POST", "/pools", body, ok=(200, 201))

    def update_pool(self, pool: DesiredPool) -> None:
        body = {"slots": pool.slots, "description": pool.description, "include_deferred": pool.include_deferred}
        query = urllib.parse.urlencode([("update_mask", key) for key in body])
        self.call("PATCH", f"/pools/{urllib.parse.quote(pool.name, safe='')}?{query}", body)

    def delete_pool(self, name: str) -> None:
        self.call("DELETE", f"/pools/{urllib.parse.quote(name, safe='')}", ok=(200, 204))

    # variables

    def get_variable(self, key: str) -> str | None:
        status, payload = self.call("GET", f"/variables/{urllib.parse.quote(key, safe='')}", ok=(200, 404))
        if status == 404 or not isinstance(payload, dict):
            return None
        value = payload.get("value")
        return None if value is None else str(value)

    def put_variable(self, key: str, value: str, description: str) -> None:
        path = f"/variables/{urllib.parse.quote(key, safe='')}"
        status, _ = self.call("PATCH", path, {"key": key, "value": value, "description": description}, ok=(200, 404))
        if status == 404:
            self.call("POST", "/variables", {"key": key, "value": value, "description": description}, ok=(200, 201))


# ------------------------------------------------------------------------------------------------ registry


def registry_value(pools: Iterable[ExistingPool], *, policy_source: str) -> str:
    """The registry Variable's JSON: every ``barecount_*`` pool that exists, with its slots."""
    names = {pool.name: pool.slots for pool in pools if pool.name.startswith(POOL_PREFIX)}
    document = {
        "version": REGISTRY_VERSION,
        "synced_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "policy": policy_source,
        "pools": dict(sorted(names.items())),
    }
    return json.dumps(document, sort_keys=True)


def parse_registry(value: object) -> frozenset[str] | None:
    """The pool names of a registry value (JSON text or already decoded); None if it is not one."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, dict) or value.get("version") != REGISTRY_VERSION:
        return None
    pools = value.get("pools")
    if isinstance(pools, dict):
        return frozenset(str(name) for name in pools)
    if isinstance(pools, list):
        return frozenset(str(name) for name in pools)
    return None


_REGISTRY_DESCRIPTION = (
    "Written by `barecount pools sync`: the barecount_* pools that exist. Read when DAGs are parsed to assign "
    "them and to report a missing one. Do not edit: run the sync."
)


# ---------------------------------------------------------------------------------------------- commands


def _line(out: TextIO, text: str = "") -> None:
    print(text, file=out)


def _load_plan_inputs() -> tuple[Policy, str]:
    from barecount_provider import config
    from barecount_provider.policy import load_policy

    return load_policy(config.policy_path() or None), config.default_tenant()


def sync(
    api: AirflowApi,
    *,
    dry_run: bool = False,
    prune: bool = False,
    out: TextIO | None = None,
    inputs: Callable[[], tuple[Policy, str]] = _load_plan_inputs,
) -> int:
    """``barecount pools sync``: print the plan, apply it (unless ``dry_run``), write the registry."""
    out = out or sys.stdout
    policy, default_tenant = inputs()
    desired = desired_pools(policy, default_tenant)
    _line(out, f"Policy: {policy.source}; tenants with pools: {', '.join(tenants_with_pools(policy, default_tenant))}")
    _line(out, f"Airflow API: {api.base_url}")
    actions = plan(desired, api.list_pools(), prune=prune)
    _line(out, f"Plan{' (dry run: nothing is changed)' if dry_run else ''}:")
    for action in actions:
        _line(out, action.describe())
    if not actions:
        _line(out, "  (the policy asks for no pool: no tenant allows a pooled runner class)")
    counts = {kind: sum(1 for action in actions if action.kind == kind) for kind in (CREATE, UPDATE, DELETE)}
    summary = f"{counts[CREATE]} to create, {counts[UPDATE]} to update, {counts[DELETE]} to delete"
    if dry_run:
        _line(out, f"Dry run: {summary}. The registry Variable {REGISTRY_VARIABLE} is not written.")
        return EXIT_OK

    failures = 0
    for action in actions:
        try:
            if action.kind == CREATE and action.desired is not None:
                api.create_pool(action.desired)
            elif action.kind == UPDATE and action.desired is not None:
                api.update_pool(action.desired)
            elif action.kind == DELETE:
                api.delete_pool(action.name)
            else:
                continue
        except ApiError as err:
            if err.exit_code != EXIT_FAILED:  # unreachable, refused credentials: nothing else would work
                raise
            failures += 1
            _line(out, f"  FAILED {action.kind} {action.name}: {err}")
        else:
            _line(out, f"  done   {action.kind} {action.name}")

    existing = api.list_pools()  # what really exists now is what the registry says
    try:
        api.put_variable(
            REGISTRY_VARIABLE, registry_value(existing, policy_source=policy.source), _REGISTRY_DESCRIPTION
        )
    except ApiError as err:
        _line(out, f"  FAILED registry Variable {REGISTRY_VARIABLE}: {err}")
        _line(out, "  The pools are synced, but DAG files are not checked against them until the registry is written.")
        if err.exit_code != EXIT_FAILED:
            return err.exit_code
        failures += 1
    else:
        registered = sum(1 for pool in existing if pool.name.startswith(POOL_PREFIX))
        _line(out, f"  done   registry Variable {REGISTRY_VARIABLE}: {registered} barecount_* pool(s)")
    if failures:
        _line(out, f"{summary}; {failures} call(s) FAILED")
        return EXIT_FAILED
    _line(out, f"Synced: {summary}.")
    return EXIT_OK


def check(
    api: AirflowApi,
    *,
    out: TextIO | None = None,
    inputs: Callable[[], tuple[Policy, str]] = _load_plan_inputs,
) -> int:
    """``barecount pools check``: exit 1 if a pool or the registry differs from what a sync would make."""
    out = out or sys.stdout
    policy, default_tenant = inputs()
    existing = api.list_pools()
    actions = plan(desired_pools(policy, default_tenant), existing, prune=True)
    drift = [action for action in actions if action.changes_something]
    _line(out, f"Policy: {policy.source}; Airflow API: {api.base_url}")
    for action in actions:
        _line(out, action.describe())
    registry = parse_registry(api.get_variable(REGISTRY_VARIABLE))
    actual = frozenset(pool.name for pool in existing if pool.name.startswith(POOL_PREFIX))
    if registry is None:
        _line(out, f"Registry Variable {REGISTRY_VARIABLE}: absent or unreadable: pools are off at parse time")
    elif registry != actual:
        listed_missing = sorted(registry - actual)
        unlisted = sorted(actual - registry)
        _line(out, f"Registry Variable {REGISTRY_VARIABLE}: STALE")
        if listed_missing:
            _line(out, f"  lists pools that do not exist (their tasks would wait forever): {', '.join(listed_missing)}")
        if unlisted:
            _line(out, f"  does not list existing pools (their DAGs are reported): {', '.join(unlisted)}")
    else:
        _line(out, f"Registry Variable {REGISTRY_VARIABLE}: current ({len(actual)} pool(s))")
    if drift or registry != actual:
        _line(out, "Drift: run `barecount pools sync`" + (" --prune" if any(a.kind == DELETE for a in drift) else ""))
        return EXIT_FAILED
    _line(out, "In sync.")
    return EXIT_OK


# -------------------------------------------------------------------------------------------- task policy

_registry_cache: tuple[float, frozenset[str] | None] | None = None


def registry_cache_clear() -> None:
    global _registry_cache
    _registry_cache = None


def _read_registry() -> frozenset[str] | None:
    """The registry's pool names through Airflow's Variable lookup (the supervisor in a DAG processor's parse
    process or a task process, environment variables ``AIRFLOW_VAR_BARECOUNT_POOLS`` everywhere); None when
    there is none or it cannot be read."""
    try:
        from airflow.sdk import Variable

        value = Variable.get(REGISTRY_VARIABLE, default=None)
    except Exception:
        log.debug("BareCount cannot read the Variable %s: pools are not assigned", REGISTRY_VARIABLE, exc_info=True)
        return None
    if value is None:
        return None
    names = parse_registry(value)
    if names is None:
        log.warning(
            "BareCount: the Variable %s is not a pool registry written by `barecount pools sync`: pools are "
            "not assigned until it is synced again",
            REGISTRY_VARIABLE,
        )
    return names


def known_pools() -> frozenset[str] | None:
    """The registry's pool names, read at most once every :data:`REGISTRY_TTL_SECONDS` per process."""
    global _registry_cache
    now = time.monotonic()
    if _registry_cache is None or _registry_cache[0] <= now:
        _registry_cache = (now + REGISTRY_TTL_SECONDS, _read_registry())
    return _registry_cache[1]


def runner_class_of(task: Any) -> str | None:
    """The pooled runner class of a BareCount runner task (plain or mapped); None for any other object."""
    cls = getattr(task, "operator_class", None) if getattr(task, "is_mapped", False) else type(task)
    runner_class = getattr(cls, "runner_class", None)
    return runner_class if isinstance(runner_class, str) and runner_class in POOLED_RUNNER_CLASSES else None


def tenant_of(task: Any) -> str:
    """The task's tenant, in the order of :mod:`barecount_provider.context` (operator argument, the DAG's
    declared params / default_args, ``tenant:`` tag, ``[barecount] default_tenant``)."""
    from barecount_provider import config, context

    if getattr(task, "is_mapped", False):
        partial_kwargs = getattr(task, "partial_kwargs", None) or {}
        tenant = partial_kwargs.get("tenant") if isinstance(partial_kwargs, Mapping) else None
        if isinstance(tenant, str) and tenant:
            return tenant
    return context.declared(task, getattr(task, "dag", None), "tenant") or config.default_tenant()


def in_dag_processor() -> bool:
    """Whether this is the parse process of Airflow's DAG processor (there a missing pool is reported)."""
    return airflow_adapter.in_dag_processor_parse()


def missing_pool_reason(tenant: str, runner_class: str, name: str) -> str:
    """Why ``name`` is not in the registry, and what to do, in the words of the policy when it can tell."""
    try:
        from barecount_provider import config
        from barecount_provider.policy import get_policy

        policy = get_policy()
        settings = policy.for_tenant(tenant)
        if not settings.allows_runner_class(runner_class):
            return (
                f"tenant {tenant!r} may not use runner class {runner_class!r} (allowed_runner_classes: "
                f"{', '.join(settings.allowed_runner_classes)} in {policy.source})"
            )
        if tenant not in policy.tenants and tenant != config.default_tenant():
            return (
                f"tenant {tenant!r} is not declared in the policy ({policy.source}): declare it under "
                "`tenants:` and run `barecount pools sync`"
            )
    except Exception:
        log.debug("BareCount cannot load the policy to explain a missing pool", exc_info=True)
    return "run `barecount pools sync` to create it"


class MissingPool(Exception):
    """A runner task's pool is not in the registry (raised as AirflowClusterPolicyViolation by the policy)."""


def apply_to_task(task: Any) -> str | None:
    """The cluster policy's work on one task; the pool assigned, or None.

    Only BareCount runner tasks of a pooled runner class still in ``default_pool`` are considered; an
    explicit pool is left alone. Raises :class:`MissingPool` when the registry exists and does not list the
    tenant's pool.
    """
    runner_class = runner_class_of(task)
    if runner_class is None or getattr(task, "pool", None) != DEFAULT_POOL:
        return None
    known = known_pools()
    if known is None:  # never synced, or not readable here: pools are off
        return None
    tenant = tenant_of(task)
    name = pool_name(tenant, runner_class)
    if name not in known:
        raise MissingPool(
            f"task {getattr(task, 'task_id', '?')!r}: pool {name!r} (tenant {tenant!r}, runner class "
            f"{runner_class!r}) does not exist: {missing_pool_reason(tenant, runner_class, name)}"
        )
    task.pool = name
    return name
