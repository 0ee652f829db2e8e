"""Network namespaces for the VIP tests: created per test (or per module), removed afterwards, also on
failure. The tests need root; they are skipped, saying why, only when not root."""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PEER = str(Path(__file__).with_name("netns_peer.py"))
_names = itertools.count()


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip(f"network namespace tests need root (running as uid {os.geteuid()})")
    if shutil.which("ip") is None:
        pytest.skip("network namespace tests need iproute2's `ip`")


def run(args: list[str], *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited with {done.returncode}: {done.stderr.strip()}")
    return done


@dataclass(frozen=True)
class Namespace:
    name: str

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["ip", "-n", self.name, *args], check=check)

    def exec(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return run([*self.exec_prefix(), *args], check=check, timeout=timeout)

    def python(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.exec(sys.executable, *args, check=check, timeout=timeout)

    def links_with(self, address: str) -> list[str]:
        """Names of the links holding `address` (any prefix)."""
        entries = json.loads(self.ip("-j", "addr", "show").stdout)
        return [e["ifname"] for e in entries for a in e.get("addr_info", []) if a.get("local") == address]

    def entries(self, address: str) -> list[tuple[str, int, str]]:
        """(link, prefix length, scope) of every entry of `address`, sorted."""
        entries = json.loads(self.ip("-j", "addr", "show").stdout)
        return sorted((e["ifname"], a["prefixlen"], a["scope"]) for e in entries for a in e.get("addr_info", [])
                      if a.get("local") == address)  # fmt: skip

    def link(self, name: str) -> dict[str, object] | None:
        done = self.ip("-j", "-d", "link", "show", "dev", name, check=False)
        return json.loads(done.stdout)[0] if done.returncode == 0 else None

    def netlink_socket(self) -> socket.socket:
        """An rtnetlink socket opened inside this namespace: a short-lived thread enters it with setns(2)
        (os.setns is Python 3.12+) and opens the socket there; the socket stays in the namespace."""
        opened: list[socket.socket | OSError] = []

        def enter_and_open() -> None:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{self.name}", "rb") as handle:
                if libc.setns(handle.fileno(), 0x40000000) != 0:  # CLONE_NEWNET
                    opened.append(OSError(ctypes.get_errno(), f"setns into {self.name} failed"))
                    return
            opened.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0))

        thread = threading.Thread(target=enter_and_open)
        thread.start()
        thread.join()
        if isinstance(opened[0], OSError):
            raise opened[0]
        return opened[0]

    def dummy_unsupported(self) -> str | None:
        """Why dummy links cannot be created here, or None if they can."""
        done = self.ip("link", "add", "apxprobe", "type", "dummy", check=False)
        if done.returncode != 0:
            return (
                f"this kernel cannot create dummy links (`ip link add X type dummy`: {done.stderr.strip()})"
            )
        self.ip("link", "del", "apxprobe")
        return None


def _create() -> Namespace:
    namespace = Namespace(f"apxt{os.getpid()}-{next(_names)}")
    run(["ip", "netns", "add", namespace.name])
    namespace.ip("link", "set", "lo", "up")
    return namespace


def _delete(namespace: Namespace) -> None:
    run(["ip", "netns", "del", namespace.name], check=False)


@pytest.fixture
def netns() -> Iterator[Namespace]:
    require_root()
    namespace = _create()
    try:
        yield namespace
    finally:
        _delete(namespace)


@pytest.fixture(scope="module")
def netns_pair() -> Iterator[tuple[Namespace, Namespace]]:
    """Two namespaces joined by a veth pair: 10.200.0.1/24 in the first, 10.200.0.2/24 in the second."""
    require_root()
    first = _create()
    try:
        second = _create()
        try:
            first.ip(
                "link", "add", "veth-node", "type", "veth", "peer", "name", "veth-seed", "netns", second.name
            )
            first.ip("addr", "add", "10.200.0.1/24", "dev", "veth-node")
            second.ip("addr", "add", "10.200.0.2/24", "dev", "veth-seed")
            first.ip("link", "set", "veth-node", "up")
            second.ip("link", "set", "veth-seed", "up")
            yield first, second
        finally:
            _delete(second)
    finally:
        _delete(first)
