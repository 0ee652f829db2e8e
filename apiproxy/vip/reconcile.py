"""One sync pass, the Go sidecar's semantics, against the `Netlink` interface (no I/O of its own).

A pass: get the link named by the interface option, or create it as a dummy link, and set it up; delete
whole-length copies (`VIP/32`, `/128`) of the VIP from every other link; add `VIP/32` (`/128`) with global
scope to the link, the kernel's "already there" (EEXIST) counting as success. As in the Go sidecar, the
kernel decides what "already there" means: an IPv4 entry with the same prefix (whatever its scope), an
IPv6 entry of the same address (whatever its prefix). The same address with a shorter prefix is not the
VIP and is left alone everywhere. No routes. Passes are idempotent: the second changes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from ..config import IPAddress
from .netlink import Link, Netlink, NetlinkError, full_prefix


class PassError(NetlinkError):
    """A step of a pass failed. `go_words` says it as the Go sidecar logs it (its drop-in uses them)."""

    def __init__(self, code: int, message: str, go_words: str) -> None:
        super().__init__(code, message)
        self.go_words = go_words


def go_errno_text(code: int) -> str:
    """An errno as Go's syscall package spells it: the C library's text, first letter in lower case."""
    text = os.strerror(code)
    return text[:1].lower() + text[1:]


@contextlib.contextmanager
def _step(go_words: str) -> Iterator[None]:
    """Run one step; a kernel refusal becomes a `PassError` with Go's `go_words` + the errno text."""
    try:
        yield
    except PassError:
        raise
    except NetlinkError as error:
        code = error.errno or errno.EIO
        raise PassError(code, str(error.strerror), f"{go_words}{go_errno_text(code)}") from None


@dataclass(slots=True)
class PassResult:
    link: Link
    created_link: bool = False
    # What the pass changed, one phrase each, for the log ("added 10.96.0.2/32 to lo").
    changes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def _get_or_create_link(netlink: Netlink, name: str) -> tuple[Link, bool]:
    with _step(f"could not get interface {name}:\n"):
        link = netlink.link_by_name(name)
    if link is not None:
        return link, False
    try:
        netlink.add_dummy_link(name)
    except NetlinkError as error:
        # Someone else created it between our look-up and our request: use theirs.
        if error.errno != errno.EEXIST:
            code = error.errno or errno.EIO
            raise PassError(code, f"creating dummy link {name}: {error.strerror}",
                            f"could not add dummy interface {name}:\n{go_errno_text(code)}") from None  # fmt: skip
        created = False
    else:
        created = True
    with _step(f"could not get interface {name}:\n"):
        link = netlink.link_by_name(name)
    if link is None:
        raise PassError(errno.ENODEV, f"link {name} vanished right after it was created",
                        f"could not get interface {name}:\nLink not found")  # fmt: skip
    return link, created


def sync_pass(netlink: Netlink, address: IPAddress, interface: str) -> PassResult:
    link, created = _get_or_create_link(netlink, interface)
    result = PassResult(link, created)
    if created:
        result.changes.append(f"created dummy link {interface}")
    if not link.up:
        # A down link has no local route for its addresses: the VIP would be there but unreachable.
        with _step(f"could not set interface {interface} up:\n"):
            netlink.set_link_up(link.index)
        result.changes.append(f"set link {interface} up")
    prefix = full_prefix(address)
    vip = f"{address}/{prefix}"
    with _step("could not deduplicate IP address:\ncould not list interfaces: "):
        entries = netlink.addresses_of(address)
    for entry in entries:
        # The Go sidecar's test of sameness (netlink.Addr.Equal): same address and same prefix length.
        if entry.link_index != link.index and entry.prefixlen == prefix:
            words = f'could not deduplicate IP address:\ncould not delete duplicate address "{vip}" from interface #{entry.link_index}: '
            with _step(words):
                if netlink.delete_address(entry.link_index, address, prefix):
                    result.changes.append(f"removed {vip} from link #{entry.link_index}")
    with _step("could not add IPV4 addresses "):  # sic: Go says IPV4 for IPv6 too
        if netlink.add_address(link.index, address, prefix):
            result.changes.append(f"added {vip} to {interface}")
    return result


def remove(netlink: Netlink, address: IPAddress, interface: str, *, delete_link: bool) -> list[str]:
    """Cleanup on exit: `VIP/32` (`/128`) off the interface (an entry with another prefix is not ours), and
    the link itself if this process created it."""
    link = netlink.link_by_name(interface)
    if link is None:
        return []
    changes = []
    if netlink.delete_address(link.index, address, full_prefix(address)):
        changes.append(f"removed {address}/{full_prefix(address)} from {interface}")
    if delete_link:
        netlink.delete_link(link.index)
        changes.append(f"deleted link {interface}")
    return changes


class Rules(Protocol):
    """The optional firewall rules kept with the VIP (`iptables.IPTables`)."""

    def ensure(self) -> list[str]: ...
    def remove(self) -> list[str]: ...


@dataclass(slots=True)
class PassReport:
    link_index: int | None
    # The VIP is on its link now.
    present: bool
    changes: list[str]
    # Set when the pass did not complete; `present` tells whether the address part did.
    error: str | None = None
    # The same as the Go sidecar words it ("could not add IPV4 addresses invalid argument").
    go_error: str | None = None


class Reconciler:
    """Passes and cleanup for one VIP, remembering across passes whether it created the link.

    Not thread-safe: one thread at a time (the keeper's). The netlink handle is opened lazily and
    re-opened after a failure, so a broken socket heals on the next pass.
    """

    def __init__(self, address: IPAddress, interface: str, netlink_factory: Callable[[], Netlink],
                 rules: Callable[[], Rules] | None = None) -> None:  # fmt: skip
        self.address = address
        self.interface = interface
        self._netlink_factory = netlink_factory
        self._rules_factory = rules
        self._netlink: Netlink | None = None
        self._rules: Rules | None = None
        self.created_link = False

    def _handle(self) -> Netlink:
        if self._netlink is None:
            self._netlink = self._netlink_factory()
        return self._netlink

    def _drop_handle(self) -> None:
        if self._netlink is not None:
            with contextlib.suppress(Exception):
                self._netlink.close()
            self._netlink = None

    def sync(self) -> PassReport:
        try:
            result = sync_pass(self._handle(), self.address, self.interface)
        except Exception as error:
            self._drop_handle()
            go_words = error.go_words if isinstance(error, PassError) else _describe(error)
            return PassReport(None, False, [], _describe(error), go_words)
        self.created_link |= result.created_link
        report = PassReport(result.link.index, True, result.changes)
        if self._rules_factory is not None:
            try:
                if self._rules is None:
                    self._rules = self._rules_factory()
                report.changes += self._rules.ensure()
            except Exception as error:
                report.error = report.go_error = _describe(error)
        return report

    def cleanup(self) -> list[str]:
        """Remove the VIP (and the link if a pass created it) and the rules. Raises on failure."""
        changes: list[str] = []
        errors: list[str] = []
        try:
            changes += remove(self._handle(), self.address, self.interface, delete_link=self.created_link)
        except Exception as error:
            errors.append(_describe(error))
        if self._rules_factory is not None:
            try:
                changes += (self._rules or self._rules_factory()).remove()
            except Exception as error:
                errors.append(_describe(error))
        if errors:
            raise CleanupError("; ".join(errors))
        return changes

    def close(self) -> None:
        self._drop_handle()


class CleanupError(RuntimeError):
    pass


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror} (errno {error.errno})" if not error.filename else str(error)
    return str(error) or type(error).__name__
