"""``BareCountEC2Hook``: the amazon provider's ``EC2Hook`` (client type) plus what the dedicated runner
calls to launch hosts and wait for them."""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.hooks.ec2 import EC2Hook


class BareCountEC2Hook(EC2Hook):
    """``EC2Hook`` with RunInstances and the instance waiters. Always a client-type hook."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["api_type"] = "client_type"
        super().__init__(*args, **kwargs)

    def run_instances(self, **request: Any) -> list[dict[str, Any]]:
        """RunInstances with ``request`` (boto3's arguments); the launched ``Instances``."""
        return list(self.conn.run_instances(**request).get("Instances", []))

    def wait_for_instances(self, waiter_name: str, instance_ids: list[str], delay: int, max_attempts: int) -> None:
        """Wait with boto3's EC2 waiter ``waiter_name`` (``instance_running``, ``instance_terminated``, ...)
        for ``instance_ids``, polling every ``delay`` seconds at most ``max_attempts`` times."""
        self.get_waiter(waiter_name).wait(
            InstanceIds=list(instance_ids), WaiterConfig={"Delay": delay, "MaxAttempts": max_attempts}
        )
