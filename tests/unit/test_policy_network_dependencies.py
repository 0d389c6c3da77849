"""``network_profiles.<profile>.dependencies``: what a network profile relies on (VPN connections, VPC
endpoints, on-premise agents, health URLs), parsed into frozen dataclasses and validated with exact messages."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from barecount_provider import cli
from barecount_provider.policy import (
    AgentDependency,
    EndpointProbe,
    NetworkDependencies,
    VpcEndpoint,
    VpnConnection,
    load_policy,
    parse_policy,
    validate_file,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "policy.md"
VPN = "vpn-0123456789abcdef0"


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in tmp_path, so that messages name the file as `policy.yaml`, as a user would pass it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(text: str) -> str:
    Path("policy.yaml").write_text(text, encoding="utf-8")
    return "policy.yaml"


def messages(text: str) -> list[str]:
    return [str(problem) for problem in validate_file(write(text))]


def acme_profile(profile: str, dependencies: str) -> str:
    """A policy whose tenant acme sets ``network_profiles.<profile>.dependencies`` to the YAML flow value."""
    return f"version: 1\ntenants:\n  acme:\n    network_profiles:\n      {profile}:\n        dependencies: {dependencies}\n"


WHERE = "policy.yaml: tenants.acme.network_profiles.vpn.dependencies"


def _docs_section_block(heading: str, language: str) -> str:
    text = DOCS.read_text(encoding="utf-8")
    section = text.split(f"\n{heading}\n", 1)[1].split("\n#", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)[0]


# ------------------------------------------------------------------------------------------------ valid


def test_the_docs_full_example_gives_typed_dependencies() -> None:
    text = DOCS.read_text(encoding="utf-8")
    example = text.split("\n## A full example\n", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    assert validate_file(write(example)) == []
    loaded = load_policy("policy.yaml")
    acme, globex = loaded.for_tenant("acme"), loaded.for_tenant("globex")

    assert acme.dependencies("vpn") == NetworkDependencies(
        vpn_connections=(VpnConnection(id="vpn-0a1b2c3d4e5f60718", min_tunnels_up=2),),
        health_urls=("tcp://warehouse-db.corp.acme.example:5432",),
        require_healthy=True,
    )
    on_prem = acme.dependencies("on_prem")
    assert on_prem.vpn_connections == (VpnConnection(id="vpn-0a1b2c3d4e5f60718", min_tunnels_up=1),)
    assert on_prem.agents == (
        AgentDependency(name="acme-dc1-gateway", max_heartbeat_age_seconds=90),
        AgentDependency(name="acme-dc2-gateway", max_heartbeat_age_seconds=120),
    )
    assert on_prem.health_urls == ("https://ops.corp.acme.example/healthz",)
    assert (on_prem.degraded, on_prem.require_healthy) == ("refuse", True)
    # a profile that names no dependency has none, and is not held back
    assert acme.dependencies("private_vpc") == NetworkDependencies()
    assert acme.dependencies("private_vpc").empty and not acme.dependencies("private_vpc").require_healthy
    # the placement of a profile is unchanged by its dependencies
    assert dict(acme.placement("private_vpc", "ec2")) == {
        "subnet_id": "subnet-0acme1",
        "security_group_ids": ["sg-0acme"],
    }
    assert "dependencies" not in acme.network_profiles["vpn"]

    assert globex.dependencies("privatelink") == NetworkDependencies(
        vpc_endpoints=(
            VpcEndpoint(
                id="vpce-0f1e2d3c4b5a69788",
                probe=EndpointProbe(
                    host="api.partner.globex.example",
                    port=443,
                    tls_server_name="api.partner.globex.example",
                    http_path="/health",
                ),
            ),
            VpcEndpoint(id="vpce-01234567", probe=EndpointProbe(host="10.20.0.15", port=5432)),
        ),
    )
    assert globex.dependencies("privatelink").degraded == "allow"
    # the defaults name no dependency: an undeclared tenant has none
    assert loaded.for_tenant("nobody").dependencies("vpn").empty


def test_dependencies_are_frozen_and_hashable() -> None:
    deps = parse_policy(acme_profile("vpn", f"{{vpn_connections: [{{id: {VPN}}}]}}")).for_tenant("acme")
    found = deps.dependencies("vpn")
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.require_healthy = True  # type: ignore[misc]
    assert isinstance(found.vpn_connections, tuple)
    assert hash(found) == hash(NetworkDependencies(vpn_connections=(VpnConnection(VPN),)))


def test_a_tenant_list_replaces_the_defaults_list_and_flags_merge() -> None:
    text = (
        "version: 1\ndefaults:\n  network_profiles:\n    vpn:\n      dependencies:\n"
        f"        vpn_connections: [{{id: {VPN}}}]\n        health_urls: ['http://a.example/']\n"
        "        require_healthy: true\n"
        "tenants:\n  acme:\n    network_profiles:\n      vpn:\n        dependencies:\n"
        "          health_urls: ['https://b.example:8443/ok']\n          degraded: refuse\n"
    )
    acme = parse_policy(text).for_tenant("acme").dependencies("vpn")
    assert acme == NetworkDependencies(
        vpn_connections=(VpnConnection(VPN),),
        health_urls=("https://b.example:8443/ok",),
        degraded="refuse",
        require_healthy=True,
    )


def test_empty_and_null_dependencies_are_none() -> None:
    for value in ("{}", "null", "{vpn_connections: [], agents: []}"):
        assert parse_policy(acme_profile("vpn", value)).for_tenant("acme").dependencies("vpn").empty


def test_host_forms_and_url_forms_accepted() -> None:
    probes = (
        "[{id: vpce-0123456789abcdef0, probe: {host: '::1', port: 1}},"
        " {id: vpce-01234567, probe: {host: 'db.internal.', port: 65535, tls_server_name: db.internal}}]"
    )
    urls = "['http://127.0.0.1:8080', 'https://[::1]:8443/h?x=1', 'tcp://db.corp:5432', 'http://h/']"
    assert messages(acme_profile("privatelink", f"{{vpc_endpoints: {probes}, health_urls: {urls}}}")) == []


# ---------------------------------------------------------------------------------------------- invalid


@pytest.mark.parametrize(
    ("dependencies", "expected"),
    [
        (
            "{vpn_connections: [{id: vpn-12}]}",
            f"{WHERE}.vpn_connections[0].id: 'vpn-12' is not a VPN connection id such as 'vpn-0123456789abcdef0'",
        ),
        (
            "{vpn_connections: [{id: VPN-0123456789ABCDEF0}]}",
            f"{WHERE}.vpn_connections[0].id: 'VPN-0123456789ABCDEF0' is not a VPN connection id such as "
            "'vpn-0123456789abcdef0'",
        ),
        (
            f"{{vpn_connections: [{{id: {VPN}, min_tunnels_up: 3}}]}}",
            f"{WHERE}.vpn_connections[0].min_tunnels_up: 3 is not an integer between 1 and 2",
        ),
        (
            "{vpn_connections: [{min_tunnels_up: 1}]}",
            f"{WHERE}.vpn_connections[0].id: missing; expected the id of a VPN connection",
        ),
        (
            f"{{vpn_connections: [{{id: {VPN}, tunnels: 2}}]}}",
            f"{WHERE}.vpn_connections[0].tunnels: 'tunnels' is not a known key of a VPN connection "
            "(allowed: id, min_tunnels_up)",
        ),
        (
            f"{{vpn_connections: [{VPN}]}}",
            f"{WHERE}.vpn_connections[0]: '{VPN}' is not a VPN connection: a mapping (keys: id, "
            "min_tunnels_up (optional))",
        ),
        (
            f"{{vpn_connections: {{id: {VPN}}}}}",
            f"{WHERE}.vpn_connections: {{'id': '{VPN}'}} is not a list of VPN connections",
        ),
        (
            f"{{vpn_connections: [{{id: {VPN}}}, {{id: {VPN}, min_tunnels_up: 2}}]}}",
            f"{WHERE}.vpn_connections[1].id: '{VPN}' is not a unique VPN connection id (the same is at [0])",
        ),
        (
            "{vpc_endpoints: [{id: vpc-0123456789abcdef0, probe: {host: h, port: 443}}]}",
            f"{WHERE}.vpc_endpoints[0].id: 'vpc-0123456789abcdef0' is not a VPC endpoint id such as "
            "'vpce-0123456789abcdef0'",
        ),
        (
            "{vpc_endpoints: [{id: vpce-01234567, probe: {host: h, port: 70000}}]}",
            f"{WHERE}.vpc_endpoints[0].probe.port: 70000 is not an integer between 1 and 65535",
        ),
        (
            "{vpc_endpoints: [{id: vpce-01234567, probe: {host: h, port: '443'}}]}",
            f"{WHERE}.vpc_endpoints[0].probe.port: '443' is not an integer between 1 and 65535",
        ),
        (
            "{vpc_endpoints: [{id: vpce-01234567, probe: {host: h, port: 0}}]}",
            f"{WHERE}.vpc_endpoints[0].probe.port: 0 is not an integer between 1 and 65535",
        ),
        (
            "{vpc_endpoints: [{id: vpce-01234567, probe: {host: h, port: 443, http_path: health}}]}",
            f"{WHERE}.vpc_endpoints[0].probe.http_path: 'health' is not an HTTP path starting with '/' (no spaces)",
        ),
        (
            "{vpc_endpoints: [{id: vpce-01234567, probe: {host: 'h:443', port: 443}}]}",
            f"{WHERE}.vpc_endpoints[0].probe.host: 'h:443' is not a host name or IP address to probe",
        ),
        (
            "{vpc_endpoints: [{id: vpce-01234567, probe: {host: h, port: 443, tls_server_name: 'a b'}}]}",
            f"{WHERE}.vpc_endpoints[0].probe.tls_server_name: 'a b' is not a TLS server name (a DNS name, not an "
            "IP address)",
        ),
        (
            "{vpc_endpoints: [{id: vpce-01234567, probe: {host: h, port: 443, tls_server_name: 10.0.0.1}}]}",
            f"{WHERE}.vpc_endpoints[0].probe.tls_server_name: '10.0.0.1' is not a TLS server name (a DNS name, not "
            "an IP address)",
        ),
        (
            "{vpc_endpoints: [{id: vpce-01234567, probe: {port: 443}}]}",
            f"{WHERE}.vpc_endpoints[0].probe.host: missing; expected the host of an endpoint probe",
        ),
        (
            "{vpc_endpoints: [{id: vpce-01234567}]}",
            f"{WHERE}.vpc_endpoints[0].probe: missing; expected the probe of a VPC endpoint",
        ),
        (
            "{vpc_endpoints: [{id: vpce-01234567, probe: h:443}]}",
            f"{WHERE}.vpc_endpoints[0].probe: 'h:443' is not an endpoint probe: a mapping (keys: host, port, "
            "tls_server_name (optional), http_path (optional))",
        ),
        (
            "{vpc_endpoints: [{id: vpce-01234567, probe: {host: h, port: 1, sni: h}}]}",
            f"{WHERE}.vpc_endpoints[0].probe.sni: 'sni' is not a known key of an endpoint probe "
            "(allowed: host, port, tls_server_name, http_path)",
        ),
        (
            "{agents: [{name: DC1}]}",
            f"{WHERE}.agents[0].name: 'DC1' is not an agent name matching ^[a-z0-9][a-z0-9_-]{{0,62}}$",
        ),
        (
            "{agents: [{name: dc1, max_heartbeat_age_seconds: 0}]}",
            f"{WHERE}.agents[0].max_heartbeat_age_seconds: 0 is not an integer >= 1",
        ),
        (
            "{agents: [{name: dc1}, {name: dc2}, {name: dc1}]}",
            f"{WHERE}.agents[2].name: 'dc1' is not a unique agent name (the same is at [0])",
        ),
        (
            "{health_urls: ['ftp://db.corp:21']}",
            f"{WHERE}.health_urls[0]: 'ftp://db.corp:21' is not an http:// or https:// URL, or tcp://host:port, without credentials (user:password@)",
        ),
        (
            "{health_urls: ['tcp://db.corp']}",
            f"{WHERE}.health_urls[0]: 'tcp://db.corp' is not an http:// or https:// URL, or tcp://host:port, without credentials (user:password@)",
        ),
        (
            "{health_urls: ['http://db.corp:99999/']}",
            f"{WHERE}.health_urls[0]: 'http://db.corp:99999/' is not an http:// or https:// URL, or tcp://host:port, without credentials (user:password@)",
        ),
        (
            "{health_urls: ['http://db.corp/a b']}",
            f"{WHERE}.health_urls[0]: 'http://db.corp/a b' is not an http:// or https:// URL, or tcp://host:port, without credentials (user:password@)",
        ),
        (
            "{health_urls: ['db.corp:80']}",
            f"{WHERE}.health_urls[0]: 'db.corp:80' is not an http:// or https:// URL, or tcp://host:port, without credentials (user:password@)",
        ),
        (
            "{health_urls: ['https://svc:Sup3rS3cretPw@db.corp/health']}",
            f"{WHERE}.health_urls[0]: 'https://***@db.corp/health' is not an http:// or https:// URL, or tcp://host:port, without credentials (user:password@)",
        ),
        (
            "{health_urls: ['http://a/', 'http://a/']}",
            f"{WHERE}.health_urls[1]: 'http://a/' is not a unique health URL (the same is at [0])",
        ),
        (
            "{health_urls: 'http://a/'}",
            f"{WHERE}.health_urls: 'http://a/' is not a list of health URLs",
        ),
        ("{degraded: warn}", f"{WHERE}.degraded: 'warn' is not one of allow, refuse"),
        ("{require_healthy: 'yes'}", f"{WHERE}.require_healthy: 'yes' is not true or false"),
        (
            "{vpn: []}",
            f"{WHERE}.vpn: 'vpn' is not a known key (allowed: vpn_connections, vpc_endpoints, agents, "
            "health_urls, degraded, require_healthy)",
        ),
        (
            "[vpn-0123456789abcdef0]",
            f"{WHERE}: ['vpn-0123456789abcdef0'] is not a mapping (keys: vpn_connections, vpc_endpoints, "
            "agents, health_urls, degraded, require_healthy)",
        ),
    ],
)
def test_each_mistake_has_its_exact_message(dependencies: str, expected: str) -> None:
    assert messages(acme_profile("vpn", dependencies)) == [expected]


def test_every_mistake_is_reported_together_as_the_docs_say() -> None:
    text = (
        "version: 1\ntenants:\n  acme:\n    network_profiles:\n"
        f"      vpn:\n        dependencies:\n          vpn_connections: [{{id: vpn-12}}, {{id: {VPN}}}, {{id: {VPN}}}]\n"
        "      privatelink:\n        dependencies:\n"
        "          vpc_endpoints: [{id: vpce-01234567, probe: {host: h, port: 70000, http_path: health}}]\n"
        "      on_prem:\n        dependencies:\n          health_urls: ['ftp://db.corp:21']\n"
    )
    documented = _docs_section_block("#### `network_profiles.<profile>.dependencies`", "text")
    assert messages(text) == documented.splitlines()


def test_the_cli_validates_the_docs_example_and_names_a_bad_dependency(capsys: pytest.CaptureFixture[str]) -> None:
    text = DOCS.read_text(encoding="utf-8")
    write(text.split("\n## A full example\n", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0])
    assert cli.main(["policy", "validate", "policy.yaml"]) == 0

    write(acme_profile("vpn", "{vpn_connections: [{id: vpn-12}]}"))
    capsys.readouterr()
    assert cli.main(["policy", "validate", "policy.yaml"]) == 1
    assert (
        f"{WHERE}.vpn_connections[0].id: 'vpn-12' is not a VPN connection id such as 'vpn-0123456789abcdef0'"
        in capsys.readouterr().err
    )
