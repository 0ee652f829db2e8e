"""Cases 7 and 8: a slow reader behind a fast writer (memory stays bounded by the buffer limits, nothing is
lost), and SIGTERM under load (open tunnels drain intact, new ones are still served, exit 0). Both through
the real Envoy gateway to the echo backend."""

from __future__ import annotations

import signal
import time

import pytest

from .conftest import Lab
from .lab import Proxy, ReadyWatch, Stream, expect_closed, roundtrip, settled, wait_for

MIB = 1 << 20


@pytest.mark.envoy
def test_slow_reader_fast_writer(lab: Lab) -> None:
    """The client writes as fast as it can and reads nothing until the writer is blocked: every buffer on the
    way (the kernel's, Envoy's, the echo's, apiproxy's) is full, and apiproxy's RSS has grown by less than
    16 MiB. Then the client reads and every byte comes back intact."""
    proxy = lab.proxy
    before = proxy.closed()
    rss_before = proxy.rss_kib()
    with ReadyWatch(proxy) as ready:
        stream = Stream(proxy.address, seed=7, read=False)
        assert stream.stalled(), f"the writer was never pushed back ({stream.sent} bytes sent)"
        rss_stalled = proxy.rss_kib()
        sent = stream.finish()
        lab.held.exchange()
    growth = (rss_stalled - rss_before) / 1024
    print(f"slow reader: {sent / MIB:.0f} MiB in flight when the writer blocked; apiproxy RSS "
          f"{rss_before / 1024:.1f} MiB before, {rss_stalled / 1024:.1f} MiB stalled")  # fmt: skip
    assert growth < 16, f"RSS grew by {growth:.1f} MiB while the reader stalled"
    expect_closed(proxy, before, completed=1)
    ready.check()
    settled(proxy, lab.fds, active=1)


@pytest.mark.envoy
def test_sigterm_under_load(lab: Lab) -> None:
    """SIGTERM while 6 tunnels stream data: /ready turns 503 at once, new connections are still served (on a
    node-local VIP nothing would steer them elsewhere), the open tunnels finish intact, the process exits 0
    before the drain deadline once they have (no successor awaited: no --handover-socket)."""
    proxy = Proxy(lab.net, f"127.0.0.1:{lab.envoy_port}", "--drain-timeout", "20s").start()
    try:
        streams = [Stream(proxy.address, seed=seed) for seed in range(6)]
        with ReadyWatch(proxy) as ready:
            time.sleep(0.3)
            signalled = time.monotonic()
            proxy.process.signal(signal.SIGTERM)
            wait_for(lambda: any(o == 503 for _, o in ready.samples), 2, "/ready 503 after SIGTERM")
            not_ready_after = time.monotonic() - signalled
            roundtrip(proxy.address)  # a new tunnel while draining: served
            time.sleep(0.5)
            assert proxy.process.process is not None and proxy.process.process.poll() is None
            moved = [stream.finish() for stream in streams]  # each checks its bytes came back intact
            status = proxy.process.wait(30)
        answered = [o for _, o in ready.samples if isinstance(o, int)]
        assert status == 0
        assert min(moved) > 0
        assert not_ready_after < 1.0
        assert set(answered) <= {200, 503} and max(s for s, _ in ready.samples) < 1.0
        assert "drained; 0 tunnels were cut" in proxy.process.stderr()
    finally:
        proxy.stop()
