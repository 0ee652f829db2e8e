"""The start-up probe of `apiproxy tunnel`: one CONNECT through the seed gateway, made with the tunnels'
own dialer and request bytes, so a wrong gateway address or destination is reported once, in words a
developer can act on, before the tunnel says it is ready.

`explain_upstream_error` and `explain_answer` turn a failure into that message (pure, unit-tested);
`probe_gateway` is the thin I/O around them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from .handshake import ConnectAnswer, ConnectHandshake, HandshakeError
from .reasons import PROBE_HINTS
from .upstream import Dialer, UpstreamError, format_address

# Failure kinds (ProbeFailed.kind); those of the dialer's reasons are in reasons.PROBE_HINTS.
UNREACHABLE = "unreachable"
NOT_ALLOWED = "destination_not_allowed"
NO_SUCH_SHOOT = "no_such_shoot"
REJECTED = "rejected"
NOT_A_GATEWAY = "not_a_gateway"


class ProbeFailed(Exception):
    """The probe CONNECT failed. `str()` is the message for the user; `kind` says which failure."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class ProbeResult:
    gateway_address: str
    status: int
    seconds: float


def explain_upstream_error(error: UpstreamError) -> ProbeFailed:
    """No TCP connection to the gateway (the dialer's reasons)."""
    kind, hint = PROBE_HINTS.get(error.reason, (UNREACHABLE, ""))
    return ProbeFailed(kind, f"{error}{hint}")


def explain_answer(answer: ConnectAnswer, destination: str) -> ProbeFailed | None:
    """None when the gateway accepted the CONNECT, else why it did not."""
    if answer.accepted:
        return None
    reason = answer.reason.decode("ascii", "replace")
    answered = f"{answer.status} {reason}".rstrip()
    if 300 <= answer.status < 400:
        # The seed gateway redirects every request whose destination header does not match its pattern.
        return ProbeFailed(
            NOT_ALLOWED,
            f"the gateway does not allow destination {destination!r} (it answered {answered}); "
            "check --shoot-namespace or --destination",
        )
    if answer.status == 503:
        # The destination matched the gateway's pattern, but it has no reachable cluster of that name.
        return ProbeFailed(
            NO_SUCH_SHOOT,
            f"no such shoot behind this gateway: destination {destination!r} is allowed but unknown or "
            f"unreachable (it answered {answered}); check --shoot-namespace, and --istio-tls-termination "
            "for seeds that terminate TLS in Istio",
        )
    return ProbeFailed(
        REJECTED, f"the gateway refused the CONNECT to destination {destination!r} (it answered {answered})"
    )


def explain_handshake_error(error: HandshakeError) -> ProbeFailed:
    return ProbeFailed(
        NOT_A_GATEWAY,
        f"{error}; is --upstream the seed gateway's CONNECT port (8443)?",
    )


class _AnswerReader(asyncio.Protocol):
    """Reads the gateway's answer to the probe into a future."""

    def __init__(self, answer: asyncio.Future[ConnectAnswer]) -> None:
        self.answer = answer
        self.handshake = ConnectHandshake()

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        try:
            answer = self.handshake.feed(data)
        except HandshakeError as error:
            self.answer.set_exception(error)
            return
        if answer is not None:
            self.answer.set_result(answer)

    received = data_received  # chunks read before the hand-over (Connecting.replay)

    def eof_received(self) -> bool:
        self.connection_lost(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            try:
                self.handshake.feed_eof()
            except HandshakeError as error:
                self.answer.set_exception(error)


async def probe_gateway(
    dialer: Dialer, connect_request: bytes, answer_timeout: float, destination: str
) -> ProbeResult:
    """Connect to the gateway, send the CONNECT, read the answer, close. Raises ProbeFailed."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    answer_future: asyncio.Future[ConnectAnswer] = loop.create_future()
    try:
        connection, address = await dialer.connect()
    except UpstreamError as error:
        raise explain_upstream_error(error) from None
    reader = _AnswerReader(answer_future)
    transport = connection.hand_over(reader)
    connection.replay(reader)
    try:
        transport.write(connect_request)
        try:
            async with asyncio.timeout(answer_timeout):
                answer = await answer_future
        except TimeoutError:
            raise ProbeFailed(
                NOT_A_GATEWAY,
                f"gateway {format_address(address)} sent no CONNECT answer within {answer_timeout:g}s; "
                "is --upstream the seed gateway's CONNECT port (8443)?",
            ) from None
        except HandshakeError as error:
            raise explain_handshake_error(error) from None
    finally:
        # After a 2xx the gateway has opened a connection to the API server; our close ends it.
        transport.close()
    failure = explain_answer(answer, destination)
    if failure is not None:
        raise failure
    return ProbeResult(format_address(address), answer.status, time.monotonic() - started)
