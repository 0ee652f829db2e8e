"""The kernel's link and address notifications, read from a plain rtnetlink socket subscribed to them.

Non-blocking and without a thread of its own: `keeper` waits for it in its select loop with everything
else and calls `drain()` when it is readable. Parsing is `events`' job.
"""

from __future__ import annotations

import errno
import socket

from . import events

NETLINK_ROUTE = 0
# Large enough for a burst of pod veth churn; an overflow (ENOBUFS) is still handled: see drain().
RECEIVE_BUFFER = 4 * 1024 * 1024


class OverflowEvent:
    """The kernel dropped notifications (socket buffer full): anything may have changed."""

    def __str__(self) -> str:
        return "netlink notifications lost (socket buffer overflow)"


class EventSocket:
    """Subscribed from construction on: events from then on are seen. Close it when done."""

    def __init__(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((0, events.RTMGRP_LINK | events.RTMGRP_IPV4_IFADDR | events.RTMGRP_IPV6_IFADDR))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._socket = sock

    def fileno(self) -> int:
        return self._socket.fileno()

    def drain(self) -> list[events.Event | OverflowEvent]:
        """Everything queued now; `OverflowEvent` where the kernel had to drop some."""
        found: list[events.Event | OverflowEvent] = []
        while True:
            try:
                data = self._socket.recv(65536)
            except BlockingIOError:
                return found
            except OSError as error:
                if error.errno != errno.ENOBUFS:
                    raise
                found.append(OverflowEvent())
                continue
            found.extend(events.parse(data))

    def close(self) -> None:
        self._socket.close()
