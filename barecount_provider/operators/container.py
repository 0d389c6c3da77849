"""Old import path of the container runners; the code lives in ``barecount_provider.operators.kubernetes`` and ``barecount_provider.operators.ecs`` (one service a module).

Kept so that no DAG breaks: every public name this module had is importable from here and is the same
object as in its new module (tests/unit/test_operator_import_paths.py checks it). New code imports from
the new module.
"""

from __future__ import annotations

from barecount_provider.operators.base import (
    LABEL_PREFIX,
)
from barecount_provider.operators.ecs import (
    ECS_SERVICE,
    ECS_SUCCESS_STOP_CODE,
    FARGATE_SIZE_KEYS,
    EcsContainerRun,
    EcsRunnerOperator,
    EcsTaskFailed,
    EcsTaskRun,
    overrides_with_size_and_identity,
    parse_describe_tasks,
    parse_ecs_task,
    record_ecs_requested,
    record_ecs_run,
)
from barecount_provider.operators.kubernetes import (
    POD_SIZE_KEYS,
    SERVICE,
    TERMINAL_PHASES,
    KubernetesPodFailed,
    KubernetesRunnerOperator,
    ObservePodCallback,
    PodRun,
    parse_pod,
    pod_as_json,
    pod_resources,
    record_pod_run,
    record_requested,
)

__all__ = [
    "ECS_SERVICE",
    "ECS_SUCCESS_STOP_CODE",
    "EcsContainerRun",
    "EcsRunnerOperator",
    "EcsTaskFailed",
    "EcsTaskRun",
    "FARGATE_SIZE_KEYS",
    "KubernetesPodFailed",
    "KubernetesRunnerOperator",
    "LABEL_PREFIX",
    "ObservePodCallback",
    "POD_SIZE_KEYS",
    "PodRun",
    "SERVICE",
    "TERMINAL_PHASES",
    "overrides_with_size_and_identity",
    "parse_describe_tasks",
    "parse_ecs_task",
    "parse_pod",
    "pod_as_json",
    "pod_resources",
    "record_ecs_requested",
    "record_ecs_run",
    "record_pod_run",
    "record_requested",
]
