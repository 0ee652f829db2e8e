"""`apiserver-proxy-sidecar`: a drop-in for the Go VIP sidecar's image (gardener/apiserver-proxy).

Same flags in Go flag syntax (`--daemon=false`, `-v=2`, one or two dashes; klog's logging flags are
accepted), same exit codes (flag error 2, missing --ip-address 1, unparsable address or failed cleanup
255, first SIGTERM/SIGINT 0 and a second 1; `--daemon=false` runs one pass and exits 0 even if it failed),
klog-style lines on stderr. The daemon also repairs on netlink events, like `apiproxy run`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..config import ConfigError, VIPConfig, parse_int
from .options import build_vip

log = logging.getLogger("apiproxy.vip.sidecar")

USAGE_FLAGS = """\
      --add_dir_header                   If true, adds the file directory to the header
      --alsologtostderr                  log to standard error as well as files
      --cleanup                          [optional] indicates whether created interface should be removed on exit.
      --daemon                           [optional] indicates if the sidecar should run as a daemon (default true)
      --interface string                 [optional] name of the interface to add address to. (default "lo")
      --ip-address string                ip-address on which the proxy is listening.
      --log_backtrace_at traceLocation   when logging hits line file:N, emit a stack trace (default :0)
      --log_dir string                   If non-empty, write log files in this directory
      --log_file string                  If non-empty, use this log file
      --log_file_max_size uint           Defines the maximum size a log file can grow to. (default 1800)
      --logtostderr                      log to standard error instead of files (default true)
      --port string                      [optional] port on which the proxy is listening. (default "443")
      --setup-iptables                   [optional] indicates whether iptables rules should be setup.
      --skip_headers                     If true, avoid header prefixes in the log messages
      --skip_log_headers                 If true, avoid headers when opening log files
      --stderrthreshold severity         logs at or above this threshold go to stderr (default 2)
      --sync-interval duration           [optional] interval to check for the added interface. (default 1m0s)
  -v, --v Level                          number for the log level verbosity
      --vmodule moduleSpec               comma-separated list of pattern=N settings for file-filtered logging
"""

# Flags taking a value, and boolean flags (never consume the next argument), with their defaults.
_VALUE_FLAGS = {
    "ip-address": "", "interface": "lo", "sync-interval": "1m", "port": "443",
    "v": "0", "vmodule": "", "log_dir": "", "log_file": "", "log_file_max_size": "1800",
    "stderrthreshold": "2", "log_backtrace_at": ":0",
}  # fmt: skip
_BOOL_FLAGS = {
    "daemon": True, "cleanup": False, "setup-iptables": False,
    "logtostderr": True, "alsologtostderr": False, "add_dir_header": False, "skip_headers": False,
    "skip_log_headers": False, "one_output": False,
}  # fmt: skip
# Go's strconv.ParseBool.
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


class FlagError(ValueError):
    pass


class HelpRequested(Exception):
    pass


@dataclass
class Flags:
    values: dict[str, str] = field(default_factory=lambda: dict(_VALUE_FLAGS))
    switches: dict[str, bool] = field(default_factory=lambda: dict(_BOOL_FLAGS))


def parse_flags(argv: Sequence[str]) -> Flags:
    """Go flag syntax: `-name`, `--name`, `--name=value`, `--name value`, `-v2`; positionals ignored."""
    flags = Flags()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-":
            continue  # the Go sidecar ignores positional arguments
        name, has_value, value = arg.lstrip("-").partition("=")
        if name in ("h", "help"):
            raise HelpRequested
        if name not in _VALUE_FLAGS and name not in _BOOL_FLAGS and name[:1] == "v" and name[1:].isdigit():
            name, has_value, value = "v", "=", name[1:]  # pflag shorthand: -v2
        if name in _BOOL_FLAGS:
            if not has_value:
                flags.switches[name] = True
            elif value in _TRUE or value in _FALSE:
                flags.switches[name] = value in _TRUE
            else:
                raise FlagError(
                    f'invalid argument "{value}" for "--{name}" flag: strconv.ParseBool: parsing "{value}": invalid syntax'
                )
        elif name in _VALUE_FLAGS:
            if not has_value:
                if not args:
                    raise FlagError(f"flag needs an argument: --{name}")
                value = args.pop(0)
            flags.values[name] = value
        else:
            raise FlagError(f"unknown flag: --{name}")
    return flags


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
        level = "F" if record.levelno >= logging.CRITICAL else record.levelname[0]
        stamp = time.strftime("%m%d %H:%M:%S", time.localtime(record.created))
        micros = int((record.created % 1) * 1_000_000)
        return f"{level}{stamp}.{micros:06d} {os.getpid():7d} {record.filename}:{record.lineno}] {message}"


def setup_logging(flags: Flags) -> None:
    try:
        verbosity = int(flags.values["v"])
    except ValueError:
        raise FlagError(
            f'invalid argument "{flags.values["v"]}" for "-v, --v" flag: strconv.ParseInt: invalid syntax'
        ) from None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KlogFormatter(headers=not flags.switches["skip_headers"]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # klog's V(2) lines (a line per pass) are our debug level.
    logging.getLogger("apiproxy").setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    for noisy in ("pyroute2", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_config(flags: Flags, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> VIPConfig:
    port = parse_int("--port", flags.values["port"], minimum=1, maximum=65535)
    return build_vip(address, flags.values["interface"], flags.values["sync-interval"],
                     flags.switches["cleanup"], flags.switches["setup-iptables"], port)  # fmt: skip


def run(argv: Sequence[str]) -> int:
    try:
        flags = parse_flags(argv)
        setup_logging(flags)
    except HelpRequested:
        print(f"Usage of {os.path.basename(sys.argv[0])}:\n{USAGE_FLAGS}", file=sys.stderr, end="")
        return 0
    except FlagError as error:
        print(f"{error}\nUsage of {os.path.basename(sys.argv[0])}:\n{USAGE_FLAGS}", file=sys.stderr, end="")
        return 2
    text = flags.values["ip-address"]
    if not text:
        log.error("--ip-address is required")
        return 1
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        log.critical('Failed to create sidecar application, err unable to parse IP address "%s"', text)
        return 255
    try:
        config = build_config(flags, address)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    log.info('Using IP address "%s"', address)
    if not flags.switches["daemon"]:
        return one_shot(config)
    from ..runtime import run_loop

    return run_loop(lambda: daemon(config))


def one_shot(config: VIPConfig) -> int:
    """One pass, then exit 0 whatever it did (the Go sidecar's `--daemon=false`); cleanup if asked."""
    from .iptables import IPTables
    from .netlink import PyrouteNetlink
    from .reconcile import CleanupError, Reconciler

    rules = (lambda: IPTables(config.address, config.port)) if config.setup_iptables else None
    reconciler = Reconciler(config.address, config.interface, PyrouteNetlink, rules)
    try:
        report = reconciler.sync()
        if report.changes:
            log.info("%s", "; ".join(report.changes))
        if report.error is not None:
            log.error("Error ensuring ip address: %s", report.error)
        else:
            log.info('Ensured "%s/%d" on "%s"', config.address, 32 if config.address.version == 4 else 128,
                     config.interface)  # fmt: skip
        if config.cleanup:
            try:
                changes = reconciler.cleanup()
            except CleanupError as error:
                log.critical("Failed to clean up - %s", error)
                return 255
            log.info(
                "Successfully cleaned up everything (%s). Bye!", "; ".join(changes) or "nothing to remove"
            )
    finally:
        reconciler.close()
    log.info("Exiting... Bye!")
    return 0


async def daemon(config: VIPConfig) -> int:
    """Keep the VIP until the first SIGTERM/SIGINT (exit 0); a second one exits 1 at once."""
    from ..runtime import Shutdown
    from .reconcile import CleanupError
    from .service import VIPService

    shutdown = Shutdown(asyncio.get_running_loop())
    service = VIPService(config)
    await service.start()
    log.info("Running as a daemon")
    await shutdown.requested.wait()
    try:
        await service.stop()
    except CleanupError as error:
        log.critical("Failed to clean up - %s", error)
        return 255
    if config.cleanup:
        log.info("Successfully cleaned up everything. Bye!")
    log.info("Exiting... Bye!")
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))
