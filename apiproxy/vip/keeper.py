"""Keeping the VIP in place: a pass at once when a kernel event says the VIP or its link changed, a pass
every sync interval as the safety net, a failed pass retried after 1 s, doubling up to the interval.

One plain blocking loop (`select` on the event socket and a wake-up pipe, its timeout the timer), no event
loop library: the sidecar runs it on its main thread, `service` on one thread beside the proxy's loop.
Netlink calls block for microseconds; a pass takes about a millisecond.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import time
from collections import deque
from collections.abc import Callable

from ..config import VIPConfig
from . import events
from .netlink import KernelNetlink, Netlink
from .reconcile import PassReport, Reconciler, Rules
from .watch import EventSocket, OverflowEvent

log = logging.getLogger(__name__)

FIRST_RETRY = 1.0

Notice = events.Event | OverflowEvent


def _iptables(config: VIPConfig) -> Callable[[], Rules] | None:
    if not config.setup_iptables:
        return None

    def rules() -> Rules:
        from .iptables import IPTables  # subprocess and shutil only when asked for

        return IPTables(config.address, config.port)

    return rules


class Keeper:
    """Passes for one VIP. `on_pass(trigger, report)` follows every pass and `on_lost(notice)` reports the
    VIP gone before its repair, both on the thread running the keeper; `notify()` and `stop()` may be
    called from any thread (and from a signal handler)."""

    def __init__(
        self,
        config: VIPConfig,
        netlink_factory: Callable[[], Netlink] = KernelNetlink,
        *,
        on_pass: Callable[[str, PassReport], None] | None = None,
        on_lost: Callable[[Notice], None] | None = None,
    ) -> None:
        self.config = config
        self.reconciler = Reconciler(config.address, config.interface, netlink_factory, _iptables(config))
        self.on_pass = on_pass
        self.on_lost = on_lost
        self.link_index: int | None = None
        self._events: EventSocket | None = None
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = False
        self._injected: deque[Notice] = deque()

    def subscribe(self) -> bool:
        """Listen to kernel events from now on (call before the first pass, so no change is missed).
        False, with a warning, where netlink events cannot be had: then the timer alone keeps the VIP."""
        try:
            self._events = EventSocket()
        except OSError as error:
            log.warning("netlink events unavailable (%s): the VIP is checked every %gs only",
                        error, self.config.sync_interval)  # fmt: skip
            return False
        return True

    def run_pass(self, trigger: str) -> PassReport:
        report = self.reconciler.sync()
        if report.link_index is not None:
            self.link_index = report.link_index
        if self.on_pass is not None:
            self.on_pass(trigger, report)
        return report

    def run(self, ok: bool) -> None:
        """Keep the VIP until `stop()`. `ok`: whether the pass before (the initial one) succeeded."""
        retry = FIRST_RETRY
        while not self._stopping:
            delay = self.config.sync_interval if ok else min(retry, self.config.sync_interval)
            retry = FIRST_RETRY if ok else min(retry * 2, self.config.sync_interval)
            trigger = self._wait(time.monotonic() + delay)
            if trigger is None:
                return
            ok = self.run_pass(trigger).error is None

    def _wait(self, deadline: float) -> str | None:
        """Until an event calls for a pass ("event"), the deadline ("periodic"), or `stop()` (None)."""
        watched = [self._wake_read] + ([self._events.fileno()] if self._events is not None else [])
        while (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(watched, [], [], remaining)
            notices: list[Notice] = []
            if self._wake_read in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_read, 4096)
                while self._injected:
                    notices.append(self._injected.popleft())
            if self._stopping:
                return None
            if self._events is not None and self._events.fileno() in ready:
                notices += self._events.drain()
            if self._calls_for_a_pass(notices):
                return "event"
        return "periodic"

    def _calls_for_a_pass(self, notices: list[Notice]) -> bool:
        verdicts = []
        for notice in notices:
            if isinstance(notice, OverflowEvent):
                verdict = events.Verdict.CHECK
            else:
                verdict = events.assess(notice, self.config.address, self.config.interface, self.link_index)
            if verdict is events.Verdict.LOST and self.on_lost is not None:
                self.on_lost(notice)
            verdicts.append(verdict)
        return any(verdict is not events.Verdict.IGNORE for verdict in verdicts)

    def notify(self, notice: Notice) -> None:
        """Hand in a notice as if the kernel had sent it (the tests' way in)."""
        self._injected.append(notice)
        self._poke()

    def stop(self) -> None:
        """Make `run()` return (at once, or after the pass in progress)."""
        self._stopping = True
        self._poke()

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError):  # the pipe is full: a wake-up is pending anyway
            os.write(self._wake_write, b"x")

    def close(self) -> None:
        """Release the netlink handle, the event socket and the pipe (after `run()` has returned)."""
        self.reconciler.close()
        if self._events is not None:
            self._events.close()
            self._events = None
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)
