"""Fixtures of the fault suite: the loopback lab (echo backend, real Envoy gateway, fault peer in front of
it, apiproxy in front of that), shared per module so each case costs only its fault."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from lab.gateway import DESTINATION, EnvoyProcess, GatewayConfig, start_gateway

from .lab import Echo, FaultGateway, Held, Net, Proxy


@dataclass
class Lab:
    net: Net
    echo: Echo
    envoy: EnvoyProcess
    envoy_port: int
    fault: FaultGateway
    proxy: Proxy
    held: Held  # a tunnel open across every case of the module: it must keep carrying data intact
    fds: int  # the proxy's descriptors with only `held` open


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    net = Net()
    try:
        yield net
    finally:
        net.close()


@pytest.fixture(scope="module")
def gateway(net: Net) -> Iterator[tuple[Echo, EnvoyProcess, int]]:
    echo = Echo(net)
    try:
        config = GatewayConfig(clusters={DESTINATION: ("127.0.0.1", echo.port)})
        envoy = start_gateway(config)
        try:
            yield echo, envoy, config.port
        finally:
            envoy.stop()
    finally:
        echo.stop()


@pytest.fixture(scope="module")
def lab(net: Net, gateway: tuple[Echo, EnvoyProcess, int]) -> Iterator[Lab]:
    echo, envoy, envoy_port = gateway
    fault = FaultGateway(net, ("127.0.0.1", envoy_port)).start()
    try:
        # Short timeouts keep the timeout cases short; 1 s leaves room for a loaded 2-core CI runner.
        proxy = Proxy(net, f"127.0.0.1:{fault.port}", "--connect-timeout", "1s",
                      "--connect-answer-timeout", "1s").start()  # fmt: skip
        try:
            held = Held(proxy.address)
            try:
                yield Lab(net, echo, envoy, envoy_port, fault, proxy, held, proxy.fds())
            finally:
                held.close()
        finally:
            proxy.stop()
    finally:
        fault.stop()
