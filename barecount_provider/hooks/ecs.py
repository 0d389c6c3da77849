"""``BareCountEcsHook``: the amazon provider's ``EcsHook`` plus what the ECS runner reads."""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.hooks.ecs import EcsHook


class BareCountEcsHook(EcsHook):
    """``EcsHook`` with the task definition and one task's description."""

    def describe_task_definition(self, task_definition: str) -> dict[str, Any]:
        """DescribeTaskDefinition's ``taskDefinition`` (family, family:revision or ARN)."""
        return dict(self.conn.describe_task_definition(taskDefinition=task_definition)["taskDefinition"])

    def describe_task(self, cluster: str, task_arn: str) -> dict[str, Any]:
        """DescribeTasks of the one task ``task_arn`` on ``cluster``; the whole response."""
        return dict(self.conn.describe_tasks(cluster=cluster, tasks=[task_arn]))
