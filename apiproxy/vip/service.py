"""The VIP reconciler as a service of `apiproxy run` (and of the daemon sidecar).

Passes run on one worker thread (netlink and iptables calls block; a pyroute2 handle belongs to one
thread); the netlink watcher thread wakes the pass task on the loop when the VIP or its link changes;
the periodic pass is the safety net. A failing pass is logged and retried with a back-off, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..config import VIPConfig
from . import events
from .iptables import IPTables
from .netlink import Netlink, PyrouteNetlink
from .reconcile import PassReport, Reconciler, Rules
from .watch import NetlinkWatcher, OverflowEvent

log = logging.getLogger(__name__)

# After a failed pass: retry after 1 s, doubling up to the sync interval.
FIRST_RETRY = 1.0


class VIPService:
    def __init__(self, config: VIPConfig, *, netlink_factory: Callable[[], Netlink] = PyrouteNetlink,
                 watch: bool = True) -> None:  # fmt: skip
        self.config = config
        # Called on the loop with "initial", "event" or "periodic" after each pass that changed something.
        self.on_repair: Callable[[str], None] | None = None
        rules: Callable[[], Rules] | None = None
        if config.setup_iptables:
            rules = lambda: IPTables(config.address, config.port)  # noqa: E731
        self._reconciler = Reconciler(config.address, config.interface, netlink_factory, rules)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vip-netlink")
        self._watch = watch
        self._watcher: NetlinkWatcher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._present = False
        # Read by the watcher thread: an int assignment is atomic.
        self._link_index: int | None = None
        self.passes = 0
        self.failed_passes = 0

    @property
    def present(self) -> bool:
        """The VIP is on its interface now (as of the last pass or kernel event)."""
        return self._present

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._watch:
            # Subscribe before the first pass: a change right after it is not missed.
            watcher = NetlinkWatcher(self._from_watcher_thread)
            try:
                watcher.start()
                self._watcher = watcher
            except OSError as error:
                log.warning("netlink events unavailable (%s): the VIP is checked every %gs only",
                            error, self.config.sync_interval)  # fmt: skip
        ok = await self.run_pass("initial")
        self._task = self._loop.create_task(self._keep(ok), name="vip-reconciler")

    async def run_pass(self, trigger: str) -> bool:
        """One pass on the worker thread. Returns whether it completed."""
        loop = asyncio.get_running_loop()
        report: PassReport = await loop.run_in_executor(self._executor, self._reconciler.sync)
        self.passes += 1
        self._present = report.present
        if report.link_index is not None:
            self._link_index = report.link_index
        address, interface = self.config.address, self.config.interface
        if report.changes:
            log.info("VIP %s on %s (%s pass): %s", address, interface, trigger, "; ".join(report.changes))
            if self.on_repair is not None:
                self.on_repair(trigger)
        if report.error is not None:
            self.failed_passes += 1
            log.error("VIP %s on %s (%s pass) failed: %s", address, interface, trigger, report.error)
            return False
        if not report.changes:
            log.debug("VIP %s on %s (%s pass): in place", address, interface, trigger)
        return True

    async def _keep(self, ok: bool) -> None:
        retry = FIRST_RETRY
        while True:
            delay = self.config.sync_interval if ok else min(retry, self.config.sync_interval)
            retry = FIRST_RETRY if ok else min(retry * 2, self.config.sync_interval)
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
                trigger = "event"
            except TimeoutError:
                trigger = "periodic"
            # Events arriving during the pass set the flag again: one more pass follows at once.
            self._wake.clear()
            ok = await self.run_pass(trigger)

    def _from_watcher_thread(self, event: events.Event | OverflowEvent) -> None:
        if isinstance(event, OverflowEvent):
            verdict = events.Verdict.CHECK
        else:
            verdict = events.assess(event, self.config.address, self.config.interface, self._link_index)
        if verdict is not events.Verdict.IGNORE and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._loop.call_soon_threadsafe(self._on_verdict, verdict, event)

    def _on_verdict(self, verdict: events.Verdict, event: events.Event | OverflowEvent) -> None:
        if verdict is events.Verdict.LOST and self._present:
            self._present = False
            log.warning(
                "VIP %s lost from %s (%s): repairing", self.config.address, self.config.interface, event
            )
        self._wake.set()

    async def stop(self) -> None:
        """Stop watching and passing; with cleanup, remove the VIP, a link we created, and the rules.

        Raises `CleanupError` if the cleanup failed (after closing everything)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.stop)
            self._watcher = None
        loop = asyncio.get_running_loop()
        try:
            if self.config.cleanup:
                self._present = False
                changes = await loop.run_in_executor(self._executor, self._reconciler.cleanup)
                log.info("VIP %s cleaned up from %s: %s", self.config.address, self.config.interface,
                         "; ".join(changes) or "nothing to remove")  # fmt: skip
        finally:
            await loop.run_in_executor(self._executor, self._reconciler.close)
            self._executor.shutdown(wait=False)
