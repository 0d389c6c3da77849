"""The statsd client's private internals BareCount relies on: its UDP socket and the address it resolved."""

from __future__ import annotations

import socket
from typing import Any


def client_socket(client: Any) -> tuple[socket.socket, Any]:
    """The UDP socket of a ``statsd.StatsClient`` and the address its ``send`` uses (resolved by the client
    into the socket's family)."""
    return client._sock, client._addr
