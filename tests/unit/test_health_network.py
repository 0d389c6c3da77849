"""The health URL parser of barecount_provider/health/network.py, which touches no network (the probe against
real servers: tests/integration/test_health_network.py)."""

from __future__ import annotations

import pytest

from barecount_provider.health.network import check_url, parse_url
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


def test_check_url_does_not_raise_on_a_bad_url():
    result = check_url("ftp://db.example/", timeout_s=1.0, dependency=DEPENDENCY)
    assert result.status == "unknown" and result.error_code is None
    assert result.detail == "health URL 'ftp://db.example/': scheme 'ftp' is not one of http, https, tcp"

