"""`apiproxy run --cleanup` keeping its VIP in a network namespace this test creates, handing its listener
over: neither process removes the VIP while the other serves on it. The one that handed the listener over
keeps it at exit (its successor serves on it); the successor keeps it while its predecessor still runs (a
rollback that ends the new pod first) and removes it at its own exit once alone."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.gateway import DESTINATION
from lab.proxy import ApiproxyProcess

pytestmark = pytest.mark.netns

VIP = "240.168.102.23"
# Not Gardener's dummy link: some kernels (this CI's among them) cannot create dummy links; the keeper's
# handling of the address is the same on any link.
LINK = "lo"


def _run_has_handover_option() -> bool:
    done = subprocess.run([sys.executable, "-m", "apiproxy", "run", "--help"], capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    return "--handover-socket" in done.stdout


@pytest.fixture
def namespace() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2's `ip` (network namespaces)")
    if not _run_has_handover_option():
        pytest.skip("`apiproxy run` has no --handover-socket option yet (apiproxy/cli/run.py)")
    name = f"apxr{os.getpid()}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=30
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=30)


def vip_links(namespace: str) -> list[str]:
    shown = subprocess.run(["ip", "-n", namespace, "-j", "addr", "show"], capture_output=True, text=True,
                           check=True, timeout=30)  # fmt: skip
    return [
        e["ifname"] for e in json.loads(shown.stdout) for a in e.get("addr_info", []) if a.get("local") == VIP
    ]


class Node:
    def __init__(self, namespace: str, socket_path: Path) -> None:
        self.namespace, self.socket_path = namespace, socket_path
        self.processes: list[ApiproxyProcess] = []

    def start(self, ready: str = "listening on") -> ApiproxyProcess:
        process = ApiproxyProcess(
            ["run", "--ip-address", VIP, "--interface", LINK, "--cleanup", "--upstream", "127.0.0.1:9",
             "--destination", DESTINATION, "--metrics-address", "127.0.0.1:16910", "--drain-timeout", "1s",
             "--handover-socket", str(self.socket_path)],
            command=["ip", "netns", "exec", self.namespace, sys.executable, "-m", "apiproxy"], ready_text=ready,
        )  # fmt: skip
        self.processes.append(process)
        return process.start()

    def connects(self) -> bool:
        probe = f"import socket; socket.create_connection(({VIP!r}, 443), 2).close()"
        done = subprocess.run(["ip", "netns", "exec", self.namespace, sys.executable, "-c", probe],
                              capture_output=True, timeout=30, check=False)  # fmt: skip
        return done.returncode == 0

    def close(self) -> None:
        for process in self.processes:
            process.cleanup()


@pytest.fixture
def node(namespace: str, tmp_path: Path) -> Iterator[Node]:
    started = Node(namespace, tmp_path / "run" / "handover")
    try:
        yield started
    finally:
        started.close()


def test_the_vip_stays_while_either_process_serves_on_it(node: Node) -> None:
    old = node.start()
    assert vip_links(node.namespace) == [LINK]
    new = node.start(ready="took over the listener")
    assert "waiting for SIGTERM" in _wait_log(old, "waiting for SIGTERM")
    old.signal(signal.SIGTERM)
    assert old.wait(10) == 0
    assert f"VIP {VIP} kept on {LINK}: PID {new.pid} took the listener over" in old.stderr()
    assert vip_links(node.namespace) == [LINK]
    assert node.connects()  # the successor accepts on VIP:443
    new.signal(signal.SIGTERM)
    assert new.wait(10) == 0
    assert f"VIP {VIP} cleaned up from {LINK}" in new.stderr()
    assert vip_links(node.namespace) == []


def test_a_successor_ended_first_keeps_the_vip_for_its_predecessor(node: Node) -> None:
    old = node.start()
    new = node.start(ready="took over the listener")
    new.signal(signal.SIGTERM)  # a rollback: the new pod goes first
    assert new.wait(10) == 0
    assert (
        f"VIP {VIP} kept on {LINK}: PID {old.pid}, which handed the listener over, still runs" in new.stderr()
    )
    assert vip_links(node.namespace) == [LINK]
    old.signal(signal.SIGTERM)
    assert old.wait(10) == 0
    assert vip_links(node.namespace) == [LINK]  # it handed the listener over: not its to remove


def _wait_log(process: ApiproxyProcess, text: str, timeout: float = 10.0) -> str:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in process.stderr():
            return process.stderr()
        time.sleep(0.02)
    raise AssertionError(f"{text!r} not logged within {timeout:g}s: {process.stderr()[-2000:]}")
