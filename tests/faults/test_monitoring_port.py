"""Case: the monitoring port under attack (issue 18 rows 1, 2, 5, 9). Port 16910 is on the node's network
(hostNetwork, hostPort): every pod can reach it. Each test mounts one attack, then checks the bound:
kubelet-style probes (a new connection, one GET, 1 s for all of it) all answer 200 in time, memory stays
bounded, a body is never read as a request, a gateway's reason phrase reaches the text log escaped and
capped (and the log formatters escape and cap any message).

The port tests run `apiproxy run` in a network namespace of their own with the monitoring port on
0.0.0.0:16910, as deployed. Attackers and probers are threads in that namespace: 127.0.0.1 is the kubelet
(the chart points its probes at `host: 127.0.0.1`), 127.0.0.2 a hostNetwork pod, 192.0.2.x on a veth link
are pods and Prometheus reaching the node's address. Figures are printed (`pytest -s`).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import logging
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from apiproxy import logs
from lab.proxy import ApiproxyProcess

from .lab import READY_LIMIT, FaultGateway, Net, Proxy, answer, attempt, enter_netns, network_namespace

T = TypeVar("T")

PORT = 16910
NODE = "192.0.2.1"  # the node's address: where pods reach the hostPort
PODS = [f"192.0.2.{10 + i}" for i in range(10)]  # attackers' sources
PROMETHEUS = "192.0.2.100"
KUBELET = "127.0.0.1"
HOST_NETWORK_POD = "127.0.0.2"  # loopback too: a hostNetwork pod can take any 127/8 source
ATTACK_SECONDS = 8.0  # four deadlines' worth (2 s each); the issue's attacks held probes off indefinitely
PROBE_EVERY = 0.5


# --- the lab ------------------------------------------------------------------------------------------------


@dataclass
class PortLab:
    netns: str
    process: ApiproxyProcess

    def status(self, field_name: str) -> int:
        """A /proc/PID/status figure in KiB (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field_name}")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def port_lab() -> Iterator[PortLab]:
    with network_namespace("apxm") as netns:
        ip = ["ip", "-n", netns]
        subprocess.run([*ip, "link", "add", "node", "type", "veth", "peer", "name", "pods"], check=True,
                       capture_output=True)  # fmt: skip
        for address in (NODE, *PODS, PROMETHEUS):
            subprocess.run(
                [*ip, "addr", "add", f"{address}/32", "dev", "node"], check=True, capture_output=True
            )
        for link in ("node", "pods"):
            subprocess.run([*ip, "link", "set", link, "up"], check=True, capture_output=True)
        process = ApiproxyProcess(
            ["run", "--listen", "127.0.0.1:8443", "--upstream", "127.0.0.1:9", "--destination", "x",
             "--metrics-address", f"0.0.0.0:{PORT}", "--no-access-log"],
            command=["ip", "netns", "exec", netns, sys.executable, "-m", "apiproxy"],
        )  # fmt: skip
        try:
            process.start()
            yield PortLab(netns, process)
        finally:
            process.cleanup()


# --- clients ------------------------------------------------------------------------------------------------


class Prober(threading.Thread):
    """Probes /ready the way the kubelet does, every PROBE_EVERY s: a new connection from `source`, one
    HTTP/1.1 GET, READY_LIMIT (1 s) for the whole exchange."""

    def __init__(self, netns: str, source: str, target: str) -> None:
        super().__init__(name=f"probe-{source}", daemon=True)
        self.netns, self.source, self.target = netns, source, target
        self.samples: list[tuple[float, int | str]] = []  # (seconds, status or what went wrong)
        self.stopped = threading.Event()

    def run(self) -> None:
        enter_netns(self.netns)
        while not self.stopped.is_set():
            started = time.monotonic()
            outcome = self.probe(started + READY_LIMIT)
            self.samples.append((time.monotonic() - started, outcome))
            self.stopped.wait(PROBE_EVERY)

    def probe(self, deadline: float) -> int | str:
        request = (f"GET /ready HTTP/1.1\r\nHost: {self.target}:{PORT}\r\nUser-Agent: kube-probe/1.31\r\n"
                   "Accept: */*\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
        reply = b""
        try:
            with socket.socket() as sock:
                sock.bind((self.source, 0))
                sock.settimeout(READY_LIMIT)
                sock.connect((self.target, PORT))
                sock.sendall(request)
                while (left := deadline - time.monotonic()) > 0:
                    sock.settimeout(left)
                    if not (data := sock.recv(4096)):
                        break
                    reply += data
                else:
                    return "timeout"
        except OSError as error:
            return type(error).__name__
        match = re.match(rb"HTTP/1\.1 (\d{3}) ", reply)
        return int(match[1]) if match else f"answer {reply[:40]!r}"

    def stop(self) -> list[tuple[float, int | str]]:
        self.stopped.set()
        self.join(5)
        return self.samples


@contextlib.contextmanager
def probers(lab: PortLab) -> Iterator[dict[str, Prober]]:
    """The kubelet on loopback and Prometheus-like probes from a pod address, while the block runs."""
    running = {"loopback": Prober(lab.netns, KUBELET, KUBELET), "pod": Prober(lab.netns, PROMETHEUS, NODE)}
    for prober in running.values():
        prober.start()
    try:
        yield running
    finally:
        for prober in running.values():
            prober.stop()


def check_probes(running: dict[str, Prober], attack: str, least: int = int(ATTACK_SECONDS / 1.5)) -> None:
    """Every probe answered 200 within READY_LIMIT, and at least `least` of each kind were made."""
    for kind, prober in running.items():
        samples = prober.samples
        good = [s for s, outcome in samples if outcome == 200 and s <= READY_LIMIT]
        slowest = max((s for s, _ in samples), default=0.0)
        print(f"{attack}: {kind} probes {len(good)}/{len(samples)} answered 200 within {READY_LIMIT:g}s, "
              f"slowest {slowest * 1000:.0f} ms")  # fmt: skip
    for kind, prober in running.items():
        bad = [(round(s, 3), outcome) for s, outcome in prober.samples if outcome != 200 or s > READY_LIMIT]
        assert len(prober.samples) >= least, prober.samples
        assert not bad, f"{attack}: {kind} probes failed: {bad[:5]} of {len(prober.samples)}"


class Crowd(threading.Thread):
    """`count` connections from each of `sources`, each sending `opening` and then `drip` every
    `drip_every` s, never finishing; a dropped one is replaced (one new connection per 5 ms at most, and
    at most MAX_CONNECTS in all): the attacker who reconnects whenever the server lets go."""

    MAX_CONNECTS = 5000

    def __init__(self, netns: str, sources: list[str], count: int, target: str, opening: bytes,
                 drip: bytes = b"", drip_every: float = 5.0) -> None:  # fmt: skip
        super().__init__(name="crowd", daemon=True)
        self.netns, self.target, self.opening = netns, target, opening
        self.drip, self.drip_every = drip, drip_every
        self.slots: list[tuple[str, socket.socket | None, float]] = [(s, None, 0.0) for s in sources
                                                                      for _ in range(count)]  # fmt: skip
        self.connects = self.drops = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        enter_netns(self.netns)
        try:
            while not self.stopped.is_set():
                self._fill()
                self._watch()
        finally:
            for _, sock, _ in self.slots:
                if sock is not None:
                    sock.close()

    def _fill(self) -> None:
        for index, (source, sock, _) in enumerate(self.slots):
            if sock is not None or self.connects >= self.MAX_CONNECTS or self.stopped.is_set():
                continue
            self.connects += 1
            fresh = socket.socket()
            try:
                fresh.bind((source, 0))
                fresh.settimeout(1)
                fresh.connect((self.target, PORT))
                fresh.sendall(self.opening)
                fresh.setblocking(False)
            except OSError:
                fresh.close()
                self.drops += 1
            else:
                self.slots[index] = (source, fresh, time.monotonic() + self.drip_every)
            self.stopped.wait(0.005)

    def _watch(self) -> None:
        live = [sock for _, sock, _ in self.slots if sock is not None]
        readable = select.select(live, [], [], 0.05)[0] if live else []
        now = time.monotonic()
        for index, (source, sock, next_drip) in enumerate(self.slots):
            if sock is None:
                continue
            try:
                if sock in readable and not sock.recv(65536):
                    raise ConnectionResetError  # closed by the server (any answer counts as a drop too)
                if self.drip and now >= next_drip:
                    sock.send(self.drip)
                    self.slots[index] = (source, sock, now + self.drip_every)
            except OSError:
                sock.close()
                self.slots[index] = (source, None, 0.0)
                self.drops += 1

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)


SLOW_HEAD = b"GET /ready HTTP/1.1\r\n"

# name: (attackers' sources, connections from each, their target, what each sends first, then every 5 s)
ATTACKS: dict[str, tuple[list[str], int, str, bytes, bytes]] = {
    # The row 1: 32 connections from one pod, one header byte every 5 s.
    "slow_heads": ([PODS[0]], 32, NODE, SLOW_HEAD, b"X"),
    # 32 connections that send nothing, replaced as soon as they are dropped.
    "silent_reconnecting": ([PODS[0]], 32, NODE, b"", b""),
    # 10 pods x 8 slow heads: more than a per-source cap, more than the shared slots.
    "slow_heads_from_10_pods": (PODS, 8, NODE, SLOW_HEAD, b"X"),
    # A hostNetwork pod on a loopback source, at the kubelet's own address.
    "slow_heads_on_loopback": ([HOST_NETWORK_POD], 32, KUBELET, SLOW_HEAD, b"X"),
}


@pytest.mark.netns
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_probes_answer_in_time_under_slow_and_silent_connections(port_lab: PortLab, attack: str) -> None:
    sources, count, target, opening, drip = ATTACKS[attack]
    attackers = Crowd(port_lab.netns, sources, count, target, opening, drip)
    cpu = port_lab.cpu_seconds()
    attackers.start()
    try:
        time.sleep(0.5)  # the crowd is in place before the first probe counts
        with probers(port_lab) as running:
            time.sleep(ATTACK_SECONDS)
    finally:
        attackers.stop()
    cpu = port_lab.cpu_seconds() - cpu
    print(f"{attack}: {attackers.connects} attacking connections, {attackers.drops} dropped by the server; "
          f"apiproxy used {cpu:.2f} s of CPU in {ATTACK_SECONDS + 0.5:g} s")  # fmt: skip
    check_probes(running, attack)


# --- oversized heads ----------------------------------------------------------------------------------------

HUGE_LINE = 64 * 1024
HUGE_LINES = 99


@dataclass
class HugeHead:
    sock: socket.socket
    sent: int = 0
    answer: bytes = b""
    outcome: str = ""  # the status answered, or how the connection ended


def huge_heads(sources: list[str], per_source: int, seconds: float = 20) -> list[str]:
    """Connections that each send a head of 99 header lines of 64 KiB (6.3 MiB) while reading what comes
    back, all at once; what each one got: the status it was answered, or how it ended."""
    line = b"X-Big: " + b"a" * (HUGE_LINE - 9) + b"\r\n"
    total = len(SLOW_HEAD) + HUGE_LINES * len(line)
    clients: list[HugeHead] = []
    try:
        for source in sources:
            for _ in range(per_source):
                client = HugeHead(socket.socket())
                clients.append(client)
                client.sock.bind((source, 0))
                client.sock.settimeout(5)
                client.sock.connect((NODE, PORT))
                client.sock.setblocking(False)
        deadline = time.monotonic() + seconds
        while (pending := [c for c in clients if not c.outcome]) and time.monotonic() < deadline:
            by_sock = {c.sock: c for c in pending}
            sending = [c.sock for c in pending if c.sent < total]
            readable, writable, _ = select.select(list(by_sock), sending, [], 0.1)
            for sock in readable:
                client = by_sock[sock]
                try:
                    data = sock.recv(65536)
                except OSError as error:
                    client.outcome = errno.errorcode.get(error.errno or 0, "error")
                    continue
                client.answer += data
                if match := re.match(rb"HTTP/1\.[01] (\d{3}) ", client.answer):
                    client.outcome = match[1].decode()
                elif not data:
                    client.outcome = "closed"
            for sock in writable:
                client = by_sock[sock]
                if client.outcome:
                    continue
                chunk = SLOW_HEAD if client.sent == 0 else line[(client.sent - len(SLOW_HEAD)) % len(line) :]
                try:
                    client.sent += sock.send(chunk)
                except BlockingIOError:
                    pass
                except OSError:
                    client.sent = total  # the server stopped reading: what did it answer?
    finally:
        for client in clients:
            client.sock.close()
    return [client.outcome or "timeout" for client in clients]


def in_namespace(netns: str, function: Callable[..., T], *args: object) -> T:
    net = Net(netns)
    try:
        return net.call(function, *args)
    finally:
        net.close()


@pytest.mark.netns
def test_huge_heads_are_refused_with_431_and_memory_stays_bounded(port_lab: PortLab) -> None:
    """32 connections from 4 pods (8 each: the per-source cap) at once, a round every 0.1 s for 4 s."""
    before_rss, before_peak = port_lab.status("VmRSS"), port_lab.status("VmHWM")
    outcomes: list[str] = []
    with probers(port_lab) as running:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline and len(outcomes) < 40 * 32:
            outcomes += in_namespace(port_lab.netns, huge_heads, PODS[:4], 8)
            time.sleep(0.1)
    peak = port_lab.status("VmHWM")
    time.sleep(1)
    after_rss = port_lab.status("VmRSS")
    print(f"huge heads: {len(outcomes) // 32} rounds, outcomes {sorted(set(outcomes))} "
          f"({outcomes.count('431')}/{len(outcomes)} 431), RSS {before_rss // 1024} MiB -> peak "
          f"{peak // 1024} MiB (peak before {before_peak // 1024} MiB) -> {after_rss // 1024} MiB afterwards")  # fmt: skip
    check_probes(running, "huge heads", least=4)
    assert outcomes == ["431"] * len(outcomes), collections.Counter(outcomes)
    assert peak - max(before_rss, before_peak) < 50 * 1024, "peak RSS grew by 50 MiB or more"
    assert after_rss - before_rss < 10 * 1024, "RSS did not come back"


# --- a request body -----------------------------------------------------------------------------------------


def exchange(request: bytes) -> bytes:
    """Send `request` from a pod's address, read until the server closes (or 3 s of silence)."""
    with socket.socket() as sock:
        sock.bind((PROMETHEUS, 0))
        sock.settimeout(3)
        sock.connect((NODE, PORT))
        sock.sendall(request)
        reply = b""
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while data := sock.recv(65536):
                reply += data
    return reply


SMUGGLED = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.netns
@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /ready HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED),
        b"GET /ready HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
        % (len(SMUGGLED), SMUGGLED),
    ],
    ids=["content_length", "chunked"],
)
def test_a_body_is_refused_never_read_as_a_request(port_lab: PortLab, request_bytes: bytes) -> None:
    reply = in_namespace(port_lab.netns, exchange, request_bytes)
    statuses = re.findall(rb"HTTP/1\.[01] (\d{3}) ", reply)
    print(f"body: statuses answered {statuses}")
    assert statuses == [b"400"], reply[:500]
    assert b"# TYPE" not in reply


# --- a gateway's reason phrase, and any text from a peer, in the application log ----------------------------


def test_a_hostile_reason_phrase_reaches_the_text_log_escaped_and_capped() -> None:
    net = Net()
    fault = FaultGateway(net, None).start()
    proxy = Proxy(net, f"127.0.0.1:{fault.port}").start()
    try:
        fault.faults.extend([answer(b"HTTP/1.1 503 Bad\x1b[31mRED\x07\r\n\r\n"),
                             answer(b"HTTP/1.1 503 " + b"L" * 8000 + b"\r\n\r\n")])  # fmt: skip
        for _ in range(2):
            attempt(proxy.address)
        deadline = time.monotonic() + 10
        while proxy.process.stderr().count(" 503 ") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        log = proxy.process.stderr()
    finally:
        proxy.stop()
        fault.stop()
        net.close()
    lines = [line for line in log.splitlines() if " 503 " in line]
    print("reason phrases:", [(len(line), line[:120]) for line in lines])
    assert len(lines) == 2, log[-3000:]
    assert "\x1b" not in log and "\x07" not in log
    assert r"Bad\x1b[31mRED\x07" in lines[0]
    assert "L" * 1100 not in lines[1]
    assert max(len(line) for line in lines) < 1200


def record(message: str, *args: object, error: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(error), error, error.__traceback__) if error is not None else None
    return logging.LogRecord("apiproxy.tunnel", logging.WARNING, __file__, 1, message, args, exc_info)


TEXT = logs.TextFormatter("%(levelname)s %(name)s: %(message)s")


@pytest.mark.parametrize(
    "character", ["\x1b", "\x07", "\r", "\n", "\t", "\x00", "\x7f", "\x9b", "\x85"], ids=repr
)
def test_text_log_escapes_every_control_character(character: str) -> None:
    line = TEXT.format(record("gateway answered %s", f"503 Bad{character}[31mRED"))
    assert line == f"WARNING apiproxy.tunnel: gateway answered 503 Bad\\x{ord(character):02x}[31mRED"


def test_text_log_caps_a_message_and_says_how_much_is_left_out() -> None:
    line = TEXT.format(record("gateway answered 503 %s", "L" * 8000))
    message = line.split(": ", 1)[1]
    assert message == f"gateway answered 503 {'L' * (logs.MESSAGE_LIMIT - 21)}… [7021 more characters]"


def test_text_log_keeps_a_tracebacks_lines_but_escapes_what_is_in_them() -> None:
    try:
        raise ValueError("reason \x1b[2J")
    except ValueError as error:
        line = TEXT.format(record("failed", error=error))
    assert "\x1b" not in line
    assert line.splitlines()[0] == "WARNING apiproxy.tunnel: failed"
    assert line.splitlines()[-1] == "ValueError: reason \\x1b[2J"


def test_text_log_leaves_the_record_alone_for_other_handlers() -> None:
    hostile = record("%s", "\x1b" + "L" * 2000)
    TEXT.format(hostile)
    assert hostile.getMessage() == "\x1b" + "L" * 2000


def test_json_log_escapes_c1_and_del_too_and_caps() -> None:
    line = logs.JSONFormatter().format(record("503 %s", "Bad\x1b\x9b\x7f" + "L" * 2000))
    assert not re.search("[\x00-\x1f\x7f-\x9f]", line)
    message = json.loads(line)["msg"]
    assert message.startswith("503 Bad\x1b\x9b\x7fLLL")
    assert len(message) == logs.MESSAGE_LIMIT + len("… [1007 more characters]")
