"""The network probe (barecount_provider/health/network.py) against real servers on 127.0.0.1, one for every
outcome: healthy over TCP, TLS and HTTP; a server that accepts and never answers (the deadline); a closed port;
a server that closes mid-handshake; an untrusted or wrong-name certificate; HTTP 503; a name that does not
resolve. Each server runs in a thread the test starts, and is stopped and closed at the end."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from barecount_provider.health.network import check_url, probe
from barecount_provider.health.result import Dependency

pytestmark = pytest.mark.integration

DEPENDENCY = Dependency(kind="url", id="loopback", tenant="acme", network_profile="onprem")
DEADLINE_S = 1.0


# ----------------------------------------------------------------------------------------- test certificates


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        if issuer != subject:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
            )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key=None) -> Path:
    data = cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    path.write_bytes(data)
    return path


class Certificates:
    """A test CA, a server certificate it signs for localhost and 127.0.0.1, and a self-signed one."""

    def __init__(self, directory: Path) -> None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _certificate("BareCount test CA", ca_key, "BareCount test CA", ca_key, ca=True)
        server_key = ec.generate_private_key(ec.SECP256R1())
        server = _certificate("localhost", server_key, "BareCount test CA", ca_key, ca=False)
        self_key = ec.generate_private_key(ec.SECP256R1())
        self_signed = _certificate("localhost", self_key, "localhost", self_key, ca=False)
        self.ca_file = str(_write(directory / "ca.pem", ca))
        self.server_pem = str(_write(directory / "server.pem", server, server_key))
        self.self_signed_pem = str(_write(directory / "self-signed.pem", self_signed, self_key))


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("health-certs"))


def _server_context(pem: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    return context


# -------------------------------------------------------------------------------------------------- servers


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers GET with the server's status, or holds the request until the server stops."""

    def do_GET(self) -> None:
        server = self.server
        server.requests.append((self.path, self.headers["Host"], self.headers["User-Agent"]))  # type: ignore[attr-defined]
        if server.status is None:  # type: ignore[attr-defined]
            server.stopping.wait(30)  # type: ignore[attr-defined]
            return
        body = b"ok\n"
        self.send_response(server.status)  # type: ignore[attr-defined]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        pass


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that rejected the certificate, or hung up: expected here


@contextmanager
def http_server(status: int | None, *, tls_pem: str | None = None) -> Iterator[_HTTPServer]:
    """An HTTP(S) server on 127.0.0.1 answering ``status`` (``None``: never answers); yields it."""
    server = _HTTPServer(("127.0.0.1", 0), _Handler)
    server.status = status  # type: ignore[attr-defined]
    server.stopping = threading.Event()  # type: ignore[attr-defined]
    server.requests = []  # type: ignore[attr-defined]
    if tls_pem is not None:
        # The handshake runs in the request's thread, not in accept: a failed one does not stop the server.
        server.socket = _server_context(tls_pem).wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()  # type: ignore[attr-defined]
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def raw_server(on_connection: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that hands each accepted connection to ``on_connection``; yields its port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.05)
    stopping = threading.Event()
    accepted: list[socket.socket] = []

    def serve() -> None:
        while not stopping.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(connection)
            on_connection(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stopping.set()
        thread.join(5)
        listener.close()
        for connection in accepted:
            connection.close()


def _hold(connection: socket.socket) -> None:
    """Accepts and never answers (the connection is closed when the server stops)."""


def _close_after_client_hello(connection: socket.socket) -> None:
    connection.settimeout(2)
    try:
        connection.recv(16)
    except OSError:
        pass
    connection.close()


def _closed_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


# ------------------------------------------------------------------------------------------------- healthy


def test_healthy_tcp():
    with raw_server(_hold) as port:
        result = probe("127.0.0.1", port, timeout_s=DEADLINE_S, dependency=DEPENDENCY)
    assert (result.status, result.error_code) == ("healthy", None)
    assert result.detail.startswith(f"127.0.0.1:{port}: TCP connect in ")
    phases = result.as_dict()["phases_ms"]
    assert phases["dns"] is not None and phases["connect"] is not None
    assert phases["tls"] is None and phases["http"] is None
    assert result.latency_ms >= phases["connect"]
    assert result.dependency == DEPENDENCY


def test_healthy_tls_with_the_test_ca_and_the_right_name(certs):
    with http_server(200, tls_pem=certs.server_pem) as server:
        port = server.server_address[1]
        result = probe(
            "127.0.0.1", port, tls_server_name="localhost", cafile=certs.ca_file, timeout_s=DEADLINE_S,
            dependency=DEPENDENCY,
        )
    assert (result.status, result.error_code) == ("healthy", None), result.detail
    assert result.detail.startswith(f"127.0.0.1:{port}: TLS handshake in ")
    assert result.phases.tls is not None and result.phases.http is None


def test_healthy_http_200():
    with http_server(200) as server:
        port = server.server_address[1]
        result = probe("127.0.0.1", port, http_path="/health", timeout_s=DEADLINE_S, dependency=DEPENDENCY)
    assert (result.status, result.error_code) == ("healthy", None)
    assert result.detail == f"127.0.0.1:{port}: GET /health answered 200"
    assert server.requests == [("/health", f"127.0.0.1:{port}", "barecount-health")]
    assert all(value is not None for key, value in result.as_dict()["phases_ms"].items() if key != "tls")


def test_healthy_https_200_through_an_ssl_context(certs):
    context = ssl.create_default_context(cafile=certs.ca_file)
    with http_server(204, tls_pem=certs.server_pem) as server:
        port = server.server_address[1]
        result = probe(
            "127.0.0.1", port, tls_server_name="localhost", http_path="/", ssl_context=context,
            timeout_s=DEADLINE_S, dependency=DEPENDENCY,
        )
    assert (result.status, result.error_code) == ("healthy", None), result.detail
    assert None not in result.as_dict()["phases_ms"].values()


def test_check_url_tcp_http_and_https(certs):
    with http_server(200) as plain_server, http_server(302, tls_pem=certs.server_pem) as secure_server:
        plain, secure = plain_server.server_address[1], secure_server.server_address[1]
        tcp = check_url(f"tcp://127.0.0.1:{plain}", timeout_s=DEADLINE_S, dependency=DEPENDENCY)
        http = check_url(f"http://127.0.0.1:{plain}/ready", timeout_s=DEADLINE_S, dependency=DEPENDENCY)
        https = check_url(
            f"https://localhost:{secure}/ready", cafile=certs.ca_file, timeout_s=DEADLINE_S, dependency=DEPENDENCY
        )
    assert tcp.status == "healthy" and tcp.phases.http is None
    assert http.detail == f"127.0.0.1:{plain}: GET /ready answered 200"
    assert https.status == "healthy", https.detail
    assert https.detail == f"localhost:{secure}: GET /ready answered 302"
    assert secure_server.requests == [("/ready", f"localhost:{secure}", "barecount-health")]
    assert https.phases.tls is not None


# --------------------------------------------------------------------------------------------- unhealthy


def _timed(**kwargs) -> tuple[object, float]:
    started = time.monotonic()
    result = probe(timeout_s=DEADLINE_S, dependency=DEPENDENCY, **kwargs)
    return result, time.monotonic() - started


def test_an_http_server_that_never_answers_times_out_within_the_deadline():
    with http_server(None) as server:
        port = server.server_address[1]
        result, elapsed = _timed(host="127.0.0.1", port=port, http_path="/health")
    assert (result.status, result.error_code) == ("unhealthy", "timeout")
    assert result.detail == f"http: no answer to GET /health within the {DEADLINE_S:g} s deadline"
    assert elapsed < DEADLINE_S + 1
    assert result.phases.http is not None and result.phases.http >= 0.5 * DEADLINE_S * 1000


def test_a_tls_server_that_never_handshakes_times_out_within_the_deadline(certs):
    with raw_server(_hold) as port:
        result, elapsed = _timed(host="127.0.0.1", port=port, tls_server_name="localhost", cafile=certs.ca_file)
    assert (result.status, result.error_code) == ("unhealthy", "timeout")
    assert result.detail.startswith("tls: the handshake with localhost did not finish within the 1 s deadline")
    assert elapsed < DEADLINE_S + 1


def test_the_deadline_spans_every_phase(certs):
    # The handshake succeeds, then the GET waits: the whole probe, not each phase, is bounded.
    with http_server(None, tls_pem=certs.server_pem) as server:
        port = server.server_address[1]
        result, elapsed = _timed(
            host="127.0.0.1", port=port, tls_server_name="localhost", cafile=certs.ca_file, http_path="/"
        )
    assert (result.status, result.error_code) == ("unhealthy", "timeout"), result.detail
    assert result.phases.tls is not None and result.phases.http is not None
    assert elapsed < DEADLINE_S + 1
    assert result.latency_ms < (DEADLINE_S + 1) * 1000


def test_a_closed_port_is_refused():
    port = _closed_port()
    result = probe("127.0.0.1", port, timeout_s=DEADLINE_S, dependency=DEPENDENCY)
    assert (result.status, result.error_code) == ("unhealthy", "refused")
    assert result.detail == f"connect: 127.0.0.1:{port} refused the connection"
    assert result.phases.connect is not None and result.phases.tls is None


def test_a_server_closing_mid_handshake_is_tls(certs):
    with raw_server(_close_after_client_hello) as port:
        result = probe(
            "127.0.0.1", port, tls_server_name="localhost", cafile=certs.ca_file, timeout_s=DEADLINE_S,
            dependency=DEPENDENCY,
        )
    assert (result.status, result.error_code) == ("unhealthy", "tls"), result.detail
    assert result.detail.startswith("tls: the handshake with localhost failed: ")


def test_a_self_signed_certificate_is_not_trusted(certs):
    with http_server(200, tls_pem=certs.self_signed_pem) as server:
        port = server.server_address[1]
        result = probe(
            "127.0.0.1", port, tls_server_name="localhost", cafile=certs.ca_file, http_path="/",
            timeout_s=DEADLINE_S, dependency=DEPENDENCY,
        )
    assert (result.status, result.error_code) == ("unhealthy", "tls")
    assert result.detail == "tls: certificate not valid for localhost: self-signed certificate"
    assert result.phases.http is None


def test_a_certificate_for_another_name_is_refused(certs):
    with http_server(200, tls_pem=certs.server_pem) as server:
        port = server.server_address[1]
        result = probe(
            "127.0.0.1", port, tls_server_name="orders.internal.example", cafile=certs.ca_file,
            timeout_s=DEADLINE_S, dependency=DEPENDENCY,
        )
    assert (result.status, result.error_code) == ("unhealthy", "tls")
    assert result.detail.startswith("tls: certificate not valid for orders.internal.example: Hostname mismatch")


def test_http_503_is_http_503():
    with http_server(503) as server:
        port = server.server_address[1]
        result = probe("127.0.0.1", port, http_path="/health", timeout_s=DEADLINE_S, dependency=DEPENDENCY)
    assert (result.status, result.error_code) == ("unhealthy", "http_503")
    assert result.detail == f"127.0.0.1:{port}: GET /health answered 503"
    assert result.as_dict()["error_code"] == "http_503"


def test_a_name_that_does_not_resolve_is_dns():
    result = check_url("http://no-such-host.invalid/health", timeout_s=DEADLINE_S, dependency=DEPENDENCY)
    assert (result.status, result.error_code) == ("unhealthy", "dns"), result.detail
    assert result.detail.startswith("dns: no-such-host.invalid does not resolve")
    assert result.phases.dns is not None and result.phases.connect is None


def test_a_server_that_hangs_up_before_answering_is_unknown():
    with raw_server(lambda connection: connection.close()) as port:
        result = probe("127.0.0.1", port, http_path="/", timeout_s=DEADLINE_S, dependency=DEPENDENCY)
    assert (result.status, result.error_code) == ("unknown", None), result.detail
    assert result.detail.startswith("http: ")


@pytest.mark.parametrize("path", ["health", "/a b", "/x\r\nX-Injected: 1"])
def test_a_path_that_would_break_the_request_line_is_never_sent(path):
    received: list[bytes] = []

    def record(connection: socket.socket) -> None:
        connection.settimeout(0.5)
        try:
            received.append(connection.recv(4096))
        except OSError:
            received.append(b"")

    with raw_server(record) as port:
        result = probe("127.0.0.1", port, http_path=path, timeout_s=DEADLINE_S, dependency=DEPENDENCY)
        deadline = time.monotonic() + 2
        while not received and time.monotonic() < deadline:
            time.sleep(0.01)
    assert (result.status, result.error_code) == ("unknown", None)
    assert result.detail == f"http: the path {path!r} does not start with / or contains whitespace"
    assert received == [b""], "nothing is sent for a path that would break the request line"
