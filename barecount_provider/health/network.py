"""Network probes: DNS resolution, TCP connect, TLS handshake and an optional HTTP GET, each timed, under one deadline.

``probe`` is the private endpoint check's network half and the plain health URL check (``check_url``). It uses
the standard library only and never raises: every outcome is a ``HealthResult`` (docs/health.md). The error
code names the phase that failed: ``dns`` (the name does not resolve), ``refused`` (nothing listens),
``timeout`` (the deadline passed, in any phase), ``tls`` (handshake or certificate failure), ``http_<status>``
(a status other than 2xx/3xx). Anything else that goes wrong is ``unknown`` with the error in the detail.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from barecount_provider.health.result import Dependency, HealthResult, PhaseTimings, Status, http_error_code

_MAX_HEADER_BYTES = 65536
_USER_AGENT = "barecount-health"


class _Failed(Exception):
    """A phase's outcome that ends the probe: the status, error code and detail of the result."""

    def __init__(self, status: Status, error_code: str | None, detail: str) -> None:
        super().__init__(detail)
        self.status: Status = status
        self.error_code = error_code
        self.detail = detail


class _Deadline:
    """The one deadline all phases share."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.end = time.monotonic() + timeout_s

    def remaining(self, phase: str) -> float:
        """Seconds left; raises the ``timeout`` outcome when none are."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise _Failed("unhealthy", "timeout", f"{phase}: the {self.timeout_s:g} s deadline passed")
        return left


def _resolve(host: str, port: int, deadline: _Deadline) -> list[tuple[Any, ...]]:
    """The addresses of ``host``, within the deadline (``getaddrinfo`` has no timeout of its own: a thread)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    answer: list[Any] = []

    def lookup() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except BaseException as err:  # handed to the caller's thread below
            answer.append(err)

    # A daemon thread: a resolver that hangs past the deadline is left to finish on its own.
    thread = threading.Thread(target=lookup, name=f"barecount-health-dns-{host}", daemon=True)
    thread.start()
    thread.join(deadline.remaining("dns"))
    if not answer:
        raise _Failed("unhealthy", "timeout", f"dns: {host} did not resolve within the {deadline.timeout_s:g} s deadline")
    if isinstance(answer[0], socket.gaierror):
        raise _Failed("unhealthy", "dns", f"dns: {host} does not resolve ({answer[0].strerror or answer[0]})")
    if isinstance(answer[0], BaseException):
        raise answer[0]
    addresses: list[tuple[Any, ...]] = answer[0]
    if not addresses:
        raise _Failed("unhealthy", "dns", f"dns: {host} resolves to no address")
    return addresses


def _connect(addresses: list[tuple[Any, ...]], host: str, port: int, deadline: _Deadline) -> socket.socket:
    """A TCP connection to the first address that accepts one."""
    last: OSError | None = None
    for family, kind, proto, _name, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(deadline.remaining("connect"))
            sock.connect(address)
            return sock
        except _Failed:
            sock.close()
            raise
        except ConnectionRefusedError as err:
            sock.close()
            last = err
        except TimeoutError:
            sock.close()
            detail = f"connect: {host}:{port} did not accept within the {deadline.timeout_s:g} s deadline"
            raise _Failed("unhealthy", "timeout", detail) from None
        except OSError as err:
            sock.close()
            last = err
    if isinstance(last, ConnectionRefusedError):
        raise _Failed("unhealthy", "refused", f"connect: {host}:{port} refused the connection")
    raise _Failed("unknown", None, f"connect: {host}:{port}: {last}")


def _handshake(sock: socket.socket, server_name: str, context: ssl.SSLContext, deadline: _Deadline) -> ssl.SSLSocket:
    """The TLS handshake, the certificate verified against ``server_name``."""
    sock.settimeout(deadline.remaining("tls"))
    try:
        return context.wrap_socket(sock, server_hostname=server_name)
    except ssl.SSLCertVerificationError as err:
        raise _Failed("unhealthy", "tls", f"tls: certificate not valid for {server_name}: {err.verify_message}") from None
    except TimeoutError:
        detail = f"tls: the handshake with {server_name} did not finish within the {deadline.timeout_s:g} s deadline"
        raise _Failed("unhealthy", "timeout", detail) from None
    except OSError as err:  # ssl.SSLError (EOF, alerts) or the peer resetting the connection mid-handshake
        raise _Failed("unhealthy", "tls", f"tls: the handshake with {server_name} failed: {err}") from None


def _host_header(name: str, port: int, tls: bool) -> str:
    """The ``Host`` header: the name (an IPv6 address in brackets), and the port unless it is the default."""
    host = f"[{name}]" if ":" in name else name
    return host if port == (443 if tls else 80) else f"{host}:{port}"


def _http_get(sock: socket.socket, host_header: str, path: str, deadline: _Deadline) -> int:
    """Sends ``GET path`` and returns the response's status; every read is bounded by the deadline."""
    if not path.startswith("/") or any(character in path for character in " \t\r\n"):
        raise _Failed("unknown", None, f"http: the path {path!r} does not start with / or contains whitespace")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {_USER_AGENT}\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    )
    received = b""
    try:
        sock.settimeout(deadline.remaining("http"))
        sock.sendall(request.encode("ascii"))
        while b"\r\n" not in received:
            sock.settimeout(deadline.remaining("http"))
            chunk = sock.recv(4096)
            if not chunk:
                raise _Failed("unknown", None, f"http: the server closed the connection before answering GET {path}")
            received += chunk
            if len(received) > _MAX_HEADER_BYTES:
                break
    except TimeoutError:
        detail = f"http: no answer to GET {path} within the {deadline.timeout_s:g} s deadline"
        raise _Failed("unhealthy", "timeout", detail) from None
    except (ssl.SSLError, ConnectionError) as err:
        raise _Failed("unknown", None, f"http: GET {path} failed: {err}") from None
    status_line = received.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit() or not 100 <= int(parts[1]) <= 599:
        raise _Failed("unknown", None, f"http: not an HTTP status line: {status_line[:80]!r}")
    return int(parts[1])


def probe(
    host: str,
    port: int,
    *,
    timeout_s: float,
    dependency: Dependency,
    tls_server_name: str | None = None,
    http_path: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    cafile: str | None = None,
) -> HealthResult:
    """Probes ``host:port`` within ``timeout_s`` in all and returns the result; never raises.

    :param host: a name or an IP address.
    :param port: the TCP port.
    :param timeout_s: the one deadline across every phase, in seconds.
    :param dependency: what the result is about.
    :param tls_server_name: when given, a TLS handshake follows the connect and the server's certificate is
        verified against this name.
    :param http_path: when given, ``GET http_path`` follows (over TLS when there is TLS); 2xx and 3xx are healthy.
    :param ssl_context: the TLS context to verify with (default: the system's trust store, or ``cafile``).
    :param cafile: a CA bundle to trust instead of the system's, when no ``ssl_context`` is given.
    """
    checked_at = datetime.now(UTC)
    started = time.monotonic()
    timings: dict[str, float] = {}
    phase = "dns"
    phase_started = started

    def finish(status: Status, error_code: str | None, detail: str) -> HealthResult:
        if phase not in timings:
            timings[phase] = (time.monotonic() - phase_started) * 1000
        return HealthResult(
            status=status,
            dependency=dependency,
            latency_ms=(time.monotonic() - started) * 1000,
            detail=detail,
            error_code=error_code,
            phases=PhaseTimings(**timings),
            checked_at=checked_at,
        )

    sock: socket.socket | None = None
    try:
        deadline = _Deadline(timeout_s)
        addresses = _resolve(host, port, deadline)
        timings["dns"] = (time.monotonic() - phase_started) * 1000

        phase, phase_started = "connect", time.monotonic()
        sock = _connect(addresses, host, port, deadline)
        timings["connect"] = (time.monotonic() - phase_started) * 1000

        if tls_server_name is not None:
            phase, phase_started = "tls", time.monotonic()
            context = ssl_context or ssl.create_default_context(cafile=cafile)
            sock = _handshake(sock, tls_server_name, context, deadline)
            timings["tls"] = (time.monotonic() - phase_started) * 1000

        if http_path is None:
            what = "TLS handshake" if tls_server_name is not None else "TCP connect"
            return finish("healthy", None, f"{host}:{port}: {what} in {(time.monotonic() - started) * 1000:.1f} ms")

        phase, phase_started = "http", time.monotonic()
        host_header = _host_header(tls_server_name or host, port, tls_server_name is not None)
        status = _http_get(sock, host_header, http_path, deadline)
        timings["http"] = (time.monotonic() - phase_started) * 1000
        if 200 <= status < 400:
            return finish("healthy", None, f"{host}:{port}: GET {http_path} answered {status}")
        return finish("unhealthy", http_error_code(status), f"{host}:{port}: GET {http_path} answered {status}")
    except _Failed as failed:
        return finish(failed.status, failed.error_code, failed.detail)
    except Exception as err:  # never into the caller: the check could not decide
        return finish("unknown", None, f"{phase}: {type(err).__name__}: {err}")
    finally:
        if sock is not None:
            sock.close()


def parse_url(url: str) -> tuple[str, int, str | None, str | None]:
    """``(host, port, tls_server_name, http_path)`` of an ``http://``, ``https://`` or ``tcp://host:port`` URL.

    Raises ``ValueError`` naming what is wrong with the URL.
    """
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        # never echoed: the URL is named without them
        shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        raise ValueError(
            f"health URL {shown!r} carries credentials (user:password@): a health URL is shown in metrics, "
            "evidence and the API; give the service an unauthenticated health path"
        )
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "tcp"):
        raise ValueError(f"health URL {url!r}: scheme {parts.scheme!r} is not one of http, https, tcp")
    if not parts.hostname:
        raise ValueError(f"health URL {url!r} has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"health URL {url!r} has a port that is not a number between 0 and 65535") from None
    if scheme == "tcp":
        if port is None:
            raise ValueError(f"health URL {url!r}: a tcp:// URL needs a port")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError(f"health URL {url!r}: a tcp:// URL has no path")
        return parts.hostname, port, None, None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if scheme == "https":
        return parts.hostname, port or 443, parts.hostname, path
    return parts.hostname, port or 80, None, path


def check_url(
    url: str,
    *,
    timeout_s: float,
    dependency: Dependency,
    ssl_context: ssl.SSLContext | None = None,
    cafile: str | None = None,
) -> HealthResult:
    """Probes a health URL: ``tcp://host:port`` connects, ``http://`` GETs, ``https://`` verifies TLS then GETs.

    Never raises: a URL ``parse_url`` refuses is an ``unknown`` result with the reason in the detail.
    """
    try:
        host, port, tls_server_name, http_path = parse_url(url)
    except ValueError as err:
        return HealthResult(status="unknown", dependency=dependency, latency_ms=0.0, detail=str(err))
    return probe(
        host,
        port,
        timeout_s=timeout_s,
        dependency=dependency,
        tls_server_name=tls_server_name,
        http_path=http_path,
        ssl_context=ssl_context,
        cafile=cafile,
    )
