"""Metric sinks: a real UDP socket (IPv4 and IPv6) receives the StatsD packets."""

from __future__ import annotations

import socket

import pytest

from barecount_provider.telemetry import metrics
from barecount_provider.telemetry.metrics import COUNTER, GAUGE, TIMER, Emitter, StatsdSink

from ..unit.test_metrics import TAGS

pytestmark = pytest.mark.integration


@pytest.fixture
def udp_server():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


def _receive_lines(sock: socket.socket) -> list[str]:
    data, _ = sock.recvfrom(65535)
    return data.decode().splitlines()


def test_dogstatsd_packets_carry_bounded_tags_only(udp_server):
    port = udp_server.getsockname()[1]
    emitter = Emitter([StatsdSink("127.0.0.1", port, tag_style="dogstatsd")])
    emitter.emit(
        [
            ("barecount.task.finished", COUNTER, 1, TAGS),
            ("barecount.task.duration", TIMER, 1234.5, TAGS),
            ("barecount.task.peak_memory", GAUGE, 2048, TAGS),
        ]
    )
    lines = _receive_lines(udp_server)
    assert lines[0] == (
        "barecount.task.finished:1|c|#tenant:acme,pipeline:orders,runner_class:local,size:m,dag_id:d1,task_id:t1,state:success"
    )
    assert lines[1].startswith("barecount.task.duration:1234.5|ms|#tenant:acme")
    assert lines[2].startswith("barecount.task.peak_memory:2048|g|#")
    for line in lines:
        for unbounded in ("run_id", "try_number", "correlation_id", "manual__", "abc123"):
            assert unbounded not in line


def test_influxdb_style_is_what_statsd_exporter_reads(udp_server):
    port = udp_server.getsockname()[1]
    emitter = Emitter([StatsdSink("127.0.0.1", port, prefix="af", tag_style="influxdb")])
    emitter.count("barecount.task.started", {"tenant": "acme", "dag_id": "d:1", "run_id": "r"})
    (line,) = _receive_lines(udp_server)
    assert line == "af.barecount.task.started,tenant=acme,dag_id=d_1:1|c"


@pytest.mark.parametrize("style", ["dogstatsd", "influxdb"])
def test_points_sharing_a_tag_set_and_points_with_their_own_get_each_their_tags(udp_server, style):
    """The emitter cleans a tag set shared by several points once, the sink encodes it once: each point
    still carries exactly its own tags."""
    port = udp_server.getsockname()[1]
    shared = {"tenant": "acme", "state": "failed", "run_id": "r1"}
    own = {"tenant": "acme", "error_class": "ValueError"}
    Emitter([StatsdSink("127.0.0.1", port, tag_style=style)]).emit(
        [
            ("barecount.task.finished", COUNTER, 1, shared),
            ("barecount.task.failures", COUNTER, 1, own),
            ("barecount.task.duration", TIMER, 2.5, shared),
            ("barecount.task.retries", COUNTER, 1, dict(own)),
        ]
    )
    if style == "dogstatsd":
        expected = [
            "barecount.task.finished:1|c|#tenant:acme,state:failed",
            "barecount.task.failures:1|c|#tenant:acme,error_class:ValueError",
            "barecount.task.duration:2.5|ms|#tenant:acme,state:failed",
            "barecount.task.retries:1|c|#tenant:acme,error_class:ValueError",
        ]
    else:
        expected = [
            "barecount.task.finished,tenant=acme,state=failed:1|c",
            "barecount.task.failures,tenant=acme,error_class=ValueError:1|c",
            "barecount.task.duration,tenant=acme,state=failed:2.5|ms",
            "barecount.task.retries,tenant=acme,error_class=ValueError:1|c",
        ]
    assert _receive_lines(udp_server) == expected


def test_tag_values_are_redacted(udp_server):
    port = udp_server.getsockname()[1]
    secret = "AKIA" + "Z7EXAMPLE4QWERTY"
    Emitter([StatsdSink("127.0.0.1", port)]).count("barecount.task.started", {"tenant": secret})
    (line,) = _receive_lines(udp_server)
    assert secret not in line and "***" in line


def test_tags_with_statsd_separators_are_escaped(udp_server):
    """A key or value holding one of StatsD's separators (``,|#:=``, a space, a new line) would break the
    line: each is replaced by ``_``; tags without one are written as they are."""
    port = udp_server.getsockname()[1]
    tags = {"tenant": "acme", "pipeline": "a,b|c#d:e=f g\nh", "task_id": "load"}
    Emitter([StatsdSink("127.0.0.1", port)]).count("barecount.task.started", tags)
    Emitter([StatsdSink("127.0.0.1", port, tag_style="influxdb")]).count("barecount.task.started", tags)
    assert _receive_lines(udp_server) == ["barecount.task.started:1|c|#tenant:acme,pipeline:a_b_c_d_e_f_g_h,task_id:load"]
    assert _receive_lines(udp_server) == ["barecount.task.started,tenant=acme,pipeline=a_b_c_d_e_f_g_h,task_id=load:1|c"]


def test_many_points_are_packed_into_datagrams_under_512_bytes_in_order(udp_server):
    """One call's lines share datagrams, each under the statsd package's 512-byte limit; none is split or
    lost, and their order is kept."""
    port = udp_server.getsockname()[1]
    tags = {"tenant": "acme", "pipeline": "orders", "dag_id": "a_rather_long_dag_id_" * 2, "task_id": "t"}
    points = [(f"barecount.task.m{i:02d}", COUNTER, i, tags) for i in range(40)]
    Emitter([StatsdSink("127.0.0.1", port)]).emit(points)
    received: list[str] = []
    datagrams = 0
    while len(received) < len(points):
        data, _ = udp_server.recvfrom(65535)
        assert len(data) < StatsdSink.MAX_DATAGRAM
        datagrams += 1
        received.extend(data.decode().splitlines())
    assert datagrams > 1
    assert [line.split(":", 1)[0] for line in received] == [name for name, *_ in points]
    assert all(line.endswith("|#tenant:acme,pipeline:orders,dag_id:" + "a_rather_long_dag_id_" * 2 + ",task_id:t")
               for line in received)


def test_statsd_sink_sends_to_an_ipv6_address():
    server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        server.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server.settimeout(5)
    try:
        Emitter([StatsdSink("::1", server.getsockname()[1])]).count("barecount.task.started", {"tenant": "acme"})
        assert _receive_lines(server) == ["barecount.task.started:1|c|#tenant:acme"]
    finally:
        server.close()


def test_emit_failures_are_reported_to_working_sinks(udp_server):
    port = udp_server.getsockname()[1]
    metrics.EMIT_FAILURES.counts.clear()
    metrics.EMIT_FAILURES.record("otlp_metrics", "export")
    Emitter([StatsdSink("127.0.0.1", port)]).report_failures()
    (line,) = _receive_lines(udp_server)
    assert line == "barecount.emit.failed:1|c|#sink:otlp_metrics,stage:export"
    assert metrics.EMIT_FAILURES.total() == 0
