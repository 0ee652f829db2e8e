"""The fault lab: a real `apiproxy run` process between test clients and a real Envoy gateway, with a
scriptable fault peer where Envoy cannot produce the fault, and the checks every fault case ends with.

Clients are plain blocking sockets run through a `Net` (a thread inside a network namespace the test
created, or this one), so the same helpers serve loopback tests and the DNS/VIP tests in a netns.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import ctypes
import hashlib
import os
import random
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from lab.backend import EchoServer
from lab.gateway import DESTINATION, free_port
from lab.proxy import ApiproxyProcess

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
READY_LIMIT = 1.0  # kubelet's probe timeout: /ready must answer within it throughout every fault


def enter_netns(name: str | None) -> None:
    """Move the calling thread into network namespace `name` (sockets it creates then live there)."""
    if name is None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({name})")
    finally:
        os.close(fd)


class Net:
    """Runs blocking client code, and an asyncio loop for servers, inside one network namespace."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._pool = concurrent.futures.ThreadPoolExecutor(8, initializer=enter_netns, initargs=(netns,))
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run_loop() -> None:
            enter_netns(netns)
            asyncio.set_event_loop(self.loop)
            started.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run_loop, name=f"net-{netns}", daemon=True)
        self._thread.start()
        started.wait(10)

    def call(self, function: Callable[..., T], *args: Any, timeout: float = 60) -> T:
        return self._pool.submit(function, *args).result(timeout)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


# --- peers -----------------------------------------------------------------------------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class FaultGateway:
    """Stands where the gateway is. Each new connection takes the next queued fault script; with none
    queued it is relayed byte for byte to the real gateway (`target`), so unaffected tunnels are real.
    `mode` makes the port refuse connections or blackhole them (a full accept queue drops SYNs)."""

    def __init__(
        self, net: Net, target: tuple[str, int] | None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.net = net
        self.target = target
        self.host = host
        self.port = port
        self.faults: collections.deque[Script] = collections.deque()
        self.connections = 0
        self.heads: list[bytes] = []  # the first bytes of each connection (the CONNECT request)
        self._server: asyncio.Server | None = None
        self._blackhole: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> FaultGateway:
        self.net.run(self._listen())
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, reuse_address=True, backlog=4096
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    def serve(self) -> None:
        self._drop_blackhole()
        if self._server is None:
            self.net.run(self._listen())

    def refuse(self) -> None:
        """Nothing listens on the port: connects are refused (RST)."""
        self._drop_blackhole()
        self._close_server()

    def blackhole(self) -> None:
        """The port listens with a full accept queue: Linux drops further SYNs, so connects time out."""
        self._close_server()
        listener = self.net.call(self._full_listener)
        self._blackhole.extend(listener)

    def _full_listener(self) -> list[socket.socket]:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(0)
        fillers = []
        for _ in range(2):  # listen(0) queues one connection; fill it (and the SYN queue slot) first
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect((self.host, self.port))
            fillers.append(filler)
        time.sleep(0.2)
        return [listener, *fillers]

    def _drop_blackhole(self) -> None:
        for sock in self._blackhole:
            sock.close()
        self._blackhole.clear()

    def _close_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:

            async def close() -> None:
                server.close()

            self.net.run(close())

    def stop(self) -> None:
        self._drop_blackhole()
        self._close_server()

        async def cancel() -> None:
            for task in list(self._tasks):
                task.cancel()

        self.net.run(cancel())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            script = self.faults.popleft() if self.faults else self._relay
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.target is not None
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        first = True

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bool) -> None:
            nonlocal first
            try:
                while data := await src.read(65536):
                    if record and first:
                        self.heads.append(data)
                        first = False
                    dst.write(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()
            except (ConnectionError, OSError):
                dst.transport.abort()

        try:
            await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))
        finally:
            up_writer.close()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def answer(head: bytes, then: Script | None = None) -> Script:
    """Reads the CONNECT request, sends `head`, then runs `then` (default: wait for the proxy to close)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(head)
        await writer.drain()
        if then is not None:
            await then(reader, writer)
        else:
            await reader.read()

    return script


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # accepts, reads the CONNECT, never answers


async def endless_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\n")
    line = b"X-Endless: " + b"e" * 51 + b"\r\n"
    for _ in range(64):  # bounded: 64 writes of 4 KiB, far past any sane head limit, fast enough to beat
        writer.write(line * 64)  # the answer timeout even on a loaded loop
        await writer.drain()
        if writer.is_closing() or reader.at_eof():
            return


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), the way a crashed peer or a stateful firewall ends a connection."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def echo_then_reset(count: int) -> Script:
    async def then(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = 0
        while received < count:
            data = await reader.read(65536)
            if not data:
                return
            received += len(data)
            writer.write(data)
            await writer.drain()
        reset(writer)

    return then


OK_200 = b"HTTP/1.1 200 Connection established\r\n\r\n"


class Echo:
    """The shoot's API server stand-in: echoes every byte, carries half-close."""

    def __init__(self, net: Net, host: str = "127.0.0.1") -> None:
        self.net = net
        self.server = EchoServer()
        self.port = net.run(self.server.start(host))

    def stop(self) -> None:
        self.net.run(self.server.stop())


# --- the proxy -------------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


class Proxy:
    """`apiproxy run` as a child process with its monitoring port, and what /proc and ss say of it."""

    def __init__(self, net: Net, upstream: str, *extra: str, listen: str | None = None,
                 destination: str = DESTINATION, command_prefix: list[str] | None = None) -> None:  # fmt: skip
        self.net = net
        self.port = free_port() if listen is None else int(listen.rsplit(":", 1)[1])
        self.metrics_port = free_port()
        listen = listen or f"127.0.0.1:{self.port}"
        self.listen_host = listen.rsplit(":", 1)[0]
        args = ["run", "--listen", listen, "--upstream", upstream, "--destination", destination,
                "--metrics-address", f"127.0.0.1:{self.metrics_port}", "--no-access-log", *extra]  # fmt: skip
        # e.g. ["prlimit", "--nofile=64:64"]: both exec, so the PID stays apiproxy's.
        command = [*net.prefix(), *(command_prefix or []), sys.executable, "-m", "apiproxy"]
        self.process = ApiproxyProcess(args, command=command)

    def start(self) -> Proxy:
        self.process.start()
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> tuple[str, int]:
        return (self.listen_host, self.port)

    def stop(self) -> None:
        self.process.cleanup()

    # --- monitoring ---

    def get(self, path: str, timeout: float = 5) -> tuple[int, bytes]:
        return self.net.call(http_get, "127.0.0.1", self.metrics_port, path, timeout)

    def metrics(self) -> dict[str, float]:
        status, body = self.get("/metrics")
        assert status == 200, status
        samples: dict[str, float] = {}
        for line in body.decode().splitlines():
            match = _SAMPLE.match(line)
            if match and not line.startswith("#"):
                samples[match[1] + (match[2] or "")] = float(match[3])
        return samples

    def closed(self) -> collections.Counter[str]:
        """Tunnels closed so far, by reason."""
        counts: collections.Counter[str] = collections.Counter()
        for name, value in self.metrics().items():
            if name.startswith("apiproxy_tunnels_closed_total{"):
                reason = re.search(r'reason="([^"]*)"', name)
                assert reason is not None
                counts[reason[1]] += int(value)
        return counts

    def active(self) -> int:
        return int(self.metrics().get("apiproxy_tunnels_active", -1))

    # --- the process, as the kernel sees it ---

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close_wait(self) -> list[str]:
        """The proxy's sockets in CLOSE_WAIT: a peer closed and the proxy never did."""
        done = subprocess.run([*self.net.prefix(), "ss", "-tanpH", "state", "close-wait"],
                              capture_output=True, text=True, timeout=20, check=True)  # fmt: skip
        return [line for line in done.stdout.splitlines() if f"pid={self.pid}," in line]


def http_get(host: str, port: int, path: str, timeout: float) -> tuple[int, bytes]:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


class ReadyWatch:
    """Polls /ready every 100 ms from a thread of its own and records how long each answer took."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.samples: list[tuple[float, int | str]] = []  # (seconds, status or error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ready-watch", daemon=True)

    def __enter__(self) -> ReadyWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        enter_netns(self.proxy.net.netns)
        while not self._stop.is_set():
            started = time.monotonic()
            outcome: int | str
            try:
                outcome = http_get("127.0.0.1", self.proxy.metrics_port, "/ready", READY_LIMIT * 2)[0]
            except OSError as error:
                outcome = type(error).__name__
            self.samples.append((time.monotonic() - started, outcome))
            self._stop.wait(0.1)

    @property
    def slowest(self) -> float:
        return max((s for s, _ in self.samples), default=0.0)

    def check(self, allowed: tuple[int, ...] = (200,)) -> None:
        assert self.samples, "no /ready sample taken"
        bad = [(s, o) for s, o in self.samples if o not in allowed or s > READY_LIMIT]
        assert not bad, (
            f"/ready not answered {allowed} within {READY_LIMIT}s: {bad[:5]} of {len(self.samples)}"
        )


# --- clients ---------------------------------------------------------------------------------------------


def payload(size: int, seed: int | None = None) -> bytes:
    return random.Random(seed).randbytes(size)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    chunks: list[bytes] = []
    received = 0
    while received < count:
        data = sock.recv(min(1 << 20, count - received))
        if not data:
            break
        chunks.append(data)
        received += len(data)
    return b"".join(chunks)


def recv_until_closed(sock: socket.socket, limit: int = 1 << 26) -> tuple[bytes, str]:
    """All bytes until the peer closes: (bytes, 'eof' | 'reset' | 'timeout')."""
    chunks: list[bytes] = []
    received = 0
    try:
        while received < limit:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks), "eof"
            chunks.append(data)
            received += len(data)
    except ConnectionResetError:
        return b"".join(chunks), "reset"
    except TimeoutError:
        return b"".join(chunks), "timeout"
    return b"".join(chunks), "limit"


class Held:
    """A tunnel held open across a fault; `exchange` proves it still carries data intact."""

    def __init__(self, address: tuple[str, int], timeout: float = 10) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.exchange(1024)

    def exchange(self, size: int = 256 * 1024) -> None:
        data = payload(size)
        sender = threading.Thread(target=self.sock.sendall, args=(data,), daemon=True)
        sender.start()
        back = recv_exactly(self.sock, size)
        sender.join(10)
        assert digest(back) == digest(data), f"tunnel corrupted or cut: {len(back)} of {size} bytes came back"

    def close(self) -> None:
        self.sock.close()


def roundtrip(address: tuple[str, int], size: int = 64 * 1024, timeout: float = 10) -> None:
    """A whole tunnel: send, read the echo back, close; the checksum must match.

    The client does not half-close first: Envoy 1.40 as the gateway ends the whole HTTP/1.1 CONNECT
    stream on a downstream FIN, dropping the echo still in flight (half-close has tests of its own).
    """
    data = payload(size)
    with socket.create_connection(address, timeout=timeout) as sock:
        sender = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
        sender.start()
        back = recv_exactly(sock, size)
        sender.join(10)
    assert digest(back) == digest(data), f"{len(back)} of {size} bytes came back intact"


def attempt(
    address: tuple[str, int], send: bytes = b"hello", timeout: float = 10
) -> tuple[bytes, str, float]:
    """A tunnel expected to fail: what came back, how it ended, and how long that took."""
    started = time.monotonic()
    with socket.create_connection(address, timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(send)
        back, end = recv_until_closed(sock)
    return back, end, time.monotonic() - started


# --- the checks every case ends with -------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout:g}s")


def settled(proxy: Proxy, fds: int, active: int = 0, timeout: float = 10) -> None:
    """After a fault: the tunnels it hit are gone, no descriptor leaked, no socket is left in CLOSE_WAIT."""
    wait_for(lambda: proxy.active() == active, timeout, f"{active} tunnels active (now {proxy.active()})")
    wait_for(lambda: proxy.fds() <= fds, timeout, f"fd count back to {fds} (now {proxy.fds()})")
    assert proxy.close_wait() == [], proxy.close_wait()


def expect_closed(proxy: Proxy, before: collections.Counter[str], **reasons: int) -> None:
    """The tunnels closed since `before` are exactly `reasons` (reason -> count)."""

    def delta() -> dict[str, int]:
        now = proxy.closed()
        return {k: now[k] - before[k] for k in now if now[k] != before[k]}

    with contextlib.suppress(AssertionError):
        wait_for(lambda: delta() == reasons, 5)
    assert delta() == reasons


class Stream:
    """A tunnel streaming 1 MiB blocks to the echo backend until `finish()`, hashing both directions on the
    fly (no payload held in memory), so a test can keep traffic flowing across a fault for as long as it
    needs, then check that every byte came back intact."""

    BLOCK = 1 << 20

    def __init__(
        self, address: tuple[str, int], seed: int = 0, max_blocks: int = 2048, read: bool = True
    ) -> None:
        self.sock = socket.create_connection(address, timeout=30)
        self.sock.sendall(b"s")  # established before returning: no fault queued later can take its dial
        assert self.sock.recv(1) == b"s", "stream tunnel not established"
        self.seed = seed
        self.max_blocks = max_blocks
        self.sent = 0
        self.received = 0
        self._sent_hash = hashlib.sha256()
        self._received_hash = hashlib.sha256()
        self._stop = threading.Event()
        self.reading = threading.Event()
        if read:
            self.reading.set()
        self.error: BaseException | None = None
        self._sender = threading.Thread(target=self._send, daemon=True)
        self._receiver = threading.Thread(target=self._receive, daemon=True)
        self._sender.start()
        self._receiver.start()

    def _send(self) -> None:
        try:
            for index in range(self.max_blocks):
                if self._stop.is_set():
                    break
                block = random.Random(self.seed * 100_000 + index).randbytes(self.BLOCK)
                self._sent_hash.update(block)
                self.sock.sendall(block)
                self.sent += len(block)
        except BaseException as error:  # reported by finish()
            self.error = error
        self._stop.set()

    def _receive(self) -> None:
        # Never block in recv() for long: the last echoed bytes can arrive before the sender thread has
        # counted them or ended, and a recv() started then would wait for data that never comes. Waiting
        # in short select() slices re-checks "sender done and everything back" at least every 0.2 s.
        try:
            self.reading.wait()
            idle_since = time.monotonic()
            while not (self._stop.is_set() and not self._sender.is_alive() and self.received >= self.sent):
                if not select.select([self.sock], [], [], 0.2)[0]:
                    if time.monotonic() - idle_since > 30:
                        raise TimeoutError(f"no echo for 30 s ({self.received} of {self.sent} bytes back)")
                    continue
                data = self.sock.recv(1 << 20)
                if not data:
                    break
                idle_since = time.monotonic()
                self._received_hash.update(data)
                self.received += len(data)
        except BaseException as error:
            self.error = self.error or error

    def stalled(self, quiet: float = 1.0, within: float = 30) -> bool:
        """True once the sender has made no progress for `quiet` seconds: every buffer on the way is full."""
        deadline = time.monotonic() + within
        mark, since = self.sent, time.monotonic()
        while time.monotonic() < deadline and self._sender.is_alive():
            time.sleep(0.1)
            if self.sent != mark:
                mark, since = self.sent, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return True
        return False

    def finish(self, timeout: float = 60) -> int:
        """Stop sending, read everything back, close. Returns the bytes that made the round trip intact."""
        self._stop.set()
        self.reading.set()
        self._sender.join(timeout)
        self._receiver.join(timeout)
        self.sock.close()
        assert self.error is None, repr(self.error)
        assert self.received == self.sent, f"{self.received} of {self.sent} bytes came back"
        assert self._received_hash.digest() == self._sent_hash.digest(), "the bytes came back altered"
        return self.sent


ECHO_MAIN = """
import asyncio, sys
from lab.backend import EchoServer

async def main() -> None:
    port = await EchoServer().start()
    print(port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


class EchoProcess:
    """The echo backend in a process of its own: for tests whose clients alone use up this process's
    descriptor limit."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", ECHO_MAIN], stdout=subprocess.PIPE,
                                        stdin=subprocess.DEVNULL, text=True)  # fmt: skip
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@contextlib.contextmanager
def network_namespace(prefix: str = "apxf") -> Iterator[str]:
    """A fresh network namespace with loopback up, and its /etc/netns/<name>/hosts (empty): `ip netns
    exec` bind-mounts that file over /etc/hosts, and glibc reads it on every lookup, so a test can make
    the gateway's name fail, resolve or move by rewriting it in place. Both removed afterwards."""
    if os.geteuid() != 0:
        import pytest

        pytest.skip("network namespaces need root")
    name = f"{prefix}{os.getpid()}{random.randrange(1000)}"
    etc = Path("/etc/netns") / name
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
        etc.mkdir(parents=True)
        (etc / "hosts").write_text("")
        yield name
    finally:
        with contextlib.suppress(OSError):
            (etc / "hosts").unlink()
            etc.rmdir()
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def write_hosts(netns: str, text: str) -> None:
    """Rewrite the namespace's hosts file in place (same inode: it is bind-mounted into running processes)."""
    with open(Path("/etc/netns") / netns / "hosts", "r+") as hosts:
        hosts.truncate(0)
        hosts.write(text)
