"""CloudWatch-only figures: the GetMetricData request BareCount builds and how answers become runner_result
fields. The client here returns responses of GetMetricData's real shape (fixtures, named so); the read against
a real endpoint (moto on loopback) is in tests/integration/test_managed_etl_runner.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError, ConnectTimeoutError

from barecount_provider.operators import cloudwatch
from barecount_provider.operators.base import RunnerResult

STARTED = datetime(2026, 11, 27, 10, 0, 30, tzinfo=UTC)
FINISHED = datetime(2026, 11, 27, 10, 4, 10, tzinfo=UTC)


def _result() -> RunnerResult:
    return RunnerResult(runner_class="dedicated", size="s", tenant="acme", pipeline="p", network_profile="public")


class FixtureClient:
    """Answers GetMetricData like CloudWatch: one MetricDataResults entry per query id, paged by NextToken."""

    def __init__(self, values_by_metric: dict[tuple[str, str], list[float]], pages: int = 1) -> None:
        self.values = values_by_metric  # (metric name, first dimension value) -> values
        self.pages = pages
        self.calls: list[dict[str, Any]] = []

    def get_metric_data(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        page = len(self.calls) - 1
        queries = kwargs["MetricDataQueries"]
        share = [query for index, query in enumerate(queries) if index % self.pages == page]
        results = []
        for query in share:
            metric = query["MetricStat"]["Metric"]
            key = (metric["MetricName"], metric["Dimensions"][0]["Value"])
            values = self.values.get(key, [])
            results.append({"Id": query["Id"], "Label": metric["MetricName"], "Values": values, "StatusCode": "Complete"})
        response: dict[str, Any] = {"MetricDataResults": results}
        if page + 1 < self.pages:
            response["NextToken"] = f"page-{page + 1}"
        return response


def test_ec2_hosts_are_summed_maxed_or_averaged_over_every_host_and_datapoint() -> None:
    client = FixtureClient(
        {
            ("CPUUtilization", "i-1"): [40.0, 60.0],
            ("CPUUtilization", "i-2"): [20.0],
            ("NetworkIn", "i-1"): [1000.0, 500.0],
            ("NetworkIn", "i-2"): [250.0],
        },
        pages=2,
    )
    result = _result()
    cloudwatch.record_cloudwatch_metrics(
        result, client, cloudwatch.ec2_host_metric_queries(["i-1", "i-2"]), STARTED, FINISHED
    )
    assert len(client.calls) == 2 and client.calls[1]["NextToken"] == "page-1"
    first = client.calls[0]
    assert first["StartTime"] == datetime(2026, 11, 27, 9, 59, 0, tzinfo=UTC)  # a period before, minute-aligned
    assert first["EndTime"] == datetime(2026, 11, 27, 10, 5, 10, tzinfo=UTC)
    assert len(first["MetricDataQueries"]) == 2 * len(cloudwatch.EC2_HOST_METRICS)  # per metric, per host
    used = result.resources_used
    assert used["cpu_utilization"] == 40.0  # mean of 40, 60, 20
    assert used["cpu_utilization_max"] == 60.0
    assert used["network_in_bytes"] == 1750.0
    assert result.field_sources["resources_used.network_in_bytes"] == (
        "CloudWatch AWS/EC2 NetworkIn (Sum; InstanceId=i-1; InstanceId=i-2)"
    )
    # no datapoints: absent with the reason, never 0
    assert used["network_out_bytes"] is None
    assert "no NetworkOut datapoints" in result.field_sources["resources_used.network_out_bytes"]
    assert "five minutes" in result.field_sources["resources_used.network_out_bytes"]
    assert result.unexplained_fields() == ["external_run_id", "console_link", "driver_version", "resources_requested", "timings", "digests", "billing_inputs"]


def test_glue_and_ecs_queries_name_the_run() -> None:
    glue = cloudwatch.glue_job_metric_queries("orders", "jr_1")
    assert {query.metric for query in glue} >= {
        "glue.driver.aggregate.bytesRead",
        "glue.driver.aggregate.shuffleBytesWritten",
        "glue.driver.aggregate.numCompletedTasks",
    }
    assert all(query.dimension_sets == [{"JobName": "orders", "JobRunId": "jr_1", "Type": query.dimension_sets[0]["Type"]}] for query in glue)
    ecs = cloudwatch.ecs_task_metric_queries("pipelines", "arn:aws:ecs:us-east-1:1:task/pipelines/abc123")
    assert ecs[0].dimension_sets == [{"ClusterName": "pipelines", "TaskId": "abc123"}]


@pytest.mark.parametrize(
    "error",
    [
        ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "GetMetricData"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:9"),
    ],
)
def test_a_failed_read_is_recorded_never_raised(error: Exception) -> None:
    class Failing:
        def get_metric_data(self, **kwargs: Any) -> dict[str, Any]:
            raise error

    result = _result()
    cloudwatch.record_cloudwatch_metrics(result, Failing(), cloudwatch.ec2_host_metric_queries(["i-1"]), STARTED, FINISHED)
    source = result.field_sources["resources_used.cpu_utilization"]
    assert source.startswith("CloudWatch GetMetricData failed (")
    assert "AccessDenied" in source or "ConnectTimeoutError" in source


def test_the_hook_uses_short_timeouts_and_no_retries() -> None:
    from barecount_provider.hooks.cloudwatch import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, CloudWatchMetricsHook

    config = CloudWatchMetricsHook(aws_conn_id=None, region_name="us-east-1").conn.meta.config
    assert (config.connect_timeout, config.read_timeout) == (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
    assert config.retries["total_max_attempts"] == 1  # one attempt: no retry
