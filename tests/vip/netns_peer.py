"""Run inside a network namespace (`ip netns exec NS python netns_peer.py ...`) by the namespace tests:

serve CERT KEY HOST PORT   the TLS kube-apiserver stub; prints "ready" once bound, runs until SIGTERM
get CA HOST PORT           one TLS GET /version (SNI kubernetes.default.svc); prints the gitVersion
conntrack-probe VIP        connects to VIP:443 and VIP:444 (listening on both) and exchanges a byte
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import sys


async def serve(cert: str, key: str, host: str, port: int) -> None:
    from lab.backend import KubeAPIStub

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    stub = KubeAPIStub(context)
    await stub.start(host, port)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await stub.stop()


def get(ca: str, host: str, port: int) -> int:
    context = ssl.create_default_context(cafile=ca)
    raw = socket.create_connection((host, port), timeout=5)
    with context.wrap_socket(raw, server_hostname="kubernetes.default.svc") as tls:
        tls.sendall(b"GET /version HTTP/1.1\r\nHost: kubernetes.default.svc\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        print(head.decode(errors="replace"), file=sys.stderr)
        return 1
    print(json.loads(body)["gitVersion"])
    return 0


def conntrack_probe(vip: str) -> int:
    for port in (443, 444):
        with socket.socket() as server:
            server.bind((vip, port))
            server.listen()
            with socket.create_connection((vip, port), timeout=5) as client:
                peer, _ = server.accept()
                with peer:
                    client.sendall(b"x")
                    peer.recv(1)
    return 0


def main() -> int:
    command, *args = sys.argv[1:]
    if command == "serve":
        asyncio.run(serve(args[0], args[1], args[2], int(args[3])))
        return 0
    if command == "get":
        return get(args[0], args[1], int(args[2]))
    if command == "conntrack-probe":
        return conntrack_probe(args[0])
    print(f"unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
