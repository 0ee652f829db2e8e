"""`apiserver-proxy-sidecar`: a drop-in for the Go VIP sidecar's image (gardener/apiserver-proxy).

Same flags (`goflags`), same exit codes (flag error 2, missing --ip-address 1, an address Go cannot parse or
a failed cleanup 255, first SIGTERM/SIGINT 0 and a second 1; `--daemon=false` runs one pass and exits 0
even if it failed), klog-style lines on stderr with Go's words for what fails. The daemon also repairs on
netlink events, like `apiproxy run`. One thread, no event loop, nothing imported it does not use: it idles
at ~15 MiB RSS (it was ~38 MiB with pyroute2 and uvloop; the Go sidecar ~6 MiB).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

from .. import __version__
from ..config import ConfigError, IPAddress, VIPConfig, parse_int
from .goflags import USAGE_FLAGS, FlagError, Flags, HelpRequested, parse_flags
from .keeper import Keeper
from .options import build_vip
from .reconcile import CleanupError, PassReport

__all__ = ["build_config", "main", "parse_address", "parse_flags", "run"]

log = logging.getLogger("apiproxy.vip.sidecar")


class KlogFormatter(logging.Formatter):
    """klog's header: `Lmmdd hh:mm:ss.uuuuuu threadid file:line] msg`."""

    def __init__(self, headers: bool = True) -> None:
        super().__init__()
        self.headers = headers

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if not self.headers:
            return message
        # klog's letters: I W E F (its V(n) lines, our debug ones, are I lines too).
        level = (
            "F"
            if record.levelno >= logging.CRITICAL
            else "I"
            if record.levelno < logging.INFO
            else record.levelname[0]
        )
        stamp = time.strftime("%m%d %H:%M:%S", time.localtime(record.created))
        micros = int((record.created % 1) * 1_000_000)
        return f"{level}{stamp}.{micros:06d} {os.getpid():7d} {record.filename}:{record.lineno}] {message}"


def setup_logging(flags: Flags) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KlogFormatter(headers=not flags.switches["skip_headers"]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # klog's V(2) lines (a line per pass) are our debug level.
    verbose = int(flags.values["v"]) >= 2
    logging.getLogger("apiproxy").setLevel(logging.DEBUG if verbose else logging.INFO)


def parse_address(text: str) -> IPAddress:
    """The address as the Go sidecar reads it: netip.ParseAddr, then netlink.ParseAddr of `text/bits`,
    whose net.ParseCIDR refuses a zone (`fe80::1%lo`) that Python's ipaddress accepts. An IPv4-mapped
    address (`::ffff:10.96.0.9`) passes both in Go; what its passes do then is `netlink`'s model of Go's
    library. Raises ValueError in Go's words."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f'unable to parse IP address "{text}"') from None
    if address.version == 6 and address.scope_id is not None:
        raise ValueError(f'unable to parse IP address "{text}" - invalid CIDR address: {text}/128')
    return address


def build_config(flags: Flags, address: IPAddress) -> VIPConfig:
    setup_iptables = flags.switches["setup-iptables"]
    # Go keeps --port as a string it never reads (`--port=abc` runs); only the iptables rules use it here.
    port = 443
    if setup_iptables:
        try:
            port = parse_int("--port", flags.values["port"], minimum=1, maximum=65535)
        except ConfigError:
            raise ConfigError("--port", flags.values["port"],
                              "a port number 1-65535 with --setup-iptables (its rules match on it)") from None  # fmt: skip
    return build_vip(address, flags.values["interface"], flags.values["sync-interval"],
                     flags.switches["cleanup"], setup_iptables, port)  # fmt: skip


def _usage() -> str:
    return f"Usage of {sys.argv[0]} (v{__version__}):\n{USAGE_FLAGS}"


def run(argv: Sequence[str]) -> int:
    try:
        flags = parse_flags(argv)
    except HelpRequested:
        print(_usage(), file=sys.stderr, end="")
        return 0
    except FlagError as error:
        print(f"{error}\n{_usage()}", file=sys.stderr, end="")
        return 2
    setup_logging(flags)
    text = flags.values["ip-address"]
    if not text:
        log.error("--ip-address is required")
        return 1
    try:
        address = parse_address(text)
    except ValueError as error:
        log.critical("Failed to create sidecar application, err %s", error)
        return 255
    try:
        config = build_config(flags, address)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    log.info('Using IP address "%s"', text)
    keeper = Keeper(config, on_pass=_log_pass)
    _handle_signals(keeper)
    try:
        if flags.switches["daemon"]:
            keeper.subscribe()
        ok = keeper.run_pass("initial").error is None
        if flags.switches["daemon"]:
            # `--daemon=false`: one pass and exit 0, whatever the pass did (as the Go sidecar).
            log.info("Running as a daemon")
            keeper.run(ok)
            log.warning("Exiting interface check goroutine")
        log.info("Exiting... Bye!")
        return _cleanup(keeper) if config.cleanup else 0
    finally:
        keeper.close()


def _log_pass(trigger: str, report: PassReport) -> None:
    if report.changes:
        log.info("%s", "; ".join(report.changes))
    if report.error is not None:
        log.error("Error ensuring ip address: %s", report.go_error)
    else:
        log.debug("Ensured ip address (%s pass)", trigger)


def _handle_signals(keeper: Keeper) -> None:
    """The first SIGTERM/SIGINT ends the daemon (then cleanup, exit 0); a second exits 1 at once, even in
    the middle of the cleanup (controller-runtime's handler in the Go sidecar)."""
    received = 0

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        received += 1
        if received > 1:
            os._exit(1)
        keeper.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handler)


def _cleanup(keeper: Keeper) -> int:
    log.info("Cleaning up")
    try:
        changes = keeper.reconciler.cleanup()
    except CleanupError as error:
        log.critical("Failed to clean up - %s", error)
        return 255
    for change in changes:
        log.info("%s", change)
    log.info("Successfully cleaned up everything. Bye!")
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))
