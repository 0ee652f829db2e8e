"""The VIP keeper as a service of `apiproxy run`: the keeper's blocking loop runs on a thread of its own
(netlink calls block; the proxy's loop never does), and what it finds is handed to the proxy's loop, where
`/ready` and the metrics read it. A failing pass is logged and retried with a back-off, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

from ..config import VIPConfig
from .keeper import Keeper, Notice
from .netlink import KernelNetlink, Netlink
from .reconcile import PassReport

log = logging.getLogger(__name__)


class VIPService:
    def __init__(self, config: VIPConfig, *, netlink_factory: Callable[[], Netlink] = KernelNetlink,
                 watch: bool = True) -> None:  # fmt: skip
        self.config = config
        # Called on the loop with "initial", "event" or "periodic" after each pass that changed something.
        self.on_repair: Callable[[str], None] | None = None
        self.keeper = Keeper(config, netlink_factory, on_pass=self._from_keeper_pass,
                             on_lost=self._from_keeper_lost)  # fmt: skip
        self._watch = watch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._present = False
        self.passes = 0
        self.failed_passes = 0
        # Why the VIP stays on exit despite cleanup: the other process of a listener handover serves on it.
        self.kept_for: str | None = None

    @property
    def present(self) -> bool:
        """The VIP is on its interface now (as of the last pass or kernel event)."""
        return self._present

    async def start(self) -> None:
        """The initial pass, then the keeper's loop on its thread. Returns once the initial pass is done."""
        self._loop = asyncio.get_running_loop()
        if self._watch:
            self.keeper.subscribe()  # before the first pass: a change right after it is not missed
        report = await asyncio.to_thread(self.keeper.run_pass, "initial")
        self._thread = threading.Thread(target=self.keeper.run, args=(report.error is None,),
                                        name="vip-keeper", daemon=True)  # fmt: skip
        self._thread.start()

    def _hop(self, callback: Callable[..., None], *args: object) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._loop.call_soon_threadsafe(callback, *args)

    def _from_keeper_pass(self, trigger: str, report: PassReport) -> None:
        self._hop(self._on_pass, trigger, report)

    def _from_keeper_lost(self, notice: Notice) -> None:
        self._hop(self._on_lost, notice)

    def _on_pass(self, trigger: str, report: PassReport) -> None:
        self.passes += 1
        self._present = report.present
        address, interface = self.config.address, self.config.interface
        if report.changes:
            log.info("VIP %s on %s (%s pass): %s", address, interface, trigger, "; ".join(report.changes))
            if self.on_repair is not None:
                self.on_repair(trigger)
        if report.error is not None:
            self.failed_passes += 1
            log.error("VIP %s on %s (%s pass) failed: %s", address, interface, trigger, report.error)
        elif not report.changes:
            log.debug("VIP %s on %s (%s pass): in place", address, interface, trigger)

    def _on_lost(self, notice: Notice) -> None:
        if self._present:
            self._present = False
            log.warning(
                "VIP %s lost from %s (%s): repairing", self.config.address, self.config.interface, notice
            )

    async def stop(self) -> None:
        """Stop the keeper; with cleanup, remove the VIP, a link we created, and the rules (unless `kept_for`).

        Raises `CleanupError` if the cleanup failed (after closing everything)."""
        self.keeper.stop()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        try:
            if self.config.cleanup and self.kept_for is not None:
                log.info("VIP %s kept on %s: %s", self.config.address, self.config.interface, self.kept_for)
            elif self.config.cleanup:
                self._present = False
                changes = await asyncio.to_thread(self.keeper.reconciler.cleanup)
                log.info("VIP %s cleaned up from %s: %s", self.config.address, self.config.interface,
                         "; ".join(changes) or "nothing to remove")  # fmt: skip
        finally:
            self.keeper.close()
