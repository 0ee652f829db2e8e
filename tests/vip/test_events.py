"""Parsing rtnetlink notifications (bytes laid out as <linux/rtnetlink.h> says) and deciding which call for
a pass. The real kernel's bytes are exercised by the namespace tests."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from apiproxy.vip.events import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    AddressEvent,
    LinkEvent,
    Verdict,
    assess,
    parse,
)

VIP = ipaddress.ip_address("240.168.102.23")
OTHER = ipaddress.ip_address("10.0.0.1")


def _attribute(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _message(kind: int, body: bytes) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body
    return raw + b"\0" * (-len(raw) % 4)


def link_message(kind: int, index: int, name: str, flags: int) -> bytes:
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 1, index, flags, 0)
    return _message(kind, body + _attribute(4, b"\x00\x05\x00\x00") + _attribute(3, name.encode() + b"\0"))


def address_message(kind: int, index: int, address: str, prefixlen: int, *, local: bool = True) -> bytes:
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    body = struct.pack("=BBBBI", family, prefixlen, 0x80, 0, index)
    body += _attribute(1, ip.packed)  # IFA_ADDRESS
    if local:
        body += _attribute(2, ip.packed)  # IFA_LOCAL
    body += _attribute(3, b"apiserver-proxy\0")  # IFA_LABEL
    return _message(kind, body)


def test_parses_several_messages_of_one_datagram() -> None:
    datagram = (
        link_message(RTM_NEWLINK, 7, "apiserver-proxy", 0x1)
        + address_message(RTM_DELADDR, 7, "240.168.102.23", 32)
        + _message(3, b"\0\0\0\0")  # NLMSG_DONE: skipped
        + link_message(RTM_DELLINK, 7, "apiserver-proxy", 0)
        + address_message(RTM_NEWADDR, 1, "64:ff9b:1::f0a8:6617", 128, local=False)
    )
    assert list(parse(datagram)) == [
        LinkEvent(False, 7, "apiserver-proxy", True),
        AddressEvent(True, 7, VIP, 32),
        LinkEvent(True, 7, "apiserver-proxy", False),
        AddressEvent(False, 1, ipaddress.ip_address("64:ff9b:1::f0a8:6617"), 128),
    ]


@pytest.mark.parametrize("cut", [1, 15, 17, 30])
def test_truncated_datagrams_end_the_parse_without_error(cut: int) -> None:
    whole = address_message(RTM_DELADDR, 7, "240.168.102.23", 32)
    assert list(parse(whole[:cut])) == []


def test_an_attribute_with_a_bad_length_is_ignored() -> None:
    body = struct.pack("=BBBBI", socket.AF_INET, 32, 0, 0, 3) + struct.pack("=HH", 200, 2) + VIP.packed
    assert list(parse(_message(RTM_DELADDR, body))) == [AddressEvent(True, 3, None, 32)]


@pytest.mark.parametrize(
    ("event", "verdict"),
    [
        (AddressEvent(True, 7, VIP, 32), Verdict.LOST),  # `ip addr del` of the VIP
        (AddressEvent(True, 3, VIP, 32), Verdict.IGNORE),  # a stray copy elsewhere went away
        (AddressEvent(False, 7, VIP, 32), Verdict.IGNORE),  # our own repair
        (AddressEvent(False, 1, VIP, 32), Verdict.CHECK),  # placed on another link: remove it there
        (AddressEvent(False, 1, VIP, 24), Verdict.IGNORE),  # the address in someone's subnet: not the VIP
        (AddressEvent(True, 7, VIP, 24), Verdict.IGNORE),  # such an entry on our link went: the /32 stays
        (AddressEvent(True, 7, OTHER, 32), Verdict.IGNORE),
        (LinkEvent(True, 7, "apiserver-proxy", False), Verdict.LOST),  # `ip link del`
        (LinkEvent(False, 7, "apiserver-proxy", False), Verdict.LOST),  # `ip link set down`
        (LinkEvent(False, 7, "renamed", True), Verdict.LOST),
        (LinkEvent(False, 7, "apiserver-proxy", True), Verdict.IGNORE),  # statistics, flags
        (LinkEvent(False, 9, "apiserver-proxy", True), Verdict.CHECK),  # re-created by someone else
        (LinkEvent(True, 12, "veth1234", False), Verdict.IGNORE),  # pod churn
    ],
)
def test_assess(event: AddressEvent | LinkEvent, verdict: Verdict) -> None:
    assert assess(event, VIP, "apiserver-proxy", 7) is verdict


def test_before_the_first_pass_only_the_interface_name_counts() -> None:
    assert assess(LinkEvent(False, 9, "apiserver-proxy", True), VIP, "apiserver-proxy", None) is Verdict.CHECK
    assert assess(AddressEvent(False, 9, VIP, 32), VIP, "apiserver-proxy", None) is Verdict.CHECK
