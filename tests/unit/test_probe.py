"""The start-up probe's messages (pure), and its answer timeout against a loopback server that stays silent
(real Envoy always answers, so silence needs a server of our own)."""

from __future__ import annotations

import asyncio

import pytest

from apiproxy.config import Endpoint, TunnelConfig
from apiproxy.handshake import ConnectAnswer, HandshakeError
from apiproxy.probe import (
    NO_SUCH_SHOOT,
    NOT_A_GATEWAY,
    NOT_ALLOWED,
    REJECTED,
    UNREACHABLE,
    ProbeFailed,
    explain_answer,
    explain_handshake_error,
    explain_upstream_error,
    probe_gateway,
)
from apiproxy.reasons import Reason
from apiproxy.upstream import Dialer, Resolver, UpstreamError

DESTINATION = "outbound|443||kube-apiserver.shoot--foo--bar.svc.cluster.local"


@pytest.mark.parametrize("status", [200, 204])
def test_a_2xx_is_no_failure(status: int) -> None:
    assert explain_answer(ConnectAnswer(status, b"OK", b""), DESTINATION) is None


@pytest.mark.parametrize(
    ("status", "reason", "kind", "words"),
    [
        (301, b"Moved Permanently", NOT_ALLOWED, "the gateway does not allow destination"),
        (503, b"Service Unavailable", NO_SUCH_SHOOT, "no such shoot behind this gateway"),
        (403, b"Forbidden", REJECTED, "the gateway refused the CONNECT"),
    ],
)
def test_answers_are_explained(status: int, reason: bytes, kind: str, words: str) -> None:
    failure = explain_answer(ConnectAnswer(status, reason, b""), DESTINATION)
    assert failure is not None
    assert failure.kind == kind
    assert words in str(failure)
    assert repr(DESTINATION) in str(failure)
    assert f"it answered {status} {reason.decode()}" in str(failure)


@pytest.mark.parametrize(
    ("reason", "kind", "advice"),
    [
        (Reason.DNS_FAILURE, "dns", "check the host name in --upstream"),
        (Reason.CONNECT_REFUSED, "refused", "check the port in --upstream"),
        (Reason.CONNECT_TIMEOUT, UNREACHABLE, "is the gateway reachable from here"),
        (Reason.CONNECT_ERROR, UNREACHABLE, "no route"),
    ],
)
def test_dial_failures_are_explained(reason: Reason, kind: str, advice: str) -> None:
    failure = explain_upstream_error(UpstreamError(reason, "gateway 192.0.2.1:8443: no route"))
    assert failure.kind == kind
    assert str(failure).startswith("gateway 192.0.2.1:8443: no route")
    assert advice in str(failure)


def test_protocol_errors_point_at_the_port() -> None:
    failure = explain_handshake_error(
        HandshakeError(Reason.MALFORMED_ANSWER, "gateway sent an invalid answer")
    )
    assert failure.kind == NOT_A_GATEWAY
    assert "is --upstream the seed gateway's CONNECT port (8443)?" in str(failure)


def test_a_silent_peer_times_out_with_a_message() -> None:
    async def scenario() -> ProbeFailed:
        connections: list[asyncio.StreamWriter] = []

        async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(writer)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        config = TunnelConfig(upstream=Endpoint("127.0.0.1", port))
        dialer = Dialer(config, Resolver(config.upstream, config.dns_family, config.dns_refresh))
        try:
            with pytest.raises(ProbeFailed) as failed:
                await probe_gateway(
                    dialer, b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", 0.2, DESTINATION
                )
            return failed.value
        finally:
            for writer in connections:
                writer.close()
            server.close()
            await server.wait_closed()

    failure = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert failure.kind == NOT_A_GATEWAY
    assert "sent no CONNECT answer within 0.2s" in str(failure)
