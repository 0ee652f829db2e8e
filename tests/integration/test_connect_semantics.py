"""What no real gateway lets us observe, shown with scripted CONNECT servers on loopback:

- a server that withholds its answer proves no client byte is forwarded before the 2xx (Envoy
  CVE-2025-64763) and that bytes the client sent meanwhile arrive, in order, after it;
- a server that carries half-close proves a client FIN reaches the upstream and the full reply still
  comes back, and an upstream FIN reaches the client while the client keeps sending;
- a server that speaks right behind its 200 proves those bytes reach the client;
- a PROXY v2 listener proves the legacy header's addresses.
The real Envoy gateway can do none of these (it ends the tunnel on a client FIN and answers at once).
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import subprocess
import time
from collections.abc import Callable

from apiproxy.proxy_protocol import SIGNATURE

OK = b"HTTP/1.1 200 Connection established\r\n\r\n"


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def test_no_client_byte_before_the_answer_and_all_of_them_after(
    serve_through_proxy: Callable[..., int],
) -> None:
    seen_before_answer: list[bytes] = []
    seen_after_answer: list[bytes] = []
    answered = asyncio.Event()

    async def withholding(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        assert head.startswith(b"CONNECT ")
        # Hold the answer while the client talks; anything readable now was forwarded too early.
        try:
            early = await asyncio.wait_for(reader.read(65536), 0.8)
            seen_before_answer.append(early)
        except TimeoutError:
            pass
        writer.write(OK)
        answered.set()
        data = b""
        while len(data) < 3 * 1000:
            chunk = await reader.read(65536)
            if not chunk:
                break
            data += chunk
        seen_after_answer.append(data)
        writer.write(b"echo:" + data)
        await writer.drain()
        writer.close()

    port = serve_through_proxy(withholding)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for part in (b"a" * 1000, b"b" * 1000, b"c" * 1000):
            sock.sendall(part)
            time.sleep(0.1)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert seen_before_answer == []
    assert seen_after_answer == [b"a" * 1000 + b"b" * 1000 + b"c" * 1000]
    assert reply == b"echo:" + seen_after_answer[0]


def test_client_fin_reaches_the_upstream_and_the_full_reply_comes_back(
    serve_through_proxy: Callable[..., int],
) -> None:
    async def half_close_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(OK)
        request = await reader.read(-1)  # until the client's FIN
        reply = f"got {len(request)} bytes; ".encode() + bytes(reversed(request)) * 100
        writer.write(reply)
        await writer.drain()
        writer.close()

    port = serve_through_proxy(half_close_server)
    request = b"0123456789" * 1000
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply == b"got 10000 bytes; " + bytes(reversed(request)) * 100


def test_upstream_fin_reaches_the_client_which_can_still_send(
    serve_through_proxy: Callable[..., int],
) -> None:
    received_after_fin: list[bytes] = []

    async def closes_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(OK + b"bye")
        writer.write_eof()  # our direction is done; theirs is not
        received_after_fin.append(await reader.read(-1))
        writer.close()

    port = serve_through_proxy(closes_first)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"hi, ")  # nothing is dialled before the client's first byte
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert data == b"bye"  # then EOF, while our side stays open
        sock.sendall(b"still talking")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""
    deadline = time.monotonic() + 5
    while not received_after_fin and time.monotonic() < deadline:
        time.sleep(0.01)
    assert received_after_fin == [b"hi, still talking"]


def test_bytes_behind_the_200_in_the_same_segment_reach_the_client(
    serve_through_proxy: Callable[..., int],
) -> None:
    async def eager(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(OK + b"server speaks first")
        await writer.drain()
        await reader.read(-1)
        writer.close()

    port = serve_through_proxy(eager, "--first-byte-timeout", "0s")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        data = b""
        while len(data) < len(b"server speaks first"):
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
    assert data == b"server speaks first"


def test_the_connect_request_is_exactly_the_configured_one(serve_through_proxy: Callable[..., int]) -> None:
    heads: list[bytes] = []

    async def recorder(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await read_head(reader))
        writer.write(OK)
        await reader.read(-1)
        writer.close()

    port = serve_through_proxy(recorder, "--connect-authority", "api.bar.foo.internal.example.com.:443")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"CONNECT evil.example:443 HTTP/1.1\r\nX-Gardener-Destination: evil\r\n\r\n")
        time.sleep(0.2)
    assert heads == [
        b"CONNECT api.bar.foo.internal.example.com.:443 HTTP/1.1\r\n"
        b"Host: api.bar.foo.internal.example.com.:443\r\n"
        b"X-Gardener-Destination: outbound|443||kube-apiserver.shoot--foo--bar.svc.cluster.local\r\n\r\n"
    ]


def test_proxy_protocol_v2_mode_sends_client_and_listen_addresses(
    serve_through_proxy: Callable[..., int],
) -> None:
    headers: list[bytes] = []

    async def proxy_v2_listener(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fixed = await reader.readexactly(16)
        body = await reader.readexactly(struct.unpack("!H", fixed[14:16])[0])
        headers.append(fixed + body)
        writer.write(b"hello from the gateway")
        await writer.drain()
        await reader.read(-1)
        writer.close()

    port = serve_through_proxy(proxy_v2_listener, "--upstream-protocol", "proxy-protocol-v2")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"hello from the client")  # nothing is dialled before the client's first byte
        client_port = sock.getsockname()[1]
        assert sock.recv(100) == b"hello from the gateway"
    header = headers[0]
    assert header[:12] == SIGNATURE and header[12:14] == b"\x21\x11"
    assert header[16:20] == socket.inet_aton("127.0.0.1") == header[20:24]
    assert struct.unpack("!HH", header[24:28]) == (client_port, port)


def _keepalive_timer(local_port: int, gateway_port: int) -> str | None:
    """The keepalive timer `ss` shows on the proxy's connection from `local_port` to the gateway, if any."""
    shown = subprocess.run(
        ["ss", "-tnoH", "state", "established", f"( sport = :{local_port} and dport = :{gateway_port} )"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    match = re.search(r"timer:\(keepalive,([^,]+),", shown)
    return match.group(1) if match else None


def test_the_gateway_connection_gets_the_configured_keepalive(
    serve_through_proxy: Callable[..., int],
) -> None:
    """Envoy's upstream tcp_keepalive. apiproxy sets it from a sweep within a second of the dial (see
    tunnel.KEEPALIVE_DELAY), so the test waits for it rather than expecting it at once."""
    proxy_ends: list[tuple[int, int]] = []  # (the proxy's port, the gateway's port) of each connection

    async def holding(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        proxy_ends.append((writer.get_extra_info("peername")[1], writer.get_extra_info("sockname")[1]))
        writer.write(OK)
        await reader.read(-1)
        writer.close()

    port = serve_through_proxy(holding, "--tcp-keepalive-time", "30s", "--tcp-keepalive-interval", "7s")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"hello")
        deadline = time.monotonic() + 5
        timer = None
        while time.monotonic() < deadline and timer is None:
            time.sleep(0.1)
            if proxy_ends:
                timer = _keepalive_timer(*proxy_ends[0])
    assert timer is not None, "no keepalive on the gateway connection after 5 s"
    # The kernel shows the time left until the first probe: at most the configured idle time.
    assert timer.endswith("sec") and 0 < int(timer.removesuffix("sec")) <= 30, timer
