"""Metrics: one catalogue of every metric BareCount emits, and an emitter that fans out to the sinks.

The catalogue (``CATALOG``) is the single source of truth for names, types, units and tags; docs/metrics.md
is checked against it by the tests. Sinks (StatsD over UDP, OpenTelemetry over OTLP) never raise into the
caller: a failure is counted in ``barecount.emit.failed`` and the event goes on.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from barecount_provider import config, outbox, redaction, selfmetrics
from barecount_provider.adapters import opentelemetry as otel_adapter
from barecount_provider.adapters import statsd as statsd_adapter

# The metric kinds and the count of own failures are the foundation's: evidence, cost and recovery use them
# without importing telemetry
from barecount_provider.selfmetrics import COUNTER, EMIT_FAILURES, GAUGE, HISTOGRAM, TIMER

log = logging.getLogger(__name__)


TASK_TAGS = ("tenant", "pipeline", "runner_class", "size", "dag_id", "task_id")
UNBOUNDED_TAGS = frozenset({"run_id", "try_number", "correlation_id", "run_token", "trace_id", "span_id"})


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str
    unit: str  # UCUM, as OpenTelemetry wants it
    tags: tuple[str, ...]
    description: str
    when: str

    @property
    def prometheus_statsd(self) -> str:
        """The name the Prometheus statsd-exporter gives it with its default mapping."""
        return self.name.replace(".", "_")

    @property
    def prometheus_otlp(self) -> str:
        """The name Prometheus gives it when it arrives over OTLP (unit and _total suffixes)."""
        base = self.name.replace(".", "_")
        suffix = {"ms": "_milliseconds", "s": "_seconds", "By": "_bytes"}.get(self.unit, "")
        if suffix and not base.endswith(suffix):
            base += suffix
        if self.kind == COUNTER:
            base += "_total"
        return base


def _spec(name: str, kind: str, unit: str, tags: tuple[str, ...], description: str, when: str) -> MetricSpec:
    return MetricSpec(name, kind, unit, tags, description, when)


_T = TASK_TAGS
_TS = (*TASK_TAGS, "state")
_DR = ("tenant", "pipeline", "dag_id")
_H = ("tenant", "network_profile", "dependency_kind", "dependency")  # a health result's dependency

CATALOG: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        _spec("barecount.task.started", COUNTER, "{try}", _T, "Task tries started.", "task process, on running (not again on a deferral or HITL resume)"),
        _spec("barecount.task.resumed", COUNTER, "{resume}", _T, "Task tries resumed after a deferral or human-in-the-loop wait.", "task process, on running after a resume"),
        _spec("barecount.task.finished", COUNTER, "{try}", _TS, "Task tries finished, by state (success, failed, up_for_retry, skipped, upstream_failed, removed).", "task process at the end of a try; scheduler side for tries that had no task process"),
        _spec("barecount.task.duration", TIMER, "ms", _TS, "Wall time of a task try, start to end.", "with barecount.task.finished (task process)"),
        _spec("barecount.task.queued_time", TIMER, "ms", _T, "Time from queued to start of a task try.", "scheduler side, when the DAG run ends"),
        _spec("barecount.task.in_flight", GAUGE, "{task}", ("tenant", "pipeline", "dag_id"), "Task instances running now.", "scheduler side, every [barecount] in_flight_interval_seconds"),
        _spec("barecount.task.retries", COUNTER, "{retry}", (*_T, "error_class"), "Tries that failed and will be retried.", "task process, when a try ends up_for_retry"),
        _spec("barecount.task.failures", COUNTER, "{failure}", (*_T, "error_class"), "Tries that failed, by error class (exception type), retried or not.", "task process when a try fails; scheduler side when the scheduler fails it"),
        _spec("barecount.task.cpu_time", TIMER, "ms", _TS, "CPU time (user + system) of the task process and the children it waited for.", "task process, at the end of a try"),
        _spec("barecount.task.peak_memory", GAUGE, "By", _TS, "Peak resident memory of the task process during the try (high-water mark reset at start).", "task process, at the end of a try"),
        _spec("barecount.task.io_read", HISTOGRAM, "By", _TS, "Bytes the task process read through read() calls (files, pipes, sockets).", "task process, at the end of a try"),
        _spec("barecount.task.io_write", HISTOGRAM, "By", _TS, "Bytes the task process wrote through write() calls.", "task process, at the end of a try"),
        _spec("barecount.dag_run.started", COUNTER, "{run}", _DR, "DAG runs started.", "scheduler, when a run starts running"),
        _spec("barecount.dag_run.finished", COUNTER, "{run}", (*_DR, "state"), "DAG runs finished, by state.", "scheduler, when a run ends"),
        _spec("barecount.dag_run.duration", TIMER, "ms", (*_DR, "state"), "Wall time of a DAG run, start to end.", "scheduler, when a run ends"),
        _spec("barecount.dag_run.queued_time", TIMER, "ms", _DR, "Time from a run being queued to it starting.", "scheduler, when a run ends"),
        _spec("barecount.runner.invocations", COUNTER, "{invocation}", _T, "Workload invocations by a runner operator (one per runner_result), by runner class and size.", "task process, in a runner operator's execute()"),
        _spec("barecount.runner.duration", TIMER, "ms", _T, "Run time the runner's service reported (Lambda REPORT Duration, ...).", "with barecount.runner.invocations, when the service reports it"),
        _spec("barecount.runner.billed_duration", TIMER, "ms", _T, "Billed run time the runner's service reported (Lambda REPORT Billed Duration, ...).", "with barecount.runner.invocations, when the service reports it"),
        _spec("barecount.runner.init_duration", TIMER, "ms", _T, "Cold-start initialisation time (Lambda REPORT Init Duration); absent on warm starts.", "with barecount.runner.invocations, on cold starts"),
        _spec("barecount.runner.memory_used", GAUGE, "By", _T, "Peak memory the workload used, as the runner's service reported it (Lambda Max Memory Used, ...).", "with barecount.runner.invocations, when the service reports it"),
        _spec("barecount.runner.errors", COUNTER, "{error}", (*_T, "error_class"), "Driver errors of a workload (Lambda FunctionError, ...), by error class.", "with barecount.runner.invocations, when the workload failed"),
        _spec("barecount.cost.runtime_hours", COUNTER, "h", _T, "Billed runtime of a task try's workload after the service's minimums (EC2: host-hours summed).", "task process, at the end of a try, when its cost is estimated; unknown values are not emitted"),
        _spec("barecount.cost.compute_usd", COUNTER, "{USD}", _T, "Estimated compute cost of a task try (list-price estimate unless the price table is overridden).", "with barecount.cost.runtime_hours"),
        _spec("barecount.cost.storage_usd", COUNTER, "{USD}", _T, "Estimated storage cost of a task try (ephemeral storage above the free tier, EMR storage, reported S3).", "with barecount.cost.runtime_hours"),
        _spec("barecount.cost.transfer_usd", COUNTER, "{USD}", _T, "Estimated internet data-transfer-out cost of a task try, when the run reports it.", "with barecount.cost.runtime_hours"),
        _spec("barecount.cost.total_usd", COUNTER, "{USD}", _T, "Estimated total cost of a task try; not emitted when any part is unknown.", "with barecount.cost.runtime_hours"),
        _spec("barecount.emit.failed", COUNTER, "{error}", ("sink", "stage"), "BareCount's own failures: a sink that is down, an exception inside a hook. Never raised into a task.", "wherever it happens"),
        _spec("barecount.retry.refused", COUNTER, "{retry}", ("tenant", "pipeline", "runner_class", "budget"), "Retries refused by BareCount's retry policy: the task failed at once. budget: the spent budget (max_retries_per_task, max_retries_per_run, max_retries_per_window) or permanent_failure (classified permanent, nothing spent). See docs/recovery.md.", "task process, when a failed try's retry is refused"),
        _spec("barecount.retry.budget_spent", GAUGE, "1", ("tenant", "pipeline", "runner_class"), "Fraction of the rolling-window retry budget (max_retries_per_window of the tenant, or of the pipeline) spent, this retry included.", "task process, when a retry is granted"),
        _spec("barecount.dlq.entries", COUNTER, "{record}", ("tenant", "pipeline", "error_class", "backend"), "Records and events sent to a dead-letter queue (its growth), by error class and backend (local, s3, sqs). See docs/recovery.md.", "wherever DeadLetterQueueHook sends: task code, a runner operator's failed event"),
        _spec("barecount.dlq.depth", GAUGE, "{record}", ("tenant", "pipeline", "backend"), "Records waiting in a dead-letter queue (SQS: its approximate visible + in-flight count).", "DeadLetterQueueHook.emit_metrics(): `barecount dlq stats --emit` (cron or sidecar), ReplayOperator before and after a replay"),
        _spec("barecount.dlq.oldest_age", GAUGE, "s", ("tenant", "pipeline", "backend"), "Age of the oldest record in a dead-letter queue (0 when empty). Not for SQS, whose API does not report it: CloudWatch's ApproximateAgeOfOldestMessage does.", "with barecount.dlq.depth"),
        _spec("barecount.replay.records", COUNTER, "{record}", ("tenant", "pipeline", "target_kind", "outcome"), "Records a replay handled, by outcome: delivered, skipped (delivered before), failed (stay queued), redelivered (a crashed run had them in flight: delivered again, applied once by an idempotent target).", "replay process (ReplayOperator, `barecount replay run --emit`), every progress interval and at the end"),
        _spec("barecount.replay.throughput", GAUGE, "{record}/s", ("tenant", "pipeline", "target_kind"), "Records a replay delivered per second since it started.", "with barecount.replay.records"),
        _spec("barecount.health.up", GAUGE, "1", _H, "1 when a dependency of a network profile works (healthy or degraded), 0 when it is unhealthy or unknown. See docs/health.md.", "wherever health results are published (runtime.health_report.publish): the health sensors, a runner operator's check before launch, `barecount health check --emit`"),
        _spec("barecount.health.check_duration", TIMER, "ms", _H, "How long one health check took, whatever its outcome.", "with barecount.health.up"),
        _spec("barecount.network.latency", TIMER, "ms", (*_H, "phase"), "Time in one network phase of a probe (phase: dns, connect, tls, http); only the phases that ran.", "with barecount.health.up, for checks that probe the network (url, vpc_endpoint)"),
        _spec("barecount.network.errors", COUNTER, "{error}", (*_H, "error_code"), "Failed health checks, by error code from the closed list (dns, refused, timeout, tls, http_<status>, tunnel_down, endpoint_state, heartbeat_stale, not_found, access_denied).", "with barecount.health.up, for every result with an error code"),
        _spec("barecount.vpn.tunnels_up", GAUGE, "{tunnel}", _H, "Tunnels of a Site-to-Site VPN connection whose telemetry status is UP.", "with barecount.health.up, for vpn_connection results that counted the tunnels"),
        _spec("barecount.agent.heartbeat_age", GAUGE, "s", _H, "Seconds since an on-premise agent's last heartbeat; absent when it never sent one.", "with barecount.health.up, for agent results of an agent that has sent a heartbeat"),
    )
}




def _reset_after_fork() -> None:
    """In a forked child (a LocalExecutor worker, a task process): start afresh.

    A lock held by another thread at fork time would stay held in the child forever, and counts belong to
    the parent. The spooling emitter (StatsD's socket, the spool sink) is stateless and kept, shared by every
    forked task process. The direct emitter of a scheduler (OTLP: a metric reader, which the OpenTelemetry
    SDK restarts in the child and which would export the parent's points a second time) is stopped and
    dropped: a child that forwards builds its own.
    """
    # (EMIT_FAILURES resets itself in the child: barecount_provider.selfmetrics)
    if get_emitter.cache_info().currsize:
        emitter = get_emitter()
        direct, emitter.direct, emitter.forwarder = emitter.direct, None, None
        for sink in direct.sinks if direct is not None and direct is not emitter else ():
            shutdown_event = getattr(getattr(sink, "reader", None), "_shutdown_event", None)
            if shutdown_event is not None:
                shutdown_event.set()


def clean_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """Drop unbounded tags, stringify values and redact them (a tag must never carry a secret)."""
    return redaction.get_redactor().redact_values(
        {key: str(value) for key, value in tags.items() if key not in UNBOUNDED_TAGS and value is not None}
    )


# --------------------------------------------------------------------------------------------------- StatsD


_STATSD_TYPES = {COUNTER: "c", TIMER: "ms", GAUGE: "g", HISTOGRAM: "h"}
_STATSD_FORBIDDEN = str.maketrans({",": "_", "|": "_", "#": "_", ":": "_", "=": "_", " ": "_", "\n": "_"})


class StatsdSink:
    """Fire-and-forget UDP StatsD with tags, in DogStatsD or InfluxDB / statsd-exporter style.

    The socket and its address are the ``statsd`` package's client's; the lines (the package writes no
    tags) and the datagrams are this class's: the points of one call are packed into datagrams of at most
    ``MAX_DATAGRAM`` bytes, as the package's pipeline packs them. That skips the pipeline's per-stat objects
    (about 0.2 ms in a forked task process, where its code is cold) and, unlike the package's client, which
    drops every socket error silently, counts a datagram the kernel refuses in ``barecount.emit.failed``
    (``statsd``/``send``). The socket is connected to the resolved address once (a UDP ``connect`` sends
    nothing: it fixes the destination), and each datagram is one ``write`` on it: in a task process forked
    from the process that built the client, that touches fewer of the parent's objects than ``sendto``
    (four page faults, about 15 µs, less for the start's datagram). A connected socket also hears the ICMP "port unreachable"
    of a StatsD that is down: the next datagram is refused and counted (a socket that cannot be connected,
    a broadcast address say, sends with ``sendto``). Resolving a host name is the one step that can block,
    so it runs in a thread bounded by ``[barecount] emit_timeout_ms``; a host that does not resolve in time
    disables the sink for this process and is counted.
    """

    MAX_DATAGRAM = 512  # the statsd package's default maxudpsize: safe on any network path

    name = "statsd"

    def __init__(self, host: str, port: int, prefix: str = "", tag_style: str = "dogstatsd", timeout_ms: int = 250):
        self.host, self.port, self.prefix, self.tag_style = host, port, prefix, tag_style
        self.timeout_ms = timeout_ms
        self._client: Any = None
        self._fd: int | None = None  # the client's socket, connected to its address (None: sendto)
        self._broken = False

    def describe(self) -> str:
        return f"udp://{self.host}:{self.port} ({self.tag_style})"

    def _resolve(self) -> str | None:
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in self.host else socket.AF_INET, self.host)
            return self.host
        except OSError:
            pass
        result: list[str] = []

        def lookup() -> None:
            try:
                result.append(str(socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_DGRAM)[0][4][0]))
            except OSError:
                pass

        thread = threading.Thread(target=lookup, name="barecount-statsd-resolve", daemon=True)
        thread.start()
        thread.join(self.timeout_ms / 1000.0)
        return result[0] if result else None

    def _get_client(self) -> Any:
        if self._client is None and not self._broken:
            address = self._resolve()
            if address is None:
                self._broken = True
                EMIT_FAILURES.record(self.name, "resolve")
                return None
            import statsd

            # The client resolves the literal address into the socket's family and address; send() uses both.
            client = statsd.StatsClient(address, self.port, ipv6=":" in address)
            try:
                sock, address = statsd_adapter.client_socket(client)
                sock.connect(address)
                self._fd = sock.fileno()
            except OSError:  # not connectable (a broadcast address without SO_BROADCAST...): sendto, counted there
                self._fd = None
            self._client = client
        return self._client

    def warm(self) -> None:
        """Build the client now when the host is an address (no look-up, no thread): in a process that forks
        task processes, they inherit its socket (one UDP datagram per ``send``, from any process) instead of
        each building one (and importing the IDNA codec for the address look-up, ~6 ms)."""
        import encodings.idna  # noqa: F401  (socket.getaddrinfo imports it on its first call)

        try:
            socket.inet_pton(socket.AF_INET6 if ":" in self.host else socket.AF_INET, self.host)
        except OSError:
            return  # a host name: resolved in each process, bounded by a thread (see _resolve)
        self._get_client()

    def _encode(self, name: str, tags: Mapping[str, str]) -> tuple[str, str]:
        """``name`` with its tags in this sink's style: (the stat's name, the suffix after the value)."""
        if not tags:
            return name, ""
        forbidden = _STATSD_FORBIDDEN
        if self.tag_style == "influxdb":
            return name + "," + ",".join([f"{k.translate(forbidden)}={v.translate(forbidden)}" for k, v in tags.items()]), ""
        return name, "|#" + ",".join([f"{k.translate(forbidden)}:{v.translate(forbidden)}" for k, v in tags.items()])

    def _line(self, name: str, kind: str, value: float, encoded: tuple[str, str]) -> str:
        """One StatsD line, ``<prefix.>name[,tags]:value|type[|#tags]``, of tags :meth:`_encode` encoded."""
        prefix = f"{self.prefix}." if self.prefix else ""
        number = f"{value:.6f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)
        return f"{prefix}{name}{encoded[0]}:{number}|{_STATSD_TYPES[kind]}{encoded[1]}"

    def lines(self, points: list[tuple[str, str, float, dict[str, str]]]) -> list[str]:
        """The StatsD lines of ``points``: ``<prefix.>name[,tags]:value|type[|#tags]``."""
        encoded: dict[int, tuple[str, str]] = {}  # tag sets shared by several points: encoded once
        out = []
        for name, kind, value, tags in points:
            key = id(tags)
            if key not in encoded:
                encoded[key] = self._encode("", tags)
            out.append(self._line(name, kind, value, encoded[key]))
        return out

    @classmethod
    def datagrams(cls, lines: list[str]) -> list[bytes]:
        """``lines`` joined by newlines into datagrams of fewer than ``MAX_DATAGRAM`` bytes (a longer line
        goes alone), in order: the statsd package's pipeline's packing."""
        packets: list[bytes] = []
        data = ""
        for line in lines:
            if data and len(data) + len(line) + 1 >= cls.MAX_DATAGRAM:
                packets.append(data.encode("utf-8"))
                data = line
            else:
                data = f"{data}\n{line}" if data else line
        if data:
            packets.append(data.encode("utf-8"))
        return packets

    def packets(self, points: list[tuple[str, str, float, dict[str, str]]]) -> list[bytes]:
        """The datagrams of ``points``: :meth:`datagrams` of their :meth:`lines`; one point (a try's start)
        is one datagram, built without the packing (a line too long for one goes alone there too)."""
        if len(points) == 1:
            name, kind, value, tags = points[0]
            return [self._line(name, kind, value, self._encode("", tags)).encode("utf-8")]
        return self.datagrams(self.lines(points))

    def send(self, points: list[tuple[str, str, float, dict[str, str]]]) -> None:
        client = self._client if self._client is not None else self._get_client()
        if client is None:
            return
        fd = self._fd
        for datagram in self.packets(points):
            try:
                if fd is not None:
                    os.write(fd, datagram)  # the client's socket, connected to its address
                else:
                    sock, address = statsd_adapter.client_socket(client)
                    sock.sendto(datagram, address)
            except OSError:  # refused (no route, a filter, a StatsD that is down): counted, the rest still sent
                EMIT_FAILURES.record(self.name, "send")

    def hand_off(self, points: list[tuple[str, str, float, dict[str, str]]]) -> None:
        """Keep ``points`` (cleaned) for the forwarder to send (see :meth:`Emitter.emit`)."""
        outbox.add_statsd_points(points)

    def flush(self, timeout_ms: int) -> None:  # UDP: nothing is buffered
        return None


# ------------------------------------------------------------------------------------------- OpenTelemetry


def quiet_otlp_exporter_logs() -> None:
    """BareCount counts its export failures (barecount.emit.failed); the exporter's own error lines would
    otherwise land in every task's log while a collector is down."""
    logging.getLogger("opentelemetry.exporter.otlp.proto.http").setLevel(logging.CRITICAL)


class OtelMetricSink:
    """OpenTelemetry metrics exported from a background batch (OTLP/HTTP by default).

    A MeterProvider of its own (never the global one, which Airflow may own), not shut down at exit by the
    SDK: the task process flushes it once at its end, bounded by ``emit_timeout_ms``.
    """

    name = "otlp_metrics"

    def __init__(self, reader: Any = None, timeout_ms: int = 250):
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource

        if reader is None:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            quiet_otlp_exporter_logs()
            exporter = OTLPMetricExporter(timeout=max(timeout_ms, 1) / 1000.0)
            reader = PeriodicExportingMetricReader(
                _counting_exporter(exporter), export_interval_millis=60_000, export_timeout_millis=max(timeout_ms, 1)
            )
        self.reader = reader
        self.provider = MeterProvider(
            metric_readers=[reader],
            resource=Resource({"service.name": "barecount"}),  # no resource detectors: ~3 ms per process
            shutdown_on_exit=False,
        )
        self.meter = self.provider.get_meter("barecount_provider")
        self._instruments: dict[str, Any] = {}
        self.timeout_ms = timeout_ms
        from barecount_provider.telemetry import threads

        threads.on_exit(self.close)  # the reader's exporting thread ends at exit (task processes never get there)

    def close(self) -> None:
        """End the reader's exporting thread (one last export, bounded by ``timeout_ms``). Never raises."""
        try:
            self.provider.shutdown(timeout_millis=max(self.timeout_ms, 1))
        except Exception:
            EMIT_FAILURES.record(self.name, "shutdown")

    def describe(self) -> str:
        return f"otlp {config.otlp_endpoint('metrics')}"

    def _instrument(self, name: str, kind: str) -> Any:
        instrument = self._instruments.get(name)
        if instrument is None:
            spec = CATALOG.get(name)
            unit = spec.unit if spec else ""
            description = spec.description if spec else ""
            if kind == COUNTER:
                instrument = self.meter.create_counter(name, unit=unit, description=description)
            elif kind == GAUGE:
                instrument = self.meter.create_gauge(name, unit=unit, description=description)
            else:
                instrument = self.meter.create_histogram(name, unit=unit, description=description)
            self._instruments[name] = instrument
        return instrument

    def send(self, points: list[tuple[str, str, float, dict[str, str]]]) -> None:
        for name, kind, value, tags in points:
            instrument = self._instrument(name, kind)
            if kind == COUNTER:
                instrument.add(value, tags)
            elif kind == GAUGE:
                instrument.set(value, tags)
            else:
                instrument.record(value, tags)

    def flush(self, timeout_ms: int) -> None:
        try:
            if not self.provider.force_flush(timeout_millis=max(timeout_ms, 1)):
                EMIT_FAILURES.record(self.name, "flush")
        except Exception:
            EMIT_FAILURES.record(self.name, "flush")


def _counting_exporter(inner: Any) -> Any:
    """Wrap an exporter so that a failed export is counted instead of only logged by the SDK."""
    from opentelemetry.sdk.metrics.export import MetricExporter

    class _CountingExporter(MetricExporter):
        def __init__(self) -> None:
            super().__init__(**otel_adapter.exporter_preferences(inner))
            self._inner = inner

        def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> Any:
            from opentelemetry.sdk.metrics.export import MetricExportResult

            try:
                result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
            except Exception:
                result = MetricExportResult.FAILURE
            if result != MetricExportResult.SUCCESS:
                EMIT_FAILURES.record("otlp_metrics", "export")
            return result

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return self._inner.force_flush(timeout_millis=timeout_millis)

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)

    return _CountingExporter()


# ------------------------------------------------------------------------------------------------ Emitter


class Emitter:
    """Fans metric points out to the configured sinks; never raises."""

    direct: Emitter | None = None  # see get_direct_emitter
    forwarder: Any = None  # the spool's forwarder of a direct emitter (spool.get_forwarder)

    def __init__(self, sinks: list[Any]):
        self.sinks = sinks

    def emit(self, points: list[tuple[str, str, float, Mapping[str, Any]]], handoff: bool = False) -> None:
        """Send a batch of ``(name, kind, value, tags)``; tags are cleaned and redacted here.

        ``handoff``: the points of a try whose outputs this task process hands to the spool's forwarder
        (:func:`spool.handoff`): a sink that can (StatsD) keeps them for the spool record the try writes
        anyway, and the forwarder sends them, within a forwarding interval, instead of this process."""
        if not self.sinks or not points:
            return
        try:
            # The points of one try share their tag sets (one per state and error class): each set is
            # cleaned and redacted once, and the sinks get the same (read-only) dict for those points.
            clean_of: dict[int, dict[str, str]] = {}
            cleaned = []
            for name, kind, value, tags in points:
                clean = clean_of.get(id(tags))
                if clean is None:
                    clean = clean_of[id(tags)] = clean_tags(tags)
                cleaned.append((name, kind, value, clean))
        except Exception:
            EMIT_FAILURES.record("emitter", "prepare")
            log.debug("BareCount could not prepare metrics", exc_info=True)
            return
        for sink in self.sinks:
            try:
                hand_off = getattr(sink, "hand_off", None) if handoff else None
                if hand_off is not None:
                    hand_off(cleaned)
                else:
                    sink.send(cleaned)
            except Exception:
                EMIT_FAILURES.record(getattr(sink, "name", "sink"), "send")
                log.debug("BareCount metric sink %s failed", getattr(sink, "name", sink), exc_info=True)

    def count(self, name: str, tags: Mapping[str, Any], value: float = 1) -> None:
        self.emit([(name, COUNTER, value, tags)])

    def flush(self, timeout_ms: int | None = None) -> None:
        budget = config.emit_timeout_ms() if timeout_ms is None else timeout_ms
        for sink in self.sinks:
            try:
                sink.flush(budget)
            except Exception:
                EMIT_FAILURES.record(getattr(sink, "name", "sink"), "flush")

    def describe(self) -> dict[str, str]:
        return {sink.name: sink.describe() for sink in self.sinks}

    def report_failures(self, tags: Mapping[str, Any] | None = None) -> int:
        """Send the process's own failure counts (to the sinks that still work) and reset them; returns how
        many failures were reported."""
        with EMIT_FAILURES._lock:
            counts = dict(EMIT_FAILURES.counts)
            EMIT_FAILURES.counts.clear()
        if counts:
            self.emit(
                [
                    ("barecount.emit.failed", COUNTER, n, {"sink": sink, "stage": stage})
                    for (sink, stage), n in counts.items()
                ]
            )
        note_failures()
        return sum(counts.values())


def note_failures(now: float | None = None) -> int:
    """Note the failures counted since the last note in the component's log and, when the file sink is on, in
    ``emit_failures.jsonl`` next to its events: ``barecount.emit.failed`` stays visible when every metric sink
    is down. At most one note per ``EmitFailures.NOTE_INTERVAL_S`` per process; returns the failures noted.
    Never raises."""
    taken = EMIT_FAILURES.take_unnoted(time.monotonic() if now is None else now)
    if not taken:
        return 0
    total = sum(taken.values())
    try:
        by = ", ".join(f"{sink}/{stage} {n}" for (sink, stage), n in sorted(taken.items()))
        log.warning(
            "BareCount: %d failure(s) of its own since the last note (barecount.emit.failed; at most one note "
            "a minute): %s",
            total,
            by,
        )
        if config.file_sink_on():
            from barecount_provider.telemetry.filesink import append_emit_failures

            append_emit_failures(taken)
    except Exception:
        log.debug("BareCount could not note its own failures", exc_info=True)
    return total


def build_sinks(direct: bool = False) -> list[Any]:
    """The configured sinks. OTLP metrics go to the spool (see :mod:`barecount_provider.outbox`)
    unless ``direct``: the long-lived process that forwards the spool exports them itself."""
    sinks: list[Any] = []
    timeout = config.emit_timeout_ms()
    if config.statsd_on():
        sinks.append(
            StatsdSink(
                config.statsd_host(),
                config.statsd_port(),
                config.statsd_prefix(),
                config.statsd_tag_style(),
                timeout_ms=timeout,
            )
        )
    if config.otlp_metrics_on():
        if not direct:
            from barecount_provider.telemetry.outbox_sinks import SpoolMetricSink

            sinks.append(SpoolMetricSink())
            return sinks
        try:
            sinks.append(OtelMetricSink(timeout_ms=timeout))
        except Exception:
            EMIT_FAILURES.record("otlp_metrics", "start")
            log.warning("BareCount could not start the OTLP metric exporter", exc_info=True)
    return sinks


@functools.cache
def get_emitter() -> Emitter:
    """The emitter of task processes (and anything that runs in them): StatsD directly, OTLP through the
    spool. Stateless: built once where the plugin is loaded and shared by the forked task processes."""
    return Emitter(build_sinks())


def get_direct_emitter() -> Emitter:
    """The emitter of long-lived processes (the scheduler side, the spool's forwarder): StatsD and OTLP
    directly. Built once per process (with the current :func:`get_emitter`; dropped in a forked child)."""
    emitter = get_emitter()
    direct = emitter.direct
    if direct is None:
        if not any(getattr(sink, "name", None) == "otlp_metrics" for sink in emitter.sinks):
            direct = emitter  # nothing is spooled: the same sinks
        else:
            direct = Emitter(build_sinks(direct=True))
        emitter.direct = direct
    return direct


os.register_at_fork(after_in_child=_reset_after_fork)
selfmetrics.install(lambda points: get_emitter().emit(points))
