"""The health URL parser of barecount_provider/health/network.py, which touches no network (the probe against
real servers: tests/integration/test_health_network.py)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from barecount_provider.health.network import check_url, parse_url, probe
from barecount_provider.health.result import Dependency

DEPENDENCY = Dependency(kind="url", id="orders-db", tenant="acme", network_profile="onprem")



@pytest.mark.parametrize(
    "url,parsed",
    [
        ("http://db.example/health", ("db.example", 80, None, "/health")),
        ("http://db.example:8080", ("db.example", 8080, None, "/")),
        ("https://api.example/ready?deep=1", ("api.example", 443, "api.example", "/ready?deep=1")),
        ("HTTPS://api.example:8443/", ("api.example", 8443, "api.example", "/")),
        ("tcp://10.0.0.5:5432", ("10.0.0.5", 5432, None, None)),
        ("tcp://[::1]:5432", ("::1", 5432, None, None)),
    ],
)
def test_parse_url(url, parsed):
    assert parse_url(url) == parsed


@pytest.mark.parametrize(
    "url,message",
    [
        ("ftp://db.example/", "health URL 'ftp://db.example/': scheme 'ftp' is not one of http, https, tcp"),
        ("http:///health", "health URL 'http:///health' has no host"),
        ("tcp://db.example", "health URL 'tcp://db.example': a tcp:// URL needs a port"),
        ("tcp://db.example:5432/x", "health URL 'tcp://db.example:5432/x': a tcp:// URL has no path"),
        ("http://db.example:99999/", "health URL 'http://db.example:99999/' has a port that is not a number"),
    ],
)
def test_parse_url_names_what_is_wrong(url, message):
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        parse_url(url)


@pytest.mark.parametrize("url", ["https://svc:Sup3rS3cretPw@db.example/health", "tcp://svc:Sup3rS3cretPw@db.example:5432"])
def test_a_url_with_credentials_is_refused_without_echoing_them(url):
    """A health URL is shown in metrics, evidence and the API: credentials in it would leak there."""
    with pytest.raises(ValueError, match=r"carries credentials \(user:password@\)") as raised:
        parse_url(url)
    assert "Sup3rS3cretPw" not in str(raised.value) and "svc" not in str(raised.value)
    assert "db.example" in str(raised.value)
    result = check_url(url, timeout_s=1.0, dependency=DEPENDENCY)
    assert result.status == "unknown" and "Sup3rS3cretPw" not in result.detail


def test_check_url_does_not_raise_on_a_bad_url():
    result = check_url("ftp://db.example/", timeout_s=1.0, dependency=DEPENDENCY)
    assert result.status == "unknown" and result.error_code is None
    assert result.detail == "health URL 'ftp://db.example/': scheme 'ftp' is not one of http, https, tcp"



# --------------------------------------------------------------- the resolver, replaced: no network touched


def test_a_resolver_that_hangs_is_bounded_by_the_deadline(monkeypatch):
    release = threading.Event()

    def hanging_getaddrinfo(*args, **kwargs):
        release.wait(10)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_getaddrinfo)
    started = time.monotonic()
    try:
        result = probe("db.internal.example", 443, timeout_s=0.3, dependency=DEPENDENCY)
    finally:
        release.set()
    assert time.monotonic() - started < 1.3
    assert (result.status, result.error_code) == ("unhealthy", "timeout")
    assert result.detail == "dns: db.internal.example did not resolve within the 0.3 s deadline"
    assert result.phases.dns is not None and result.phases.connect is None


def test_an_unexpected_error_is_unknown_and_never_raised(monkeypatch):
    def broken_getaddrinfo(*args, **kwargs):
        raise RuntimeError("resolver exploded")

    monkeypatch.setattr(socket, "getaddrinfo", broken_getaddrinfo)
    result = probe("db.internal.example", 443, timeout_s=1.0, dependency=DEPENDENCY)
    assert (result.status, result.error_code) == ("unknown", None)
    assert result.detail == "dns: RuntimeError: resolver exploded"
