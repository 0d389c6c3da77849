"""The statsd adapter's upstream shape (barecount_provider/adapters/statsd.py), checked against a UDP
listener on loopback; the other adapters' shapes are checked in tests/unit/test_adapters.py."""

from __future__ import annotations

import socket

import pytest

from barecount_provider.adapters import statsd as statsd_adapter

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------------------------------------- statsd


def test_the_statsd_clients_socket_and_address_reach_the_server():
    import statsd

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    try:
        client = statsd.StatsClient("127.0.0.1", server.getsockname()[1])
        try:
            sock, address = statsd_adapter.client_socket(client)
        except AttributeError as err:
            pytest.fail(f"statsd.StatsClient no longer keeps _sock and _addr ({err}): update adapters/statsd.py")
        assert isinstance(sock, socket.socket) and sock.type == socket.SOCK_DGRAM, "StatsClient._sock is not a UDP socket"
        client.incr("by_the_client")
        assert server.recv(512) == b"by_the_client:1|c"
        sock.sendto(b"by_the_adapter:1|c", address)
        assert server.recv(512) == b"by_the_adapter:1|c", "StatsClient._addr is not where the client sends"
    finally:
        server.close()
