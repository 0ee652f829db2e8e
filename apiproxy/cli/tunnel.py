"""`apiproxy tunnel`: a developer's local port to a shoot's API server, through the seed gateway.

The node proxy's own tunnels (`TunnelOptions` -> `TunnelConfig`, `ProxyServer`, `run_proxy`), without VIP or
monitoring, on loopback. Once bound it makes one probe CONNECT (`apiproxy.probe`), writes the kubeconfig
copy if asked (`apiproxy.kubeconfig`), and only then says it is ready. Ctrl-C drains briefly and exits 0.
"""

from __future__ import annotations

import logging
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from ..addresses import host_port
from ..addresses import peer as format_peer
from ..config import ConfigError, ProxyConfig, parse_duration
from ..kubeconfig import (
    Kubeconfig,
    KubeconfigError,
    dump_kubeconfig,
    read_kubeconfig,
    same_file,
    tunnel_kubeconfig,
    write_kubeconfig,
)
from ..server import ProxyServer
from ..tunnel import Tunnel
from .options import (
    DURATION,
    HOST_PORT,
    NAME,
    PATH,
    AnswerTimeoutOpt,
    BufferSizeOpt,
    Command,
    ConnectAuthorityOpt,
    ConnectTimeoutOpt,
    DestinationHeaderOpt,
    DestinationOpt,
    DNSFamilyOpt,
    DNSRefreshOpt,
    IdleTimeoutOpt,
    KeepaliveIntervalOpt,
    KeepaliveTimeOpt,
    SpliceOpt,
    TunnelOptions,
    UpstreamOpt,
    VerboseOpt,
    option,
)
from .run import build_listener

log = logging.getLogger(__name__)

PROG = "apiproxy tunnel"
DEFAULT_LISTEN = "127.0.0.1:6443"
# A namespace is a DNS-1123 label; Gardener's shoot namespaces read shoot--<project>--<shoot>.
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def shoot_destination(namespace: str, istio_tls_termination: bool = False) -> str:
    """The destination header value the seed gateway routes to the shoot's kube-apiserver."""
    if not _NAMESPACE.fullmatch(namespace):
        raise ConfigError(
            "--shoot-namespace", namespace, "a namespace name such as shoot--project--name (a DNS label)"
        )
    if istio_tls_termination:
        return f"{namespace}--kube-apiserver-socket"
    return f"outbound|443||kube-apiserver.{namespace}.svc.cluster.local"


def choose_destination(destination: str | None, namespace: str | None, istio_tls_termination: bool) -> str:
    if namespace and destination:
        raise ConfigError(
            "--shoot-namespace", namespace, "either --shoot-namespace or --destination, not both"
        )
    if istio_tls_termination and not namespace:
        raise ConfigError(
            "--istio-tls-termination", True, "--shoot-namespace too (it picks the value's form)"
        )
    if namespace:
        return shoot_destination(namespace, istio_tls_termination)
    if not destination:
        raise ConfigError(
            "--shoot-namespace",
            "",
            "the shoot's namespace in the seed (shoot--project--name), or --destination",
        )
    return destination


@dataclass(frozen=True)
class KubeconfigCopy:
    """What to write once the tunnel is up: `document` rewritten for the listener, to `output`."""

    document: Kubeconfig
    source: Path
    output: Path
    context: str | None
    print_env: bool


def plan_kubeconfig(
    source: Path | None, output: Path | None, context: str | None, print_env: bool, listen: tuple[str, int]
) -> KubeconfigCopy | None:
    """Checks the kubeconfig options and the input at start (exit 2), before anything is bound."""
    if source is None:
        for option, given in (
            ("--write-kubeconfig", output),
            ("--context", context),
            ("--print-env", print_env),
        ):
            if given:
                raise ConfigError(option, given, "--kubeconfig too (the kubeconfig to copy)")
        return None
    if output is None:
        raise ConfigError(
            "--write-kubeconfig", "", "where to write the copy that uses the tunnel (with --kubeconfig)"
        )
    if same_file(source, output):
        raise ConfigError(
            "--write-kubeconfig", str(output), "a path other than --kubeconfig (it is never modified)"
        )
    try:
        document = read_kubeconfig(source)
        # A dry run with the configured port: a missing context or server is reported now, not after the probe.
        tunnel_kubeconfig(document, *listen, context=context, source=str(source))
    except KubeconfigError as error:
        raise ConfigError("--kubeconfig", str(source), f"a usable kubeconfig ({error})") from None
    return KubeconfigCopy(document, source, output, context, print_env)


class TunnelStatusLog:
    """A line per closed tunnel at -v (debug); failures are logged by the server at warning anyway."""

    def tunnel_opened(self, tunnel: Tunnel) -> None:
        pass

    def tunnel_established(self, tunnel: Tunnel, seconds: float) -> None:
        pass

    def tunnel_closed(self, tunnel: Tunnel) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        peer = format_peer(tunnel.peer)
        log.debug(
            "tunnel from %s closed (%s): %d bytes to the API server, %d bytes back, %.0f ms",
            peer,
            tunnel.reason,
            tunnel.rx_bytes,
            tunnel.tx_bytes,
            (tunnel.ended_at - tunnel.started_at) * 1000,
        )

    def connection_rejected(self, reason: str, peer: tuple[str, int] | None) -> None:
        log.info("connection from %s refused (%s)", format_peer(peer), reason)


def _format_listen(address: tuple[object, ...]) -> tuple[str, int, str]:
    host, port = str(address[0]), int(str(address[1]))
    return host, port, host_port(host, port)


class ReadyWhenProbed:
    """The `on_serving` hook: probe the gateway, write the kubeconfig copy, say ready (stderr, stdout)."""

    def __init__(self, destination: str, kubeconfig: KubeconfigCopy | None) -> None:
        self.destination = destination
        self.kubeconfig = kubeconfig

    async def __call__(self, server: ProxyServer) -> None:
        from ..probe import probe_gateway

        server.observer = TunnelStatusLog()
        context = server.context
        result = await probe_gateway(
            context.dialer, context.connect_request, context.config.connect_answer_timeout, self.destination
        )
        if context.draining:
            return  # Ctrl-C while probing
        assert server.address is not None
        host, port, listen = _format_listen(server.address)
        copy = self.kubeconfig
        if copy is not None:
            document, cluster = tunnel_kubeconfig(
                copy.document, host, port, context=copy.context,
                base_directory=copy.source.resolve().parent, source=str(copy.source),
            )  # fmt: skip
            write_kubeconfig(copy.output, dump_kubeconfig(document))
            dropped = ", proxy-url dropped" if cluster.dropped_proxy_url else ""
            print(
                f"{PROG}: wrote {copy.output}: context {cluster.context!r}, server {cluster.server}"
                f" (tls-server-name {cluster.tls_server_name}){dropped}",
                file=sys.stderr,
            )
        print(
            f"{PROG}: ready on {listen} -> {self.destination} via gateway {result.gateway_address}"
            f" (probe answered {result.status} in {result.seconds * 1000:.0f} ms)",
            file=sys.stderr,
            flush=True,
        )
        if copy is not None and copy.print_env:
            print(f"KUBECONFIG={shlex.quote(str(copy.output.resolve()))}", flush=True)


def register(app: typer.Typer) -> None:
    @app.command("tunnel", cls=Command)
    def tunnel(
        upstream: UpstreamOpt = None,
        shoot_namespace: Annotated[
            str | None,
            option(
                "--shoot-namespace",
                env="SHOOT_NAMESPACE",
                metavar=NAME,
                help="The shoot's namespace in the seed (shoot--project--name): sets the destination.",
            ),
        ] = None,
        istio_tls_termination: Annotated[
            bool,
            option(
                "--istio-tls-termination",
                env="ISTIO_TLS_TERMINATION",
                help="With --shoot-namespace: the <namespace>--kube-apiserver-socket destination form.",
            ),
        ] = False,
        destination: DestinationOpt = None,
        listen: Annotated[
            str, option("--listen", env="LISTEN", metavar=HOST_PORT, help="Local address to accept on.")
        ] = DEFAULT_LISTEN,
        kubeconfig: Annotated[
            Path | None,
            option(
                "--kubeconfig",
                env="KUBECONFIG",
                metavar=PATH,
                help="A kubeconfig for the shoot, to copy (never modified).",
            ),
        ] = None,
        context: Annotated[
            str | None,
            option(
                "--context",
                env="CONTEXT",
                metavar=NAME,
                help="The context of --kubeconfig to use [default: its current one].",
            ),
        ] = None,
        write_kubeconfig_to: Annotated[
            Path | None,
            option(
                "--write-kubeconfig",
                env="WRITE_KUBECONFIG",
                metavar=PATH,
                help="Write the copy here: server = this tunnel, tls-server-name = the original host.",
            ),
        ] = None,
        print_env: Annotated[
            bool,
            option("--print-env", env="PRINT_ENV", help="Once ready, print KUBECONFIG=<copy> on stdout."),
        ] = False,
        connect_authority: ConnectAuthorityOpt = None,
        destination_header: DestinationHeaderOpt = None,
        dns_family: DNSFamilyOpt = "auto",
        dns_refresh: DNSRefreshOpt = "5s",
        connect_timeout: ConnectTimeoutOpt = "5s",
        connect_answer_timeout: AnswerTimeoutOpt = "10s",
        idle_timeout: IdleTimeoutOpt = "1h",
        tcp_keepalive_time: KeepaliveTimeOpt = "7200s",
        tcp_keepalive_interval: KeepaliveIntervalOpt = "55s",
        buffer_size: BufferSizeOpt = "32KiB",
        splice: SpliceOpt = True,
        drain_timeout: Annotated[
            str,
            option(
                "--drain-timeout",
                env="DRAIN_TIMEOUT",
                metavar=DURATION,
                help="On Ctrl-C, wait this long for open tunnels.",
            ),
        ] = "1s",
        verbose: VerboseOpt = 0,
    ) -> int:
        """Open a local port to a shoot's kube-apiserver through the seed gateway (no VIP, no root).

        Exit status: 0 after Ctrl-C, 1 when the gateway probe fails, 2 for unusable options.
        """
        from .. import logs
        from ..probe import ProbeFailed
        from ..runtime import run_proxy

        chosen = choose_destination(destination, shoot_namespace, istio_tls_termination)
        # Always CONNECT: the legacy PROXY-protocol mode names the shoot by the VIP the client dialled,
        # which a laptop's loopback listener cannot stand for.
        tunnel_config = TunnelOptions(
            upstream, connect_authority, chosen, destination_header, "connect", dns_family, dns_refresh,
            connect_timeout, connect_answer_timeout, idle_timeout, tcp_keepalive_time, tcp_keepalive_interval,
            buffer_size, splice,
        ).build()  # fmt: skip
        listener, _ = build_listener(listen, None, "10000")
        copy = plan_kubeconfig(
            kubeconfig, write_kubeconfig_to, context, print_env, (listener.listen.host, listener.listen.port)
        )
        drain = parse_duration("--drain-timeout", drain_timeout, allow_zero=True)
        config = ProxyConfig(
            listener=listener, tunnel=tunnel_config, vip=None, monitoring=None, drain_timeout=drain
        )
        logs.setup(verbose, "text")
        ip = listener.listen.ip
        if (ip is not None and not ip.is_loopback) or (ip is None and listener.listen.host != "localhost"):
            log.warning(
                "listening on %s, not loopback: whoever reaches it reaches the shoot's API server",
                listener.listen,
            )
        try:
            return run_proxy(config, ReadyWhenProbed(chosen, copy))
        except ProbeFailed as failure:
            print(f"{PROG}: {failure}", file=sys.stderr)
            return 1
        except KubeconfigError as error:
            print(f"{PROG}: --write-kubeconfig: {error}", file=sys.stderr)
            return 1
