"""``BareCountSsmHook``: the amazon provider's ``SsmHook`` plus what the dedicated runner calls on SSM."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.providers.amazon.aws.hooks.ssm import SsmHook


class BareCountSsmHook(SsmHook):
    """``SsmHook`` with Run Command's send and cancel, and the SSM agents' registration."""

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

    def online_instance_ids(self, instance_ids: Sequence[str]) -> set[str]:
        """Those of ``instance_ids`` whose SSM agent reports PingStatus ``Online`` (DescribeInstanceInformation)."""
        response = self.conn.describe_instance_information(
            Filters=[{"Key": "InstanceIds", "Values": list(instance_ids)}]
        )
        return {
            info["InstanceId"]
            for info in response.get("InstanceInformationList", [])
            if info.get("PingStatus") == "Online"
        }
