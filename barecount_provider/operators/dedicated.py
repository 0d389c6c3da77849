"""Old import path of the dedicated compute runner; the code lives in ``barecount_provider.operators.ec2`` (one service a module).

Kept so that no DAG breaks: every public name this module had is importable from here and is the same
object as in its new module (tests/unit/test_operator_import_paths.py checks it). New code imports from
the new module.
"""

from __future__ import annotations

from barecount_provider.operators.ec2 import (
    EC2,
    LIVE_STATES,
    MANAGED_TAG,
    RUN_SHELL_SCRIPT,
    SSM,
    SSM_FAILED_STATUSES,
    SSM_SUCCESS_STATUS,
    TAG_DAG_ID,
    TAG_PIPELINE,
    TAG_RUN,
    TAG_RUN_ID,
    TAG_TASK_ID,
    TAG_TENANT,
    DedicatedComputeFailed,
    DedicatedComputeOperator,
    HostsNotReady,
    ManagedHost,
    ReadinessCheck,
    commands_with_identity,
    host_tags,
    instance_state_only,
    managed_hosts,
    record_command_invocations,
    ssm_agent_online,
    sweep_orphans,
)

__all__ = [
    "DedicatedComputeFailed",
    "DedicatedComputeOperator",
    "EC2",
    "HostsNotReady",
    "LIVE_STATES",
    "MANAGED_TAG",
    "ManagedHost",
    "RUN_SHELL_SCRIPT",
    "ReadinessCheck",
    "SSM",
    "SSM_FAILED_STATUSES",
    "SSM_SUCCESS_STATUS",
    "TAG_DAG_ID",
    "TAG_PIPELINE",
    "TAG_RUN",
    "TAG_RUN_ID",
    "TAG_TASK_ID",
    "TAG_TENANT",
    "commands_with_identity",
    "host_tags",
    "instance_state_only",
    "managed_hosts",
    "record_command_invocations",
    "ssm_agent_online",
    "sweep_orphans",
]
