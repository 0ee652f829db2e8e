"""The sync pass against the in-memory netlink fake: the Go sidecar's semantics, edge by edge (each case
is also run against the real kernel, side by side with the Go binary's results, in test_netns_sidecar)."""

from __future__ import annotations

import ipaddress

import pytest

from apiproxy.vip.netlink import Address, NetlinkError
from apiproxy.vip.reconcile import CleanupError, PassError, Reconciler, remove, sync_pass

from .fake_netlink import FakeNetlink

VIP = ipaddress.ip_address("240.168.102.23")
VIP6 = ipaddress.ip_address("64:ff9b:1::f0a8:6617")
RT_SCOPE_HOST = 254


def test_creates_the_dummy_link_sets_it_up_and_adds_the_address() -> None:
    netlink = FakeNetlink()
    result = sync_pass(netlink, VIP, "apiserver-proxy")
    assert result.created_link
    link = netlink.link_by_name("apiserver-proxy")
    assert link is not None and link.up
    assert netlink.where(VIP) == [("apiserver-proxy", 32)]
    assert result.changes == [
        "created dummy link apiserver-proxy",
        "set link apiserver-proxy up",
        "added 240.168.102.23/32 to apiserver-proxy",
    ]


def test_second_pass_changes_nothing() -> None:
    netlink = FakeNetlink()
    sync_pass(netlink, VIP, "apiserver-proxy")
    netlink.calls.clear()
    again = sync_pass(netlink, VIP, "apiserver-proxy")
    assert not again.changed and not again.created_link
    # As the Go sidecar: the add is always sent, the kernel's EEXIST says it is there.
    assert netlink.calls == ["link_by_name apiserver-proxy", "add_address 2 240.168.102.23/32"]


def test_existing_address_counts_as_success_even_if_the_kernel_says_eexist() -> None:
    netlink = FakeNetlink({"lo": True})
    netlink.place("lo", VIP, 32)
    # The dump missed it (a race with another writer): the add answers EEXIST, and that is success.
    netlink.addresses_of = lambda address: []  # type: ignore[method-assign]
    result = sync_pass(netlink, VIP, "lo")
    assert not result.changed
    assert netlink.where(VIP) == [("lo", 32)]


def test_removes_whole_length_copies_from_other_links_only() -> None:
    netlink = FakeNetlink({"lo": True, "eth0": True, "apiserver-proxy": True})
    netlink.place("lo", VIP, 32)
    netlink.place("eth0", VIP, 24)  # the same address in a subnet someone configured: not the VIP
    result = sync_pass(netlink, VIP, "apiserver-proxy")
    assert sorted(netlink.where(VIP)) == [("apiserver-proxy", 32), ("eth0", 24)]
    assert result.changes == [
        "removed 240.168.102.23/32 from link #1",
        "added 240.168.102.23/32 to apiserver-proxy",
    ]


def test_a_shorter_prefix_on_its_own_link_is_left_and_the_32_added_once() -> None:
    # Issue 17: 10.96.0.2/24 on apiserver-proxy and on another link. Go leaves both and adds the /32.
    netlink = FakeNetlink({"lo": True, "eth0": True, "apiserver-proxy": True})
    netlink.place("apiserver-proxy", VIP, 24)
    netlink.place("eth0", VIP, 24)
    sync_pass(netlink, VIP, "apiserver-proxy")
    sync_pass(netlink, VIP, "apiserver-proxy")
    assert sorted(netlink.where(VIP)) == [("apiserver-proxy", 24), ("apiserver-proxy", 32), ("eth0", 24)]


def test_scope_host_32_on_its_own_link_is_kept_as_it_is() -> None:
    # Older sidecars added the VIP with scope host; the kernel's EEXIST ignores scope, and so does Go.
    netlink = FakeNetlink({"lo": True})
    netlink.entries.append(Address(1, VIP, 32, RT_SCOPE_HOST))
    result = sync_pass(netlink, VIP, "lo")
    assert not result.changed
    assert [(e.prefixlen, e.scope) for e in netlink.entries] == [(32, RT_SCOPE_HOST)]
    assert not [c for c in netlink.calls if c.startswith("delete_address")]


def test_ipv6_any_prefix_of_the_address_on_its_own_link_counts_as_present() -> None:
    netlink = FakeNetlink({"lo": True, "eth0": True, "apiserver-proxy": True})
    netlink.place("apiserver-proxy", VIP6, 64)
    netlink.place("eth0", VIP6, 64)
    assert not sync_pass(netlink, VIP6, "apiserver-proxy").changed
    assert sorted(netlink.where(VIP6)) == [("apiserver-proxy", 64), ("eth0", 64)]


def test_ipv4_mapped_address_fails_the_pass_in_gos_words_and_adds_nothing() -> None:
    mapped = ipaddress.ip_address("::ffff:10.96.0.9")
    netlink = FakeNetlink({"lo": True, "apiserver-proxy": True})
    netlink.place("lo", ipaddress.ip_address("10.96.0.9"), 32)
    with pytest.raises(PassError) as raised:
        sync_pass(netlink, mapped, "apiserver-proxy")
    assert raised.value.go_words == "could not add IPV4 addresses invalid argument"
    assert netlink.where(mapped) == []
    assert netlink.where(ipaddress.ip_address("10.96.0.9")) == [("lo", 32)]
    report = Reconciler(mapped, "apiserver-proxy", lambda: netlink).sync()
    assert report.go_error == "could not add IPV4 addresses invalid argument"
    assert report.error is not None and "Invalid argument" in report.error


def test_loopback_vip_on_another_link_leaves_lo_alone() -> None:
    # Issue 18 row 8: with 127.0.0.1 as the VIP, 127.0.0.1/8 on lo was removed. It is not a whole-length copy.
    loopback = ipaddress.ip_address("127.0.0.1")
    netlink = FakeNetlink({"lo": True, "apiserver-proxy": True})
    netlink.place("lo", loopback, 8)
    sync_pass(netlink, loopback, "apiserver-proxy")
    assert sorted(netlink.where(loopback)) == [("apiserver-proxy", 32), ("lo", 8)]


def test_sets_an_existing_link_up_without_creating_it() -> None:
    netlink = FakeNetlink({"lo": True, "apiserver-proxy": False})
    result = sync_pass(netlink, VIP, "apiserver-proxy")
    assert not result.created_link
    assert result.changes[0] == "set link apiserver-proxy up"
    assert "add_dummy_link apiserver-proxy" not in netlink.calls


def test_ipv6_uses_a_128_prefix() -> None:
    netlink = FakeNetlink()
    sync_pass(netlink, VIP6, "apiserver-proxy")
    assert netlink.where(VIP6) == [("apiserver-proxy", 128)]


def test_link_creation_failure_is_an_error_naming_the_link() -> None:
    netlink = FakeNetlink(can_create=False)
    with pytest.raises(
        NetlinkError, match="creating dummy link apiserver-proxy: link add: Operation not supported"
    ) as raised:
        sync_pass(netlink, VIP, "apiserver-proxy")
    assert isinstance(raised.value, PassError)
    assert raised.value.go_words == "could not add dummy interface apiserver-proxy:\noperation not supported"


def test_a_link_created_concurrently_by_someone_else_is_used() -> None:
    netlink = FakeNetlink()
    original = netlink.link_by_name
    seen = []

    def racing_lookup(name: str):  # type: ignore[no-untyped-def]
        # The first look-up misses; meanwhile someone else creates the link (EEXIST on our add).
        if not seen:
            seen.append(name)
            netlink._new_link(name, True)
            return None
        return original(name)

    netlink.link_by_name = racing_lookup  # type: ignore[method-assign]
    result = sync_pass(netlink, VIP, "apiserver-proxy")
    assert not result.created_link
    assert netlink.where(VIP) == [("apiserver-proxy", 32)]


def test_remove_takes_the_vip_off_and_deletes_only_a_link_we_created() -> None:
    netlink = FakeNetlink({"lo": True})
    netlink.place("lo", VIP, 32)
    netlink.place("lo", VIP, 24)  # not ours: stays
    assert remove(netlink, VIP, "lo", delete_link=False) == ["removed 240.168.102.23/32 from lo"]
    assert netlink.where(VIP) == [("lo", 24)]
    assert netlink.link_by_name("lo") is not None
    assert remove(netlink, VIP, "missing", delete_link=True) == []


class Rules:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.ensured = 0
        self.removed = 0

    def ensure(self) -> list[str]:
        self.ensured += 1
        if self.fail:
            raise RuntimeError("iptables -I: lock held")
        return ["added rule"] if self.ensured == 1 else []

    def remove(self) -> list[str]:
        self.removed += 1
        return ["removed rule"]


def test_reconciler_remembers_it_created_the_link_and_cleans_up_link_and_rules() -> None:
    netlink = FakeNetlink()
    rules = Rules()
    reconciler = Reconciler(VIP, "apiserver-proxy", lambda: netlink, lambda: rules)
    first = reconciler.sync()
    assert first.present and first.error is None and "added rule" in first.changes
    second = reconciler.sync()
    assert second.present and second.changes == []
    assert reconciler.cleanup() == [
        "removed 240.168.102.23/32 from apiserver-proxy",
        "deleted link apiserver-proxy",
        "removed rule",
    ]
    assert netlink.link_by_name("apiserver-proxy") is None


def test_reconciler_reports_a_failed_pass_and_reopens_the_handle() -> None:
    handles: list[FakeNetlink] = []

    def factory() -> FakeNetlink:
        handles.append(FakeNetlink(can_create=len(handles) > 0))
        return handles[-1]

    reconciler = Reconciler(VIP, "apiserver-proxy", factory)
    failed = reconciler.sync()
    assert not failed.present
    assert failed.error is not None and "Operation not supported" in failed.error
    assert handles[0].closed
    assert reconciler.sync().present
    assert len(handles) == 2


def test_rules_failure_fails_the_pass_but_the_address_is_in_place() -> None:
    netlink = FakeNetlink()
    report = Reconciler(VIP, "lo", lambda: netlink, lambda: Rules(fail=True)).sync()
    assert report.present
    assert report.error == "iptables -I: lock held"
    assert netlink.where(VIP) == [("lo", 32)]


def test_cleanup_failure_raises_with_every_reason() -> None:
    netlink = FakeNetlink({"lo": True})
    netlink.place("lo", VIP, 32)

    def broken(*_: object) -> bool:
        raise NetlinkError(1, "addr del: Operation not permitted")

    netlink.delete_address = broken  # type: ignore[method-assign,assignment]
    with pytest.raises(CleanupError, match="Operation not permitted"):
        Reconciler(VIP, "lo", lambda: netlink).cleanup()
