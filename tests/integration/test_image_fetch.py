"""`fetch_image_bytes` and `load_image` against real local HTTP(S) servers started by the test.

Every server here listens on loopback, which the default policy refuses; tests that need a host to
count as public say so by patching the classifier for one address, so the rest of the path (one
lookup, dialling the checked address, redirects, timeouts, the byte cap) runs for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from gateway.images import fetch
from gateway.images.decode import ImageLimits, ImageRefused
from gateway.images.fetch import FetchPolicy, fetch_image_bytes
from gateway.images.load import load_image

LOCAL = FetchPolicy(allow_private_addresses=True)
MiB = 2**20


def _png(size: tuple[int, int] = (48, 32)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, "orange").save(out, format="PNG")
    return out.getvalue()


PNG = _png()

Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Server:
    """A threading HTTP server on one loopback address, with routes and a log of what it saw."""

    host: str = "127.0.0.1"
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    """(path, Host header) of every request received."""
    sent: int = 0
    """Body bytes a streaming route managed to write before the client went away."""
    stopped_early: threading.Event = field(default_factory=threading.Event)

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.httpd.server_port}"

    def start(self, tls: ssl.SSLContext | None = None) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Host", "")))
                route = server.routes.get(self.path)
                if route is None:
                    _reply(self, 404, b"no such image: secret internal text")
                else:
                    route(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer((self.host, 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def _reply(handler: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def server() -> Iterator[Server]:
    served = Server()
    served.start()
    yield served
    served.stop()


@pytest.fixture
def second_server() -> Iterator[Server]:
    """Another loopback server, on 127.0.0.2 (all of 127/8 is loopback on Linux)."""
    served = Server(host="127.0.0.2")
    served.start()
    yield served
    served.stop()


def _pretend_public(monkeypatch: pytest.MonkeyPatch, *addresses: str) -> None:
    """Count these addresses as public; every other address keeps the real classifier."""
    real = fetch.is_public_address
    public = {ipaddress.ip_address(a) for a in addresses}
    monkeypatch.setattr(
        fetch, "is_public_address", lambda ip: ipaddress.ip_address(ip) in public or real(ip)
    )


async def _refusal(url: str, policy: FetchPolicy, max_bytes: int = 10 * MiB) -> ImageRefused:
    with pytest.raises(ImageRefused) as caught:
        await fetch_image_bytes(url, policy, max_bytes)
    return caught.value


# --- private addresses ---------------------------------------------------------------------------


async def test_a_loopback_server_is_refused_by_default_and_never_asked(server: Server) -> None:
    server.routes["/a.png"] = lambda h: _reply(h, 200, PNG)
    for base in (server.base, server.base.replace("127.0.0.1", "localhost")):
        refused = await _refusal(f"{base}/a.png", FetchPolicy())
        assert refused.reason == "private_address"
    assert server.requests == []


async def test_the_switch_lets_a_local_deployment_fetch_it(server: Server) -> None:
    server.routes["/a.png"] = lambda h: _reply(h, 200, PNG, Content_Type="image/png")
    assert await fetch_image_bytes(f"{server.base}/a.png", LOCAL, 10 * MiB) == PNG
    loaded = await load_image(f"{server.base}/a.png", ImageLimits(), LOCAL)
    assert (loaded.format, loaded.width, loaded.height, loaded.data) == ("PNG", 48, 32, PNG)


async def test_the_allowlist_refuses_other_hosts_without_asking(server: Server) -> None:
    policy = FetchPolicy(allow_private_addresses=True, allowed_domains=("images.example.com",))
    assert (await _refusal(f"{server.base}/a.png", policy)).reason == "not_allowed_host"
    assert server.requests == []


async def test_the_checked_address_is_dialled_with_the_name_in_host(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name resolves once; a second answer (the metadata address) is never
    asked for, and the server still sees the name the client asked for."""
    server.routes["/a.png"] = lambda h: _reply(h, 200, PNG)
    answers = iter(["127.0.0.1", "169.254.169.254", "169.254.169.254"])
    lookups: list[str] = []

    async def resolve(self: object, host: str, port: int, **kwargs: object) -> list[tuple]:
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", resolve)
    _pretend_public(monkeypatch, "127.0.0.1")
    port = server.httpd.server_port
    data = await fetch_image_bytes(f"http://images.test:{port}/a.png", FetchPolicy(), MiB)
    assert data == PNG
    assert lookups == ["images.test"]
    assert server.requests == [("/a.png", f"images.test:{port}")]


async def test_one_private_answer_among_public_ones_is_refused(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def resolve(self: object, host: str, port: int, **kwargs: object) -> list[tuple]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port)),
        ]

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", resolve)
    _pretend_public(monkeypatch, "127.0.0.1")
    refused = await _refusal(f"http://images.test:{server.httpd.server_port}/", FetchPolicy())
    assert refused.reason == "private_address"
    assert server.requests == []


# --- redirects -----------------------------------------------------------------------------------


async def test_a_redirect_is_refused_by_default(server: Server) -> None:
    server.routes["/a.png"] = lambda h: _reply(h, 200, PNG)
    server.routes["/moved"] = lambda h: _reply(h, 302, b"", Location="/a.png")
    assert (await _refusal(f"{server.base}/moved", LOCAL)).reason == "redirect"
    assert [path for path, _ in server.requests] == ["/moved"]


async def test_redirects_are_followed_when_on(server: Server) -> None:
    server.routes["/a.png"] = lambda h: _reply(h, 200, PNG)
    server.routes["/moved"] = lambda h: _reply(h, 301, b"", Location="/again")
    server.routes["/again"] = lambda h: _reply(h, 307, b"", Location=f"{server.base}/a.png")
    policy = FetchPolicy(allow_private_addresses=True, follow_redirects=True)
    assert await fetch_image_bytes(f"{server.base}/moved", policy, MiB) == PNG


async def test_redirects_past_the_limit_are_refused(server: Server) -> None:
    server.routes["/loop"] = lambda h: _reply(h, 302, b"", Location="/loop")
    policy = FetchPolicy(allow_private_addresses=True, follow_redirects=True, max_redirects=2)
    assert (await _refusal(f"{server.base}/loop", policy)).reason == "redirect"
    assert len(server.requests) == 3


async def test_a_redirect_to_a_private_address_is_refused_even_with_redirects_on(
    server: Server, second_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first hop counts as public; its redirect to another (private) address is checked again
    from scratch and refused before that server is asked."""
    second_server.routes["/secret.png"] = lambda h: _reply(h, 200, PNG)
    target = f"{second_server.base}/secret.png"
    server.routes["/moved"] = lambda h: _reply(h, 302, b"", Location=target)
    _pretend_public(monkeypatch, "127.0.0.1")
    policy = FetchPolicy(follow_redirects=True)
    assert (await _refusal(f"{server.base}/moved", policy)).reason == "private_address"
    assert [path for path, _ in server.requests] == ["/moved"]
    assert second_server.requests == []


async def test_a_redirect_to_another_scheme_is_refused(server: Server) -> None:
    server.routes["/moved"] = lambda h: _reply(h, 302, b"", Location="file:///etc/passwd")
    policy = FetchPolicy(allow_private_addresses=True, follow_redirects=True)
    assert (await _refusal(f"{server.base}/moved", policy)).reason == "url_scheme"


# --- status, timeouts, size ----------------------------------------------------------------------


async def test_an_error_status_is_refused_without_the_upstreams_text(server: Server) -> None:
    refused = await _refusal(f"{server.base}/missing.png", LOCAL)
    assert refused.reason == "http_status"
    assert "secret" not in refused.message and "404" not in refused.message


async def test_a_closed_port_is_a_connect_refusal() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connecting is refused
        refused = await _refusal(f"http://127.0.0.1:{port}/a.png", LOCAL)
    assert refused.reason == "connect"


async def test_a_slow_server_hits_the_read_timeout(server: Server) -> None:
    release = threading.Event()

    def slow(handler: BaseHTTPRequestHandler) -> None:
        release.wait(10)
        with contextlib.suppress(OSError):  # the client has long gone
            _reply(handler, 200, PNG)

    server.routes["/slow.png"] = slow
    policy = FetchPolicy(allow_private_addresses=True, read_timeout_s=0.3)
    started = time.monotonic()
    try:
        refused = await _refusal(f"{server.base}/slow.png", policy)
    finally:
        release.set()
    assert refused.reason == "timeout"
    assert time.monotonic() - started < 2


async def test_a_server_dripping_bytes_hits_the_total_timeout(server: Server) -> None:
    def drip(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(PNG)))
        handler.end_headers()
        try:
            for byte in PNG:
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                time.sleep(0.05)  # well inside the read timeout, every time
        except OSError:
            pass

    server.routes["/drip.png"] = drip
    policy = FetchPolicy(allow_private_addresses=True, read_timeout_s=1.0, total_timeout_s=0.5)
    started = time.monotonic()
    assert (await _refusal(f"{server.base}/drip.png", policy)).reason == "timeout"
    assert time.monotonic() - started < 2


async def test_an_oversize_body_stops_at_the_cap(server: Server) -> None:
    total, chunk = 256 * MiB, b"\0" * (64 * 1024)

    def endless(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")  # no Content-Length to go by
        handler.end_headers()
        try:
            while server.sent < total:
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                server.sent += len(chunk)
            handler.wfile.write(b"0\r\n\r\n")
        except OSError:
            server.stopped_early.set()

    server.routes["/big.png"] = endless
    refused = await _refusal(f"{server.base}/big.png", LOCAL, max_bytes=MiB)
    assert refused.reason == "too_many_bytes"
    assert server.stopped_early.wait(10), "the server sent the whole body"
    assert server.sent < 32 * MiB  # the 1 MiB cap plus what the socket buffers held


async def test_a_content_length_over_the_cap_is_refused_before_reading(server: Server) -> None:
    release = threading.Event()

    def promise(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(100 * MiB))
        handler.end_headers()
        handler.wfile.flush()
        release.wait(10)  # the body never comes: a client that read it would time out

    server.routes["/huge.png"] = promise
    policy = FetchPolicy(allow_private_addresses=True, read_timeout_s=5.0)
    started = time.monotonic()
    try:
        refused = await _refusal(f"{server.base}/huge.png", policy, max_bytes=MiB)
    finally:
        release.set()
    assert refused.reason == "too_many_bytes"
    assert time.monotonic() - started < 1


async def test_a_fetched_non_image_is_refused_by_the_decoder(server: Server) -> None:
    server.routes["/page.html"] = lambda h: _reply(h, 200, b"<html>hello</html>")
    with pytest.raises(ImageRefused) as caught:
        await load_image(f"{server.base}/page.html", ImageLimits(), LOCAL)
    assert caught.value.reason == "format"


# --- TLS -----------------------------------------------------------------------------------------


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[Server, ssl.SSLContext]]:
    """An HTTPS server whose certificate names only `images.test`, and a client context that
    trusts it (and nothing else)."""
    cert, key = _self_signed("images.test", tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    served = Server()
    served.start(tls=context)
    client = ssl.create_default_context(cafile=str(cert))
    yield served, client
    served.stop()


async def test_https_dials_the_address_but_verifies_the_name(
    tls_server: tuple[Server, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, client_context = tls_server
    server.routes["/a.png"] = lambda h: _reply(h, 200, PNG)
    monkeypatch.setattr(fetch, "_tls_context", lambda: client_context)

    async def resolve(self: object, host: str, port: int, **kwargs: object) -> list[tuple]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", resolve)
    port = server.httpd.server_port
    assert await fetch_image_bytes(f"https://images.test:{port}/a.png", LOCAL, MiB) == PNG
    assert server.requests == [("/a.png", f"images.test:{port}")]
    # The same server by its address: the certificate does not name it, so TLS refuses.
    refused = await _refusal(f"https://127.0.0.1:{port}/a.png", LOCAL)
    assert refused.reason == "connect"


def _self_signed(name: str, folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
