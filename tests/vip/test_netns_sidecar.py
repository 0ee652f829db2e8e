"""`apiserver-proxy-sidecar` in a network namespace created by the test: one-shot and daemon modes, the
exit codes that need a namespace, `--cleanup`, and `--setup-iptables` (rules present, NOTRACK effective,
rules gone after cleanup)."""

from __future__ import annotations

import ipaddress
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiproxy.vip.iptables import rules_for

from .conftest import PEER, Namespace

pytestmark = pytest.mark.netns

VIP = "240.168.102.23"
VIP6 = "64:ff9b:1::f0a8:6617"
LINK = "apiserver-proxy"
SIDECAR = str(Path(sys.executable).with_name("apiserver-proxy-sidecar"))


@pytest.fixture
def node(netns: Namespace) -> Namespace:
    # Pre-created as a bridge: this kernel may lack the dummy driver.
    netns.ip("link", "add", LINK, "type", "bridge")
    return netns


def one_shot(namespace: Namespace, *flags: str) -> subprocess.CompletedProcess[str]:
    return namespace.exec(
        SIDECAR, f"--ip-address={VIP}", f"--interface={LINK}", "--daemon=false", *flags, check=False
    )


class Daemon:
    def __init__(self, namespace: Namespace, *flags: str, vip: str = VIP) -> None:
        self.process = subprocess.Popen(
            [*namespace.exec_prefix(), SIDECAR, "--ip-address", vip, "--interface", LINK, *flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        assert self.process.stderr is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            if "Running as a daemon" in line:
                return
        self.stop()
        raise AssertionError(f"sidecar did not start: {''.join(self.lines)}")

    def wait(self) -> int:
        try:
            _, rest = self.process.communicate(timeout=20)
            self.lines.append(rest)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        return self.process.returncode

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for daemon in started:
            daemon.stop()


def test_one_shot_adds_the_vip_and_exits_0_also_when_run_again(node: Namespace) -> None:
    for _ in range(2):
        done = one_shot(node)
        assert done.returncode == 0, done.stderr
        assert node.links_with(VIP) == [LINK]
    assert "Exiting... Bye!" in done.stderr
    assert done.stderr.startswith("I")  # klog-style lines: I1122 06:54:38.721203    7573 sidecar.py:182] ...


def test_one_shot_exits_0_even_if_the_pass_failed(node: Namespace) -> None:
    # IPv6 disabled on the link: the kernel refuses the address, whatever drivers it has.
    node.exec("sysctl", "-q", "-w", f"net.ipv6.conf.{LINK}.disable_ipv6=1")
    done = node.exec(SIDECAR, f"--ip-address={VIP6}", f"--interface={LINK}", "--daemon=false", check=False)
    assert done.returncode == 0, done.stderr
    assert "Error ensuring ip address" in done.stderr


def test_one_shot_cleanup_removes_the_address_and_keeps_a_link_it_did_not_create(node: Namespace) -> None:
    node.ip("addr", "add", f"{VIP}/32", "dev", LINK)
    done = one_shot(node, "--cleanup")
    assert done.returncode == 0, done.stderr
    assert node.links_with(VIP) == []
    assert node.link(LINK) is not None


@pytest.mark.parametrize("vip", [VIP, VIP6])
def test_daemon_repairs_on_events_and_exits_0_on_sigterm(
    node: Namespace, daemons: list[Daemon], vip: str
) -> None:
    daemon = Daemon(node, "--sync-interval=1h", "-v=2", "--logtostderr=true", vip=vip)
    daemons.append(daemon)
    assert node.links_with(vip) == [LINK]
    node.ip("addr", "del", f"{vip}/{32 if '.' in vip else 128}", "dev", LINK)
    deadline = time.monotonic() + 1.0  # polled with `ip` subprocesses; the repair itself takes milliseconds
    while node.links_with(vip) != [LINK] and time.monotonic() < deadline:
        time.sleep(0.002)
    assert node.links_with(vip) == [LINK]  # the hourly pass cannot have done it: a netlink event did
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert node.links_with(vip) == [LINK]  # no --cleanup: the address stays


def test_daemon_cleanup_on_sigint(node: Namespace, daemons: list[Daemon]) -> None:
    daemon = Daemon(node, "--cleanup")
    daemons.append(daemon)
    daemon.process.send_signal(signal.SIGINT)
    assert daemon.wait() == 0
    assert node.links_with(VIP) == []


def test_daemon_second_signal_exits_1(node: Namespace, daemons: list[Daemon]) -> None:
    daemon = Daemon(node, "--cleanup")
    daemons.append(daemon)
    # Two different signals are both delivered (two SIGTERMs could merge into one pending signal).
    daemon.process.send_signal(signal.SIGTERM)
    daemon.process.send_signal(signal.SIGINT)
    assert daemon.wait() == 1


def _rule_present(namespace: Namespace, rule_args: list[str]) -> bool:
    return namespace.exec("iptables", "-w", "5", *rule_args, check=False).returncode == 0


def test_setup_iptables_rules_present_notrack_effective_and_removed_on_cleanup(
    node: Namespace, daemons: list[Daemon]
) -> None:
    rules = [["-t", r.table, "-C", r.chain, *r.match] for r in rules_for(ipaddress.ip_address(VIP), 443)]
    # A node's usual stateful rule: it turns connection tracking on in this namespace, so the control
    # connection below (VIP:444) does get a conntrack entry.
    node.exec("iptables", "-w", "5", "-A", "INPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
    done = one_shot(node, "--setup-iptables")
    assert done.returncode == 0, done.stderr
    assert all(_rule_present(node, rule) for rule in rules), node.exec("iptables-save").stdout

    probe = node.python(PEER, "conntrack-probe", VIP)
    assert probe.returncode == 0, probe.stderr
    tracked = node.exec("conntrack", "-L", "-d", VIP).stdout
    assert "dport=444" in tracked, f"control connection not tracked: conntrack is off? {tracked!r}"
    assert "dport=443" not in tracked, tracked

    # A second pass adds nothing twice.
    assert one_shot(node, "--setup-iptables").returncode == 0
    assert node.exec("iptables-save").stdout.count(f"-d {VIP}/32 -p tcp -m tcp --dport 443 -j NOTRACK") == 2

    daemon = Daemon(node, "--setup-iptables", "--cleanup")
    daemons.append(daemon)
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert not any(_rule_present(node, rule) for rule in rules), node.exec("iptables-save").stdout
    assert node.links_with(VIP) == []


@pytest.mark.parametrize(
    ("used", "unused"), [("iptables-legacy", "iptables-nft"), ("iptables-nft", "iptables-legacy")]
)
def test_setup_iptables_writes_to_the_backend_the_node_uses(node: Namespace, used: str, unused: str) -> None:
    # The node's existing rules live in one backend: the sidecar's must go there too.
    node.exec(used, "-w", "5", "-A", "FORWARD", "-j", "ACCEPT")
    node.exec(used, "-w", "5", "-A", "FORWARD", "-j", "ACCEPT")
    done = one_shot(node, "--setup-iptables")
    assert done.returncode == 0, done.stderr
    rule = ["-t", "raw", "-C", "PREROUTING", "-p", "tcp", "-d", VIP, "--dport", "443", "-j", "NOTRACK"]
    assert node.exec(used, "-w", "5", *rule, check=False).returncode == 0
    assert node.exec(unused, "-w", "5", *rule, check=False).returncode != 0
    assert one_shot(node, "--setup-iptables", "--cleanup").returncode == 0
    assert node.exec(used, "-w", "5", *rule, check=False).returncode != 0
