"""`apiproxy-envoy`: Envoy's command line, as Gardener starts Envoy, in front of apiproxy's runtime.

`apiproxy-envoy --concurrency 2 --use-dynamic-base-id -c /etc/apiserver-proxy/envoy.yaml` reads the
bootstrap, refuses what apiproxy cannot honour (exit 1, as Envoy exits for a bad config) and serves it with
`run_proxy`, the runtime of `apiproxy run`. Envoy's other flags are accepted; those without a meaning here
are logged as ignored. Flag syntax is Envoy's (TCLAP: `-c FILE`, `--flag VALUE`, `--flag=VALUE`).

One setting is apiproxy's own: the handover socket of rolling updates (`apiproxy.handover`), from
`--handover-socket` or, since Gardener's command line is fixed, the environment (APIPROXY_HANDOVER_SOCKET).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace
from typing import NoReturn

from .. import __version__
from ..config import ConfigError, ProxyConfig
from ..documents import UnreadableFile, read_text
from ..handover import parse_socket_path
from .bootstrap import Bootstrap, BootstrapError, read_bootstrap

log = logging.getLogger("apiproxy.envoy")

PROG = "apiproxy-envoy"

# Envoy's flags with no effect on apiproxy: (flags, takes a value).
IGNORED_FLAGS: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("--base-id",), True),
    (("--use-dynamic-base-id",), False),
    (("--base-id-path",), True),
    (("--restart-epoch",), True),
    (("--disable-hot-restart",), False),
    (("--skip-hot-restart-on-no-parent",), False),
    (("--skip-hot-restart-parent-stats",), False),
    (("--parent-shutdown-time-s",), True),
    (("--drain-strategy",), True),
    (("--socket-path",), True),
    (("--socket-mode",), True),
    (("--service-cluster",), True),
    (("--service-node",), True),
    (("--service-zone",), True),
    (("--local-address-ip-version",), True),
    (("--admin-address-path",), True),
    (("--component-log-level",), True),
    (("--log-format",), True),
    (("--log-format-escaped",), False),
    (("--log-path",), True),
    (("--log-stacktrace-single-entry",), False),
    (("--enable-fine-grain-logging",), False),
    (("--file-flush-min-size-kb",), True),
    (("--file-flush-interval-msec",), True),
    (("--stats-tag",), True),
    (("--disable-extensions",), True),
    (("--cpuset-threads",), False),
    (("--enable-mutex-tracing",), False),
    (("--enable-core-dump",), False),
    (("--skip-deprecated-logs",), False),
    (("--ignore-unknown-dynamic-fields",), False),
    (("--reject-unknown-dynamic-fields",), False),
)
# Where Envoy's -l levels land on apiproxy's loggers.
LOG_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 10,
}
MODES = ("serve", "validate", "init_only")
# The handover socket from the environment: Gardener's command line for Envoy cannot take a flag.
HANDOVER_ENV = "APIPROXY_HANDOVER_SOCKET"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _uint32(text: str) -> int:
    if not text.isdigit() or int(text) > 2**32 - 1:
        raise argparse.ArgumentTypeError(f"expected an unsigned integer, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, add_help=True, allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config-path", help="The Envoy v3 bootstrap (YAML or JSON).")
    parser.add_argument(
        "--config-yaml", help="Inline YAML merged over the file by Envoy; refused by apiproxy-envoy."
    )
    parser.add_argument("--mode", default="serve", help="serve (default), validate, or init_only.")
    parser.add_argument("--concurrency", type=_uint32, help="Envoy's worker threads; see the log line.")
    parser.add_argument(
        "-l", "--log-level", default="info", help="trace, debug, info, warning, error, critical, off."
    )
    parser.add_argument("--drain-time-s", type=_uint32, help="On SIGTERM, drain open tunnels this long.")
    parser.add_argument("--allow-unknown-static-fields", action="store_true", help="Ignore unknown fields.")
    parser.add_argument(
        "--allow-unknown-fields", action="store_true", help="Same as --allow-unknown-static-fields."
    )
    parser.add_argument(
        "--handover-socket",
        help=f"apiproxy's own: the Unix socket a rolling update hands the listener over on (or {HANDOVER_ENV}).",
    )
    parser.add_argument("--version", action="store_true", help="Print the version and exit.")
    parser.add_argument(
        "--hot-restart-version", action="store_true", help="No hot restart: prints 'disabled'."
    )
    for flags, takes_value in IGNORED_FLAGS:
        dest = "ignored_" + flags[0].lstrip("-").replace("-", "_")
        if takes_value:
            parser.add_argument(*flags, dest=dest, action="append", help=argparse.SUPPRESS)
        else:
            parser.add_argument(*flags, dest=dest, action="store_true", help=argparse.SUPPRESS)
    return parser


def _setup_logging(level_name: str) -> None:
    from .. import logs

    level = LOG_LEVELS[level_name]
    logs.setup(1 if level <= logging.DEBUG else 0)
    logging.getLogger("apiproxy").setLevel(level)
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)


def _ignored_flags(args: argparse.Namespace) -> list[str]:
    names = []
    for flags, _ in IGNORED_FLAGS:
        value = getattr(args, "ignored_" + flags[0].lstrip("-").replace("-", "_"))
        if value:
            names.append(flags[0])
    return names


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 1


def load(path: str, *, allow_unknown_fields: bool) -> Bootstrap:
    """Read and check the file. Raises BootstrapError (also for a file that cannot be read)."""
    try:
        text = read_text(path)
    except UnreadableFile as error:
        raise BootstrapError("", f"cannot read the file: {error}") from None
    return read_bootstrap(text, allow_unknown_fields=allow_unknown_fields)


def main(argv: list[str] | None = None) -> int:
    """Console entry point. Returns (and exits with) the process status."""
    sys.exit(run(sys.argv[1:] if argv is None else argv))


def run(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as error:
        return _fail(f"PARSE ERROR: {error}")
    if args.version:
        print(f"{PROG} version: apiproxy {__version__} (reads Envoy v3 bootstrap files)")
        return 0
    if args.hot_restart_version:
        print("disabled")
        return 0
    if args.log_level not in LOG_LEVELS:
        return _fail(f"-l/--log-level: expected one of {', '.join(LOG_LEVELS)}, got {args.log_level!r}")
    if args.mode not in MODES:
        return _fail(f"--mode: expected one of {', '.join(MODES)}, got {args.mode!r}")
    if args.config_yaml is not None:
        return _fail("--config-yaml: not supported (give the whole bootstrap with -c)")
    if not args.config_path:
        return _fail("-c/--config-path: expected the path of an Envoy v3 bootstrap (YAML or JSON)")
    allow_unknown = args.allow_unknown_static_fields or args.allow_unknown_fields
    try:
        bootstrap = load(args.config_path, allow_unknown_fields=allow_unknown)
    except BootstrapError as error:
        return _fail(f"error initializing configuration '{args.config_path}': {error}")
    if args.mode != "serve":
        # Envoy prints this line (stdout) and exits 0; init_only also stops before serving.
        print(f"configuration '{args.config_path}' OK")
        return 0

    config = bootstrap.config
    if args.drain_time_s is not None:
        config = replace(config, drain_timeout=float(args.drain_time_s))
    try:
        config = replace(config, handover_socket=_handover_socket(args))
    except ConfigError as error:
        return _fail(str(error))
    _setup_logging(args.log_level)
    _log_start(args, bootstrap, config)

    from ..runtime import run_proxy

    try:
        return run_proxy(config)
    except ConfigError as error:
        # A listener address that is not on this host, a port in use: Envoy exits 1 for those too. The
        # runtime names apiproxy's option; the operator wrote a config path.
        where = bootstrap.option_paths.get(error.option, error.option)
        return _fail(f"{where}: expected {error.expected}, got {error.value!r}")


def _handover_socket(args: argparse.Namespace) -> str | None:
    if args.handover_socket is not None:
        return parse_socket_path("--handover-socket", args.handover_socket)
    from_environment = os.environ.get(HANDOVER_ENV)
    if from_environment is None:
        return None
    return parse_socket_path(HANDOVER_ENV, from_environment)


def _log_start(args: argparse.Namespace, bootstrap: Bootstrap, config: ProxyConfig) -> None:
    """What the Envoy config became, and what of the command line and the config has no effect."""
    tunnel = config.tunnel
    headers = ", ".join(name for name, _ in tunnel.connect_headers) or "none"
    log.info(
        "%s: %s -> %s (%s%s, headers %s), at most %d connections, buffer %d bytes, idle timeout %gs, "
        "drain %gs",
        args.config_path, config.listener.listen, tunnel.upstream, tunnel.upstream_protocol.value,
        f" {tunnel.connect_authority}" if tunnel.connect_authority else "", headers,
        config.listener.max_connections, tunnel.buffer_size, tunnel.idle_timeout, config.drain_timeout,
    )  # fmt: skip
    if config.handover_socket is not None:
        log.info("handover socket: %s (rolling updates hand the listener over there)", config.handover_socket)
    ignored_flags = _ignored_flags(args)
    if ignored_flags:
        log.info("Envoy flags without meaning for apiproxy, ignored: %s", " ".join(ignored_flags))
    if bootstrap.ignored:
        log.info("config fields without effect on apiproxy, ignored: %s", ", ".join(bootstrap.ignored))
    if bootstrap.admin is not None:
        log.info(
            "admin (%s): not served; the metrics listener serves /metrics and /ready itself", bootstrap.admin
        )
    if args.concurrency is not None and args.concurrency != 1:
        log.info("--concurrency %d: apiproxy serves every connection from one event loop", args.concurrency)
