"""Reading kernel notifications. Lost notifications (ENOBUFS) cannot be caused on demand by a real kernel
socket, so that one case drives `drain` with a scripted socket; everything else about the event socket
runs for real (here and in the namespace tests)."""

from __future__ import annotations

import errno
import ipaddress

from apiproxy.vip.events import RTM_DELADDR, AddressEvent
from apiproxy.vip.watch import EventSocket, OverflowEvent

from .test_events import address_message


class ScriptedSocket:
    def __init__(self, answers: list[bytes | OSError]) -> None:
        self.answers = answers

    def recv(self, _: int) -> bytes:
        if not self.answers:
            raise BlockingIOError(errno.EAGAIN, "no more")
        answer = self.answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer


def test_overflow_is_reported_and_reading_goes_on() -> None:
    events = EventSocket()
    events.close()
    datagram = address_message(RTM_DELADDR, 4, "240.168.102.23", 32)
    events._socket = ScriptedSocket([OSError(errno.ENOBUFS, "No buffer space available"), datagram])  # type: ignore[assignment]
    seen = events.drain()
    assert isinstance(seen[0], OverflowEvent)
    assert seen[1:] == [AddressEvent(True, 4, ipaddress.ip_address("240.168.102.23"), 32)]
