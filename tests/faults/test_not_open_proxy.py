"""Case 10: apiproxy is not an open proxy. Whatever a client sends -- a CONNECT of its own to another
target, a forged destination header, a smuggled second request -- is tunnelled verbatim, as payload, to
the configured destination. The fault peer in front of the real Envoy only records the bytes apiproxy
sends the gateway; the tunnel itself is Envoy's, to the echo backend of the configured destination."""

from __future__ import annotations

import socket

import pytest

from apiproxy.handshake import build_connect_request
from lab.gateway import DESTINATION

from .conftest import Lab
from .lab import ReadyWatch, expect_closed, recv_exactly, settled

ATTACKS = {
    "connect_elsewhere": b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n"
    b"X-Gardener-Destination: outbound|443||kube-apiserver.shoot--other--x.svc.cluster.local\r\n\r\n",
    "absolute_get": b"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
    "smuggled_after_blank_line": b"\r\n\r\nCONNECT 10.0.0.1:22 HTTP/1.1\r\nHost: 10.0.0.1:22\r\n\r\n",
    "proxy_protocol_header": b"PROXY TCP4 10.9.9.9 10.0.0.1 1234 443\r\n" + b"\x16\x03\x01\x00\x05hello",
}


@pytest.mark.envoy
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_client_bytes_are_payload(lab: Lab, attack: str) -> None:
    sent = ATTACKS[attack]
    expected_request = build_connect_request("127.0.0.1:443", [("X-Gardener-Destination", DESTINATION)])
    heads_before = len(lab.fault.heads)
    echoed_before = lab.echo.server.connections
    before = lab.proxy.closed()
    with ReadyWatch(lab.proxy) as ready:
        with socket.create_connection(lab.proxy.address, timeout=10) as sock:
            sock.sendall(sent)
            back = recv_exactly(sock, len(sent))
        lab.held.exchange()
    # What reached the gateway first is apiproxy's own CONNECT, byte for byte, and nothing of the client's.
    head = lab.fault.heads[heads_before]
    assert head == expected_request, head
    # The client's bytes went through the tunnel to the configured destination's backend, which echoed them.
    assert back == sent
    assert lab.echo.server.connections == echoed_before + 1
    expect_closed(lab.proxy, before, completed=1)
    ready.check()
    settled(lab.proxy, lab.fds, active=1)
