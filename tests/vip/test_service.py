"""VIPService on the proxy's loop, with the in-memory netlink (the kernel side is covered by the
namespace tests): the keeper's passes on its thread, the hand-off to the loop, retries, cleanup."""

from __future__ import annotations

import asyncio
import ipaddress
import threading

import pytest
import uvloop

from apiproxy.config import VIPConfig
from apiproxy.vip import keeper as keeper_module
from apiproxy.vip.events import AddressEvent, LinkEvent
from apiproxy.vip.reconcile import CleanupError
from apiproxy.vip.service import VIPService

from .fake_netlink import FakeNetlink

VIP = ipaddress.ip_address("240.168.102.23")


def run(coroutine_function):  # type: ignore[no-untyped-def]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine_function())


async def _until(condition, timeout: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


def _from_another_thread(service: VIPService, event: AddressEvent | LinkEvent) -> None:
    thread = threading.Thread(target=service.keeper.notify, args=(event,))
    thread.start()
    thread.join()


def test_kernel_event_triggers_a_repair_reported_on_the_loop() -> None:
    netlink = FakeNetlink()
    repairs: list[tuple[str, bool]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        service = VIPService(VIPConfig(VIP, "apiserver-proxy", sync_interval=3600), netlink_factory=lambda: netlink,
                             watch=False)  # fmt: skip
        service.on_repair = lambda trigger: repairs.append((trigger, asyncio.get_running_loop() is loop))
        await service.start()
        assert service.present
        assert repairs == [("initial", True)]
        index = netlink.index("apiserver-proxy")
        netlink.delete_address(index, VIP, 32)  # someone runs `ip addr del`
        _from_another_thread(service, AddressEvent(True, index, VIP, 32))
        await _until(lambda: len(repairs) == 2)
        assert repairs[1] == ("event", True)
        assert service.present
        # Events about other addresses or links do not cause passes.
        passes = service.passes
        _from_another_thread(service, LinkEvent(True, 99, "veth1234", False))
        await asyncio.sleep(0.05)
        assert service.passes == passes
        await service.stop()

    run(scenario)
    assert netlink.where(VIP) == [("apiserver-proxy", 32)]  # no cleanup asked


def test_failing_pass_is_retried_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keeper_module, "FIRST_RETRY", 0.01)
    netlink = FakeNetlink(can_create=False)

    async def scenario() -> None:
        service = VIPService(VIPConfig(VIP, "apiserver-proxy", sync_interval=3600, cleanup=True),
                             netlink_factory=lambda: netlink, watch=False)  # fmt: skip
        await service.start()
        assert not service.present
        await _until(lambda: service.failed_passes >= 2)
        netlink.can_create = True
        await _until(lambda: service.present)
        await service.stop()
        assert not service.present

    run(scenario)
    # --cleanup: the address and the link this process created are gone.
    assert netlink.link_by_name("apiserver-proxy") is None
    assert netlink.where(VIP) == []


def test_cleanup_failure_is_raised_by_stop() -> None:
    netlink = FakeNetlink()

    async def scenario() -> None:
        service = VIPService(VIPConfig(VIP, "lo", cleanup=True), netlink_factory=lambda: netlink, watch=False)
        await service.start()

        def refuse(*_: object) -> None:
            raise PermissionError(1, "Operation not permitted")

        netlink.delete_link = refuse  # type: ignore[method-assign]
        netlink.delete_address = refuse  # type: ignore[method-assign,assignment]
        with pytest.raises(CleanupError, match="Operation not permitted"):
            await service.stop()

    run(scenario)
    assert netlink.closed
