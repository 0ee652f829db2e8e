"""The data path end to end: TLS client -> `apiproxy run` -> real Envoy seed gateway -> TLS backend.

The gateway is configured like Gardener's Istio gateway (header regex, cluster_header, 301 otherwise).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import time

import pytest

from lab.gateway import DESTINATION

from .conftest import KUBE_DESTINATION, RESET_DESTINATION, StartProxy, World

pytestmark = pytest.mark.envoy


def https_get(world: World, port: int, path: str, server_hostname: str = "kubernetes.default.svc") -> bytes:
    context = world.certs.client_context()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {server_hostname}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    return answer


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the peer sends until it closes; and how long that took."""
    sock.settimeout(timeout)
    started = time.monotonic()
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic() - started


def test_tls_client_verifies_the_backend_certificate_through_the_tunnel(
    world: World, start_proxy: StartProxy
) -> None:
    proxy = start_proxy(destination=KUBE_DESTINATION)
    answer = https_get(world, proxy.port, "/version")
    assert answer.startswith(b"HTTP/1.1 200")
    assert b'"gitVersion": "v1.33.0-apiproxy-lab"' in answer
    # The certificate is the backend's, untouched: a name it was not issued for fails verification.
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(world, proxy.port, "/version", server_hostname="not-the-apiserver.example")


def test_64_mib_each_way_arrive_intact(world: World, start_proxy: StartProxy) -> None:
    proxy = start_proxy()
    size = 64 * 1024 * 1024
    block = os.urandom(1 << 20)

    async def transfer() -> tuple[str, str, float]:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            proxy.port,
            ssl=world.certs.client_context(),
            server_hostname="kubernetes.default.svc",
        )
        sent, received = hashlib.sha256(), hashlib.sha256()
        started = time.monotonic()

        async def send() -> None:
            for _ in range(size // len(block)):
                sent.update(block)
                writer.write(block)
                await writer.drain()

        async def receive() -> None:
            left = size
            while left:
                chunk = await reader.read(min(left, 1 << 20))
                assert chunk, f"tunnel closed with {left} bytes missing"
                received.update(chunk)
                left -= len(chunk)

        await asyncio.wait_for(asyncio.gather(send(), receive()), 120)
        elapsed = time.monotonic() - started
        writer.close()
        return sent.hexdigest(), received.hexdigest(), elapsed

    sent, received, elapsed = asyncio.run(transfer())
    assert sent == received
    print(
        f"64 MiB each way through TLS + apiproxy + Envoy gateway in {elapsed:.2f}s ({2 * 64 / elapsed:.0f} MiB/s total)"
    )


def test_client_half_close_ends_cleanly(world: World, start_proxy: StartProxy) -> None:
    """The Envoy gateway ends the tunnel on the client's FIN (it does not carry half-close over
    HTTP/1.1 CONNECT); the client sees an orderly close, not a reset, and promptly."""
    proxy = start_proxy()
    with proxy.connect() as sock:
        sock.sendall(b"plain bytes, not even TLS")
        sock.shutdown(socket.SHUT_WR)
        _, elapsed = read_until_closed(sock, timeout=10)
    assert elapsed < 5


def test_wrong_destination_closes_the_client_promptly(world: World, start_proxy: StartProxy) -> None:
    proxy = start_proxy(destination="outbound|443||not-allowed.example")
    with proxy.connect() as sock:
        sock.sendall(b"\x16\x03\x01 client hello that must never reach anyone")
        data, elapsed = read_until_closed(sock, timeout=10)
    assert data == b""  # the gateway's 301 is for apiproxy, not for the client
    assert elapsed < 2
    assert "gateway answered the CONNECT with 301" in proxy.process.stderr()


def test_backend_reset_closes_the_client(world: World, start_proxy: StartProxy) -> None:
    proxy = start_proxy(destination=RESET_DESTINATION)
    with proxy.connect() as sock:
        sock.sendall(b"hello")
        try:
            data, elapsed = read_until_closed(sock, timeout=10)
        except ConnectionResetError:
            data, elapsed = b"", 0.0
    assert data == b""
    assert elapsed < 5


@pytest.mark.parametrize(
    "headers", [["Reversed-VPN"], ["X-Gardener-Destination", "Reversed-VPN"]], ids=["legacy", "both"]
)
def test_legacy_reversed_vpn_header(world: World, start_proxy: StartProxy, headers: list[str]) -> None:
    """The legacy port 8132 routed on `Reversed-VPN`; the lab gateway has that route too."""
    extra = [arg for name in headers for arg in ("--destination-header", name)]
    proxy = start_proxy(*extra, destination=KUBE_DESTINATION)
    assert https_get(world, proxy.port, "/api").startswith(b"HTTP/1.1 200")


def test_an_unknown_header_name_is_not_routed(world: World, start_proxy: StartProxy) -> None:
    """Proves the legacy test above depends on the header: the same value under another name gets 301."""
    proxy = start_proxy("--destination-header", "X-Something-Else", destination=DESTINATION)
    with proxy.connect() as sock:
        sock.sendall(b"x")
        data, _ = read_until_closed(sock, timeout=10)
    assert data == b""
    assert "301" in proxy.process.stderr()
