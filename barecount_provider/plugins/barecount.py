"""The BareCount AirflowPlugin: registers the lifecycle listener and the REST app under ``/barecount``.

With ``[barecount] enabled = False`` nothing is registered: no listener, no masker extension, no sampler.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from barecount_provider import config

log = logging.getLogger(__name__)


def _listeners() -> list[Any]:
    try:
        enabled = config.enabled()
    except ValueError:
        config.report_problems(log)  # every invalid option, once, with its fix
        log.error("BareCount is disabled until [barecount] enabled is valid")
        return []
    if not enabled:
        return []
    # Every component loads this plugin when it starts: each invalid option is logged once, with its fix. The
    # getter of an invalid option raises where BareCount reads it, inside hooks that catch, log and count it
    # (barecount.emit.failed): the task is not affected.
    config.report_problems(log)
    from barecount_provider.listeners import lifecycle

    _install_side_effects()
    return [lifecycle]


def _fastapi_apps() -> list[dict[str, Any]]:
    """The Evidence API under /barecount (built on its first request: see barecount_provider.api)."""
    try:
        if not config.enabled():
            return []
    except ValueError:
        return []
    from barecount_provider.api import fastapi_apps

    return fastapi_apps()


def _install_side_effects() -> None:
    """Extend Airflow's secrets masker (and register the values of this process's sensitively named
    environment variables with it), its trace sampler, and preload what task processes need; all
    idempotent, none raises."""
    try:
        from barecount_provider.listeners import lifecycle
        from barecount_provider.runtime.preload import preload

        preload()
        lifecycle._task_side()  # the listener's reference to the task side, bound before the fork
    except Exception:
        log.warning("BareCount could not preload its telemetry modules", exc_info=True)
    try:
        from barecount_provider.redaction import install_in_airflow_masker

        install_in_airflow_masker()
    except Exception:
        log.warning("BareCount could not extend Airflow's secrets masker", exc_info=True)
    try:
        from barecount_provider.telemetry import tracing

        if config.traces_on() and tracing.airflow_tracing_on():
            from barecount_provider.runtime.scheduler_side import get_scheduler_side
            from barecount_provider.runtime.task_side import policy_values

            tracing.install_tenant_sampler(
                get_scheduler_side().cached_tenant, lambda tenant: policy_values(tenant)[0]
            )
    except Exception:
        log.warning("BareCount could not install its tenant trace sampler", exc_info=True)


class BareCountPlugin(AirflowPlugin):
    """Zero-code telemetry for every task of every DAG."""

    name = "barecount"
    listeners = _listeners()
    fastapi_apps = _fastapi_apps()
