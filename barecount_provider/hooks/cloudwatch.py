"""``CloudWatchMetricsHook``: GetMetricData from an AWS connection, with short timeouts and no retries (the
amazon provider has no CloudWatch metrics hook). The runner operators read a run's CloudWatch-only figures
through it (barecount_provider/operators/cloudwatch.py)."""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

CONNECT_TIMEOUT_S = 2
READ_TIMEOUT_S = 5


class CloudWatchMetricsHook(AwsBaseHook):
    """A ``cloudwatch`` client-type hook whose calls give up after ``CONNECT_TIMEOUT_S + READ_TIMEOUT_S``
    seconds, in one attempt: a slow or unreachable CloudWatch costs a run a bounded time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from botocore.config import Config

        kwargs["client_type"] = "cloudwatch"
        kwargs.setdefault(
            "config",
            Config(
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=READ_TIMEOUT_S,
                retries={"total_max_attempts": 1, "mode": "standard"},
            ),
        )
        super().__init__(*args, **kwargs)

    def get_metric_data(self, **request: Any) -> dict[str, Any]:
        """One GetMetricData page (boto3's arguments and response)."""
        return dict(self.conn.get_metric_data(**request))
