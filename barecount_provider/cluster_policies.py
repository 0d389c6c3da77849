"""Cluster policies (entry point ``airflow.policy``), applied by Airflow when a DAG file is parsed.

``dag_policy`` snapshots each DAG's declared identity params (tenant, pipeline, size, network profile,
opt-out) before any run's conf can be merged into them, so a user who triggers a run with
``{"tenant": "other"}`` cannot charge or read as another tenant.

``task_policy`` puts each BareCount runner task left in Airflow's ``default_pool`` into its tenant's pool,
``barecount_<tenant>_<runner_class>``, and fails the DAG file's import (``AirflowClusterPolicyViolation``, shown
as an import error) in the DAG processor when that pool does not exist (see
:mod:`barecount_provider.pools` and docs/pools.md). It then gives every task of a DAG that has not opted out
its tenant's retries, backoff and BareCount's retry policy (:func:`barecount_provider.recovery.retry.attach`,
docs/recovery.md): the policy object is never serialized, so this runs again in the task process, where the
DAG file is parsed once more and the retry policy is evaluated.

``dag_policy`` also refuses, as an import error, a DAG that declares a tenant its DAG bundle may not use (policy
``declared_by``: the bundles, and the teams owning bundles, that may declare each tenant; docs/policy.md): a
team's DAG never writes into another team's chain. The scheduler side checks the same binding at run time
(:func:`tenant_refused_at_run_time`) and records nothing of a DAG it refuses. While the policy file is
invalid, ``task_policy`` puts a ``policy_invalid`` exception on each task, which every try's evidence entry
carries (``[barecount] policy_invalid``).

A task process parses its whole DAG file but runs one task of it. There both policies do their work for
that task and its DAG only, and return at once for every other task and DAG of the file: Airflow's task
runner sets its parsing context (``airflow.sdk.get_parsing_context()``) to the running try's ``dag_id`` and
``task_id`` while it parses the file, and :func:`running_task` reads them from there. Anywhere else (the DAG
processor, the scheduler, the CLI, ``dag.test()``, a test) no task is set and every task is handled. The
policies cost a task process about 6 µs for each other task in its file instead of about 19 µs
(``benchmarks/bench_policy.py``).

Importing this module also extends Airflow's secrets masker (:func:`extend_masker_at_settings_load`): Airflow
imports it in every process when it loads its settings, plugins loaded or not, so task log files are masked
on every executor with Airflow's defaults (docs/logging.md).
"""

from __future__ import annotations

import logging
from typing import Any

import pluggy

from barecount_provider import config, context, pools
from barecount_provider.adapters import airflow as airflow_adapter
from barecount_provider.tenancy import bundle_teams

log = logging.getLogger(__name__)

hookimpl = pluggy.HookimplMarker("airflow.policy")


# ------------------------------------------------------------------------------ the masker, in every process

MASKER_EXTENDED_AT_SETTINGS_LOAD = False
"""Whether :func:`extend_masker_at_settings_load` extended Airflow's secrets masker in this process."""


def extend_masker_at_settings_load() -> bool:
    """Extend Airflow's secrets masker with BareCount's patterns and key names, and register this process's
    sensitively named environment variables (:func:`~barecount_provider.redaction.install_in_airflow_masker`).

    Called when Airflow imports this module: ``airflow.settings.initialize()`` loads the ``airflow.policy``
    entry points (``load_policy_plugins``) in every process that imports Airflow, before it configures logging,
    whatever ``[core] lazy_load_plugins`` says. So the extension is active in every process that supervises
    tasks (a LocalExecutor worker, a Celery worker and the pool processes it forks, ``airflow tasks run`` in a
    Kubernetes pod, the triggerer, the DAG processor) with Airflow's defaults, while plugins are loaded in
    some of them only. The plugin installs it again when it is loaded (idempotent), adding the component-log
    processor, which needs the logging Airflow configures after this point. Never raises; with
    ``[barecount] enabled = False`` it does nothing."""
    global MASKER_EXTENDED_AT_SETTINGS_LOAD
    try:
        if not config.enabled():
            return False
        from barecount_provider.redaction import install_in_airflow_masker

        MASKER_EXTENDED_AT_SETTINGS_LOAD = install_in_airflow_masker(component_logs=False)
    except Exception:  # an invalid option is reported where the plugin loads; never fail Airflow's start
        log.debug("BareCount could not extend Airflow's secrets masker at settings load", exc_info=True)
    return MASKER_EXTENDED_AT_SETTINGS_LOAD


extend_masker_at_settings_load()


# (id of the DAG whose tasks the policy handles now, the running try's (dag_id, task_id) or None): set by
# dag_policy, which Airflow's DagBag calls before the task_policy of each of that DAG's tasks.
_SCOPE: tuple[int, tuple[str, str] | None] = (0, None)


def running_task() -> tuple[str, str] | None:
    """In a task process, the ``(dag_id, task_id)`` of the try it runs; None in any other process.

    Read from Airflow's parsing context (:func:`airflow.sdk.get_parsing_context`), which Airflow's task runner
    sets to the running try's DAG and task while it parses the DAG file. The CLI sets a DAG alone (and may
    write what it parses to the database): a context without a task is not a task process's."""
    try:
        from airflow.sdk import get_parsing_context

        parsing = get_parsing_context()
    except Exception:
        return None
    if parsing.dag_id and parsing.task_id:
        return parsing.dag_id, parsing.task_id
    return None


def _out_of_scope(dag: Any, task_id: str | None = None) -> bool:
    """Whether this task process does not run ``dag`` (or, given ``task_id``, that task of it)."""
    scope_dag, running = _SCOPE
    if scope_dag != id(dag):
        running = running_task()
    if running is None:
        return False
    return getattr(dag, "dag_id", None) != running[0] or (task_id is not None and task_id != running[1])


@hookimpl
def dag_policy(dag: Any) -> None:
    global _SCOPE
    try:
        if config.enabled():
            _SCOPE = (id(dag), running_task())
            if not _out_of_scope(dag):
                context.snapshot_declared(dag)
    except Exception:  # a policy that raises fails the DAG's import; telemetry must never do that
        log.warning("BareCount could not snapshot the declared params of %s", getattr(dag, "dag_id", dag), exc_info=True)
    refusal = tenant_declaration_refused(dag)
    if refusal is not None:
        from airflow.exceptions import AirflowClusterPolicyViolation

        raise AirflowClusterPolicyViolation(f"BareCount: DAG {getattr(dag, 'dag_id', dag)!r}: {refusal}")


# ------------------------------------------------------------------------------- tenants bound to bundles


def parsing_bundle() -> str | None:
    """The DAG bundle whose file Airflow's DagBag is bagging now (the DAG processor, a task process); None
    elsewhere. Airflow gives a cluster policy the DAG alone: the bundle is read from the DagBag that calls it
    (``DagBag.bag_dag``), the one place BareCount reads it."""
    return airflow_adapter.bagging_bundle_name()


def declared_tenants(dag: Any) -> set[str]:
    """Every tenant the DAG declares: its own, and each task's (operator argument, params, tags, default)."""
    tenants = {context.declared(None, dag, "tenant") or config.default_tenant()}
    for task in getattr(dag, "tasks", None) or ():
        tenants.add(pools.tenant_of(task))
    return tenants


def tenant_declaration_refused(dag: Any, bundle: str | None = None) -> str | None:
    """Why ``dag`` may not declare one of its tenants (policy ``declared_by``); None when it may, when the
    policy binds no tenant, or when the DAG's bundle is not known. ``bundle``: the DAG's bundle when the
    caller knows it; else the bundle Airflow is parsing (:func:`parsing_bundle`)."""
    try:
        if not config.enabled():
            return None
        from barecount_provider.policy import PolicyError, get_policy

        try:
            policy = get_policy()
        except PolicyError:
            return None  # reported where it is loaded, and in the evidence ([barecount] policy_invalid)
        if not policy.binds_tenants or _out_of_scope(dag) or context.is_opted_out(dag):
            return None  # a task process checks the DAG it runs: the DAG processor checked the others
        bundle = bundle or parsing_bundle()
        if bundle is None:
            return None
        team = bundle_teams().get(bundle)
        refusals = [
            reason
            for tenant in sorted(declared_tenants(dag))
            if (reason := policy.declaration_refused(tenant, bundle, team)) is not None
        ]
    except Exception:  # an invalid policy is reported where it is loaded; a bug must not fail the import
        log.warning("BareCount could not check the tenants of %s", getattr(dag, "dag_id", dag), exc_info=True)
        return None
    return "; ".join(refusals) or None


@hookimpl
def task_policy(task: Any) -> None:
    try:
        if not config.enabled():
            return
    except Exception:
        log.warning("BareCount could not read its configuration", exc_info=True)
        return
    try:
        if _out_of_scope(getattr(task, "dag", None), getattr(task, "task_id", None)):
            return  # a task process that runs another task of this file
    except Exception:
        log.debug("BareCount could not tell which task this process runs", exc_info=True)
    try:
        in_default_pool = getattr(task, "pool", None) == pools.DEFAULT_POOL  # cheap test first: runs for every task
    except Exception:
        log.warning("BareCount could not read the pool of %s", getattr(task, "task_id", task), exc_info=True)
        in_default_pool = False
    if in_default_pool:
        _assign_pool(task)
    try:
        # Imported here: it imports Airflow's task SDK, which loads the policy plugins, this module included.
        from barecount_provider.recovery import retry

        retry.attach(task)
    except Exception:  # a policy that raises fails the DAG's import: only a missing pool may do that
        log.warning("BareCount could not attach its retry policy to %s", getattr(task, "task_id", task), exc_info=True)
    _note_invalid_policy(task)


def _note_invalid_policy(task: Any) -> None:
    """While the configured policy is invalid, every try's evidence says so: the ``policy_invalid`` exception
    goes on the task, where the try's entry reads its policy exceptions (``[barecount] policy_invalid``)."""
    try:
        from barecount_provider.policy import (
            POLICY_INVALID_RULE,
            configured_problems,
            invalid_policy_exception,
        )

        problems = configured_problems()
        if not problems:
            return
        exceptions = getattr(task, "barecount_policy_exceptions", None)
        if not isinstance(exceptions, list):
            exceptions = []
            task.barecount_policy_exceptions = exceptions
        if not any(isinstance(e, dict) and e.get("rule") == POLICY_INVALID_RULE for e in exceptions):
            exceptions.append(invalid_policy_exception(pools.tenant_of(task), problems))
    except Exception:  # a policy that raises fails the DAG's import
        log.warning("BareCount could not note the invalid policy on %s", getattr(task, "task_id", task), exc_info=True)


def _assign_pool(task: Any) -> None:
    try:
        pools.apply_to_task(task)
    except pools.MissingPool as err:
        if pools.in_dag_processor():
            from airflow.exceptions import AirflowClusterPolicyViolation

            raise AirflowClusterPolicyViolation(f"BareCount: {err}") from None
        # A task process, `dag.test()`, the CLI: the DAG processor reports it; the task keeps its pool here.
        log.warning("BareCount: %s", err)
    except Exception:  # a policy that raises fails the DAG's import: only a missing pool may do that
        log.warning("BareCount could not assign a pool to %s", getattr(task, "task_id", task), exc_info=True)
