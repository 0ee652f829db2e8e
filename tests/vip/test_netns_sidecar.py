"""`apiserver-proxy-sidecar` in a network namespace created by the test: one-shot and daemon modes, the
exit codes that need a namespace, `--cleanup`, `--setup-iptables` (rules present, NOTRACK effective, rules
gone after cleanup), and the cases where it must do exactly what the Go sidecar does (issues 17 and 18)."""

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
from lab.address_monitor import AddressMonitor

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


# --- Issue 17's six cases and issue 18's loopback VIP. Each expectation is what the Go sidecar (built from
# gardener/apiserver-proxy's head) did with the same arguments in a namespace set up the same way.

KLOG_FLAGS = ("--alsologtostderrthreshold=ERROR", "--legacy_stderr_threshold_behavior=false", "--one_output")


@pytest.mark.parametrize("flags", [KLOG_FLAGS, ("--port=abc",)], ids=["klog-v2.140-flags", "port-abc"])
def test_flags_go_accepts_are_accepted_and_the_vip_added(node: Namespace, flags: tuple[str, ...]) -> None:
    done = one_shot(node, *flags)
    assert done.returncode == 0, done.stderr
    assert node.entries(VIP) == [(LINK, 32, "global")]


def test_setup_iptables_with_a_port_that_is_no_number_is_a_usage_error(node: Namespace) -> None:
    # Go's head has no --setup-iptables; the Go sidecars that had it passed the string to iptables, which
    # refused it at every pass. Here it is refused once, before anything is changed.
    done = one_shot(node, "--setup-iptables", "--port=abc")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "--port: expected a port number 1-65535 with --setup-iptables (its rules match on it), got 'abc'"
    )
    assert node.entries(VIP) == []


def test_a_shorter_prefix_of_the_vip_is_left_alone_everywhere_and_the_32_added_once(node: Namespace) -> None:
    node.ip("link", "add", "eth9", "type", "bridge")
    node.ip("addr", "add", f"{VIP}/24", "dev", LINK)
    node.ip("addr", "add", f"{VIP}/24", "dev", "eth9")
    for _ in range(2):
        done = one_shot(node)
        assert done.returncode == 0, done.stderr
    assert node.entries(VIP) == [(LINK, 24, "global"), (LINK, 32, "global"), ("eth9", 24, "global")]


def test_a_32_on_another_link_is_still_moved(node: Namespace) -> None:
    node.ip("link", "add", "eth9", "type", "bridge")
    node.ip("addr", "add", f"{VIP}/32", "dev", "eth9")
    assert one_shot(node).returncode == 0
    assert node.entries(VIP) == [(LINK, 32, "global")]


def test_ipv6_a_64_of_the_vip_on_its_link_counts_as_present(node: Namespace) -> None:
    node.ip("link", "set", LINK, "up")
    node.ip("addr", "add", f"{VIP6}/64", "dev", LINK, "nodad")
    done = node.exec(SIDECAR, f"--ip-address={VIP6}", f"--interface={LINK}", "--daemon=false", check=False)
    assert done.returncode == 0, done.stderr
    assert node.entries(VIP6) == [(LINK, 64, "global")]  # the kernel's EEXIST, as Go sees it


def test_a_scope_host_32_is_kept_as_it_is_and_never_goes_missing(
    node: Namespace, daemons: list[Daemon]
) -> None:
    node.ip("link", "set", LINK, "up")
    node.ip("addr", "add", f"{VIP}/32", "scope", "host", "dev", LINK)
    monitor = AddressMonitor(node.name, VIP)
    try:
        assert one_shot(node).returncode == 0
        daemon = Daemon(node, "--sync-interval=100ms")
        daemons.append(daemon)
        time.sleep(0.6)  # the initial pass and about five periodic ones
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.wait() == 0
        time.sleep(0.2)  # notifications still on their way to `ip monitor`
    finally:
        monitor.stop()
    assert (
        monitor.events == []
    )  # not one deletion (nor re-addition) of the VIP, measured by the kernel's word
    assert node.entries(VIP) == [(LINK, 32, "host")]


def test_an_address_with_a_zone_exits_255_as_go_cannot_parse_it(node: Namespace) -> None:
    done = node.exec(SIDECAR, "--ip-address=fe80::1%lo", f"--interface={LINK}", "--daemon=false", check=False)
    assert done.returncode == 255
    assert done.stderr.startswith("F")
    assert done.stderr.rstrip().endswith(
        'Failed to create sidecar application, err unable to parse IP address "fe80::1%lo" - invalid CIDR '
        "address: fe80::1%lo/128"
    )
    assert node.entries("fe80::1") == []


def test_an_ipv4_mapped_address_fails_every_pass_in_gos_words_and_adds_nothing(
    node: Namespace, daemons: list[Daemon]
) -> None:
    mapped = "::ffff:10.96.0.9"
    node.ip("addr", "add", "10.96.0.9/32", "dev", "lo")  # Go leaves it: not a copy of its /128
    done = node.exec(SIDECAR, f"--ip-address={mapped}", f"--interface={LINK}", "--daemon=false", check=False)
    assert done.returncode == 0, done.stderr
    assert 'Using IP address "::ffff:10.96.0.9"' in done.stderr
    assert "] Error ensuring ip address: could not add IPV4 addresses invalid argument\n" in done.stderr
    daemon = Daemon(node, "--sync-interval=1h", vip=mapped)
    daemons.append(daemon)
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert "Error ensuring ip address: could not add IPV4 addresses invalid argument" in "".join(daemon.lines)
    assert node.entries(mapped) == [] and node.entries("10.96.0.9") == [("lo", 32, "global")]


def test_loopback_vip_on_another_link_leaves_127_0_0_1_8_on_lo(node: Namespace) -> None:
    # Issue 18 row 8: 127.0.0.1/8 was removed from lo. As Go, only a whole-length copy would be.
    done = node.exec(SIDECAR, "--ip-address=127.0.0.1", f"--interface={LINK}", "--daemon=false", check=False)
    assert done.returncode == 0, done.stderr
    assert node.entries("127.0.0.1") == [(LINK, 32, "global"), ("lo", 8, "host")]
