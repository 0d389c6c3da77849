"""`barecount doctor` with a real StatsD listener (UDP) on a valid port."""

from __future__ import annotations

import socket

import pytest

from barecount_provider import cli

from ..unit.test_doctor import _set

pytestmark = pytest.mark.integration


def test_a_listening_statsd_on_a_valid_port_is_still_ok(isolated: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        _set(isolated, statsd_on="True", statsd_port=str(listener.getsockname()[1]))
        assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "Options: every one valid" in out and out.rstrip().endswith("OK")
