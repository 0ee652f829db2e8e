"""The sync pass against a real kernel, in a network namespace created by the test (the netlink socket is
opened inside it)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from apiproxy.vip.netlink import KernelNetlink
from apiproxy.vip.reconcile import Reconciler, sync_pass

from .conftest import Namespace

pytestmark = pytest.mark.netns

VIP = ipaddress.ip_address("240.168.102.23")
VIP6 = ipaddress.ip_address("64:ff9b:1::f0a8:6617")


@pytest.fixture
def netlink(netns: Namespace) -> Iterator[KernelNetlink]:
    handle = KernelNetlink(netns.netlink_socket())
    try:
        yield handle
    finally:
        handle.close()


def test_a_pass_creates_the_dummy_link_and_the_address(netns: Namespace) -> None:
    reason = netns.dummy_unsupported()
    if reason:
        print(f"skipping: {reason}")
        pytest.skip(reason)
    reconciler = Reconciler(VIP, "apiserver-proxy", lambda: KernelNetlink(netns.netlink_socket()))
    try:
        report = reconciler.sync()
        assert report.error is None and report.present
        assert reconciler.created_link
        link = netns.link("apiserver-proxy")
        assert link is not None
        assert link["linkinfo"]["info_kind"] == "dummy"  # type: ignore[index]
        assert "UP" in link["flags"]  # type: ignore[operator]
        assert netns.links_with(str(VIP)) == ["apiserver-proxy"]
        reconciler.cleanup()
        assert netns.link("apiserver-proxy") is None
    finally:
        reconciler.close()


def test_a_pass_on_an_existing_link_sets_it_up_adds_the_address_and_a_second_pass_changes_nothing(
    netns: Namespace, netlink: KernelNetlink
) -> None:
    # The kernel here may lack the dummy driver: the link is pre-created (down) as a bridge.
    netns.ip("link", "add", "apiserver-proxy", "type", "bridge")
    first = sync_pass(netlink, VIP, "apiserver-proxy")
    assert first.changes == ["set link apiserver-proxy up", "added 240.168.102.23/32 to apiserver-proxy"]
    assert netns.links_with(str(VIP)) == ["apiserver-proxy"]
    shown = netns.ip("addr", "show", "dev", "apiserver-proxy").stdout
    assert "inet 240.168.102.23/32 scope global apiserver-proxy" in shown
    second = sync_pass(netlink, VIP, "apiserver-proxy")
    assert second.changes == []
    assert netns.links_with(str(VIP)) == ["apiserver-proxy"]


def test_a_pass_removes_the_vip_from_another_link(netns: Namespace, netlink: KernelNetlink) -> None:
    netns.ip("link", "add", "apiserver-proxy", "type", "bridge")
    netns.ip("addr", "add", f"{VIP}/32", "dev", "lo")
    result = sync_pass(netlink, VIP, "apiserver-proxy")
    assert netns.links_with(str(VIP)) == ["apiserver-proxy"]
    assert any(change.startswith("removed 240.168.102.23/32 from link") for change in result.changes)


def test_ipv6_vip_is_added_as_128_without_duplicate_address_detection(
    netns: Namespace, netlink: KernelNetlink
) -> None:
    netns.ip("link", "add", "apiserver-proxy", "type", "bridge")
    sync_pass(netlink, VIP6, "apiserver-proxy")
    shown = netns.ip("addr", "show", "dev", "apiserver-proxy").stdout
    assert f"inet6 {VIP6}/128 scope global nodad" in shown
    assert sync_pass(netlink, VIP6, "apiserver-proxy").changes == []


def test_the_interface_lo_works_as_with_the_go_sidecars_default(
    netns: Namespace, netlink: KernelNetlink
) -> None:
    assert sync_pass(netlink, VIP, "lo").changes == ["added 240.168.102.23/32 to lo"]
    assert netns.links_with(str(VIP)) == ["lo"]
