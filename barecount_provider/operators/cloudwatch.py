"""Resource and execution figures that a service reports only as CloudWatch metrics, read after the run.

Some figures exist nowhere in a service's run API: Glue's job metrics (bytes and records read, shuffle
volume, completed tasks and stages, CPU load, heap), an EC2 host's CPU and network, an ECS task's Container
Insights. A runner operator reads them with **one** ``GetMetricData`` call after its run ended and records
each in the runner_result with the namespace, metric, statistic and dimensions it came from.

CloudWatch publishes with a delay (typically one to a few minutes after the datapoint's period), and only
when the service emits them (Glue: the job argument ``--enable-metrics``; ECS: Container Insights with
enhanced observability for per-task figures; EC2: basic monitoring at five-minute periods). A metric
without datapoints is therefore recorded as *not reported*, with that reason, never as 0. The read is one
request with short timeouts and no retries (:class:`~barecount_provider.hooks.cloudwatch.CloudWatchMetricsHook`):
a slow or unreachable CloudWatch costs a bounded time and is recorded, never raised into the task.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from barecount_provider.hooks.cloudwatch import CloudWatchMetricsHook
from barecount_provider.operators.base import RunnerResult, not_reported

log = logging.getLogger(__name__)

PERIOD_S = 60
STATISTICS = ("Sum", "Maximum", "Average")


@dataclass(frozen=True)
class MetricQuery:
    """One figure: where it goes in the runner_result, and which CloudWatch metric gives it.

    ``dimension_sets`` holds one dimension set per resource (one per host, for example); the figure is
    the sum (``Sum``), the largest (``Maximum``) or the mean (``Average``) over all their datapoints.
    """

    path: str
    namespace: str
    metric: str
    statistic: str
    dimension_sets: Sequence[Mapping[str, str]]
    scale: float = 1.0
    absent_why: str = ""  # why it may have no datapoints (the service's switch that emits it)

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(f"statistic {self.statistic!r} is not one of {', '.join(STATISTICS)}")

    def source(self) -> str:
        dims = "; ".join(", ".join(f"{key}={value}" for key, value in dims.items()) for dims in self.dimension_sets)
        return f"CloudWatch {self.namespace} {self.metric} ({self.statistic}; {dims})"


def read_into(
    result: RunnerResult, operator: Any, queries: Sequence[MetricQuery], started_at: datetime, finished_at: datetime
) -> None:
    """:func:`record_cloudwatch_metrics` through a :class:`CloudWatchMetricsHook` on ``operator``'s AWS
    connection; never raises."""
    if not queries:
        return
    try:
        hook = CloudWatchMetricsHook(
            aws_conn_id=getattr(operator, "aws_conn_id", None),
            region_name=getattr(operator, "region_name", None),
            verify=getattr(operator, "verify", None),
        )
    except Exception as err:
        log.warning("BareCount could not build a CloudWatch client: %s", err)
        for query in queries:
            result.absent(query.path, f"no CloudWatch client ({type(err).__name__}): {query.metric} not read")
        return
    record_cloudwatch_metrics(result, hook, queries, started_at, finished_at)


def _metric_data_queries(queries: Sequence[MetricQuery]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    requests: list[dict[str, Any]] = []
    owner: dict[str, int] = {}  # request id -> index of its MetricQuery
    for index, query in enumerate(queries):
        for number, dimensions in enumerate(query.dimension_sets):
            request_id = f"q{index}_{number}"
            owner[request_id] = index
            requests.append(
                {
                    "Id": request_id,
                    "MetricStat": {
                        "Metric": {
                            "Namespace": query.namespace,
                            "MetricName": query.metric,
                            "Dimensions": [{"Name": key, "Value": value} for key, value in dimensions.items()],
                        },
                        "Period": PERIOD_S,
                        "Stat": query.statistic,
                    },
                    "ReturnData": True,
                }
            )
    return requests, owner


def _combine(statistic: str, values: Iterable[float]) -> float | None:
    values = list(values)
    if not values:
        return None
    if statistic == "Sum":
        return float(sum(values))
    if statistic == "Maximum":
        return float(max(values))
    return float(sum(values) / len(values))


def record_cloudwatch_metrics(
    result: RunnerResult,
    client: Any,
    queries: Sequence[MetricQuery],
    started_at: datetime,
    finished_at: datetime,
) -> None:
    """Read every query with one GetMetricData (paged; ``client``: a :class:`CloudWatchMetricsHook` or
    anything with its ``get_metric_data``) and record each figure, or why it is absent."""
    if not queries:
        return
    requests, owner = _metric_data_queries(queries)
    start = started_at.replace(second=0, microsecond=0) - timedelta(seconds=PERIOD_S)
    end = finished_at + timedelta(seconds=PERIOD_S)
    values: dict[int, list[float]] = {index: [] for index in range(len(queries))}
    try:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"MetricDataQueries": requests, "StartTime": start, "EndTime": end}
            if token:
                kwargs["NextToken"] = token
            response = client.get_metric_data(**kwargs)
            for series in response.get("MetricDataResults") or ():
                index = owner.get(str(series.get("Id")))
                if index is not None:
                    values[index].extend(float(value) for value in series.get("Values") or ())
            token = response.get("NextToken")
            if not token:
                break
    except Exception as err:
        log.warning("BareCount could not read CloudWatch metrics: %s", err)
        code = (getattr(err, "response", None) or {}).get("Error", {}).get("Code") or type(err).__name__
        for query in queries:
            result.absent(query.path, f"CloudWatch GetMetricData failed ({code}): {query.metric} not read")
        return
    for index, query in enumerate(queries):
        combined = _combine(query.statistic, values[index])
        if combined is None:
            why = f"no {query.metric} datapoints in CloudWatch {query.namespace} by the end of the run"
            why += f" ({query.absent_why})" if query.absent_why else " (CloudWatch publishes with a delay)"
            result.absent(query.path, not_reported("CloudWatch", why))
        else:
            result.record(query.path, round(combined * query.scale, 6), query.source())


# ------------------------------------------------------------------------------------- per runner class

GLUE_NAMESPACE = "Glue"
GLUE_WHY = "Glue emits job metrics only for runs with --enable-metrics, a minute or more after they happen"
# runner_result path -> (Glue job metric, statistic, Type dimension)
GLUE_JOB_METRICS: Mapping[str, tuple[str, str, str]] = {
    "resources_used.bytes_read": ("glue.driver.aggregate.bytesRead", "Sum", "count"),
    "resources_used.records_read": ("glue.driver.aggregate.recordsRead", "Sum", "count"),
    "resources_used.shuffle_bytes_written": ("glue.driver.aggregate.shuffleBytesWritten", "Sum", "count"),
    "resources_used.shuffle_bytes_read": ("glue.driver.aggregate.shuffleLocalBytesRead", "Sum", "count"),
    "resources_used.completed_tasks": ("glue.driver.aggregate.numCompletedTasks", "Sum", "count"),
    "resources_used.completed_stages": ("glue.driver.aggregate.numCompletedStages", "Sum", "count"),
    "resources_used.cpu_load": ("glue.ALL.system.cpuSystemLoad", "Average", "gauge"),
    "resources_used.memory_used_fraction": ("glue.ALL.jvm.heap.usage", "Maximum", "gauge"),
}


def glue_job_metric_queries(job_name: str, run_id: str) -> list[MetricQuery]:
    return [
        MetricQuery(
            path=path,
            namespace=GLUE_NAMESPACE,
            metric=metric,
            statistic=statistic,
            dimension_sets=[{"JobName": job_name, "JobRunId": run_id, "Type": kind}],
            absent_why=GLUE_WHY,
        )
        for path, (metric, statistic, kind) in GLUE_JOB_METRICS.items()
    ]


EC2_NAMESPACE = "AWS/EC2"
EC2_WHY = "basic monitoring publishes every five minutes: a host that lived less may have none"
EC2_HOST_METRICS: Mapping[str, tuple[str, str]] = {
    "resources_used.cpu_utilization": ("CPUUtilization", "Average"),
    "resources_used.cpu_utilization_max": ("CPUUtilization", "Maximum"),
    "resources_used.network_in_bytes": ("NetworkIn", "Sum"),
    "resources_used.network_out_bytes": ("NetworkOut", "Sum"),
    "resources_used.ebs_read_bytes": ("EBSReadBytes", "Sum"),
    "resources_used.ebs_write_bytes": ("EBSWriteBytes", "Sum"),
}


def ec2_host_metric_queries(instance_ids: Sequence[str]) -> list[MetricQuery]:
    if not instance_ids:
        return []
    dimension_sets = [{"InstanceId": instance_id} for instance_id in instance_ids]
    return [
        MetricQuery(
            path=path,
            namespace=EC2_NAMESPACE,
            metric=metric,
            statistic=statistic,
            dimension_sets=dimension_sets,
            absent_why=EC2_WHY,
        )
        for path, (metric, statistic) in EC2_HOST_METRICS.items()
    ]


ECS_NAMESPACE = "ECS/ContainerInsights"
ECS_WHY = "per-task figures need Container Insights with enhanced observability on the cluster"
ECS_TASK_METRICS: Mapping[str, tuple[str, str]] = {
    "resources_used.cpu_utilized_units": ("CpuUtilized", "Average"),
    "resources_used.memory_utilized_mb": ("MemoryUtilized", "Maximum"),
    "resources_used.network_rx_bytes": ("NetworkRxBytes", "Sum"),
    "resources_used.network_tx_bytes": ("NetworkTxBytes", "Sum"),
    "resources_used.storage_read_bytes": ("StorageReadBytes", "Sum"),
    "resources_used.storage_write_bytes": ("StorageWriteBytes", "Sum"),
}


def ecs_task_metric_queries(cluster_name: str, task_arn: str) -> list[MetricQuery]:
    task_id = task_arn.rsplit("/", 1)[-1]
    return [
        MetricQuery(
            path=path,
            namespace=ECS_NAMESPACE,
            metric=metric,
            statistic=statistic,
            dimension_sets=[{"ClusterName": cluster_name, "TaskId": task_id}],
            absent_why=ECS_WHY,
        )
        for path, (metric, statistic) in ECS_TASK_METRICS.items()
    ]
