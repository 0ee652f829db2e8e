"""Netlink event subscription on a dedicated thread, handing what matters to the proxy's loop.

pyroute2's asyncio API does not run on uvloop (pyroute2 #1335) and its sync API refuses a thread with a
running loop, so the watcher reads a plain rtnetlink socket with a selector on its own thread, parses the
datagrams (`events`) and calls `notify` there; `notify` is expected to hop to the loop with
`call_soon_threadsafe`. The proxy's loop never blocks on netlink.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import threading
from collections.abc import Callable

from . import events

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
# Large enough for a burst of pod veth churn; an overflow (ENOBUFS) is still handled: see _drain.
RECEIVE_BUFFER = 4 * 1024 * 1024


class OverflowEvent:
    """The kernel dropped notifications (socket buffer full): anything may have changed."""

    def __str__(self) -> str:
        return "netlink notifications lost (socket buffer overflow)"


class NetlinkWatcher:
    """Reads link and address notifications until `stop()`; `notify(event)` runs on the watcher thread."""

    def __init__(self, notify: Callable[[events.Event | OverflowEvent], None]) -> None:
        self._notify = notify
        self._socket: socket.socket | None = None
        self._wakeup_read, self._wakeup_write = -1, -1
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Subscribes now (events from here on are seen), then reads on a daemon thread."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            groups = events.RTMGRP_LINK | events.RTMGRP_IPV4_IFADDR | events.RTMGRP_IPV6_IFADDR
            sock.bind((0, groups))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self._wakeup_read, self._wakeup_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name="vip-netlink-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        if self._thread is not None:
            os.write(self._wakeup_write, b"x")
            self._thread.join(timeout)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        for fd in (self._wakeup_read, self._wakeup_write):
            if fd >= 0:
                os.close(fd)
        self._wakeup_read, self._wakeup_write = -1, -1

    def _run(self) -> None:
        assert self._socket is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._socket, selectors.EVENT_READ)
            selector.register(self._wakeup_read, selectors.EVENT_READ)
            while True:
                ready = selector.select()
                if any(key.fd == self._wakeup_read for key, _ in ready):
                    return
                try:
                    self._drain(self._socket)
                except Exception:
                    # A bug in a handler must not end the watcher: the periodic pass still runs.
                    log.exception("netlink watcher: handling an event failed")

    def _drain(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno == errno.ENOBUFS:
                    self._notify(OverflowEvent())
                    continue
                raise
            for event in events.parse(data):
                self._notify(event)
