"""``BareCountSsmHook``: the amazon provider's ``SsmHook`` plus what the dedicated runner calls on SSM."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow.providers.amazon.aws.hooks.ssm import SsmHook


class BareCountSsmHook(SsmHook):
    """``SsmHook`` with Run Command's send and cancel, and a waiter for the SSM agents' registration."""

    def send_command(
        self, document_name: str, instance_ids: Sequence[str], parameters: Mapping[str, Any], **kwargs: Any
    ) -> str:
        """SendCommand of ``document_name`` to ``instance_ids`` (further boto3 arguments in ``kwargs``); the
        command id."""
        response = self.conn.send_command(
            **kwargs, DocumentName=document_name, InstanceIds=list(instance_ids), Parameters=dict(parameters)
        )
        return str(response["Command"]["CommandId"])

    def cancel_command(self, command_id: str) -> None:
        """CancelCommand of ``command_id`` on every host it was sent to."""
        self.conn.cancel_command(CommandId=command_id)

    @property
    def waiter_path(self) -> os.PathLike[str] | None:
        """BareCount's custom waiters (``waiters/ssm.json``); botocore's own SSM waiters stay available."""
        return Path(__file__).resolve().parents[1] / "waiters" / "ssm.json"

    def wait_for_agents_online(self, instance_ids: Sequence[str], delay: float, max_attempts: int) -> None:
        """Wait with the custom ``ssm_agent_online`` waiter until every host of ``instance_ids`` reports
        PingStatus ``Online`` in DescribeInstanceInformation, polling every ``delay`` seconds at most
        ``max_attempts`` times; botocore's ``WaiterError`` (with ``last_response``) when they do not."""
        ids = list(instance_ids)
        self.get_waiter("ssm_agent_online", parameters={"host_count": str(len(ids))}).wait(
            Filters=[{"Key": "InstanceIds", "Values": ids}],
            WaiterConfig={"Delay": delay, "MaxAttempts": max_attempts},
        )
