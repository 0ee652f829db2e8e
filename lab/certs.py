"""Certificates for the lab: one throwaway CA (trustme) and a server certificate for the API server names."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme  # the demo extra

# What a pod's client verifies (`kubernetes.default.svc`), plus the shoot's API host a developer uses.
DEFAULT_NAMES = (
    "kubernetes.default.svc",
    "kubernetes.default",
    "kubernetes",
    "api.bar.foo.internal.example.com",
    "localhost",
)


@dataclass(frozen=True)
class LabCertificates:
    ca_file: Path
    cert_file: Path
    key_file: Path
    names: tuple[str, ...]

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        """Verifies the server certificate against the lab CA, host names included."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_certificates(
    directory: Path, names: tuple[str, ...] = DEFAULT_NAMES, addresses: tuple[str, ...] = ("127.0.0.1", "::1")
) -> LabCertificates:
    """`addresses=()`: a certificate a client verifies only by name, never by the loopback address it dials."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="apiproxy lab CA")
    server = ca.issue_cert(*names, *addresses)
    ca_file, cert_file, key_file = (
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server-key.pem",
    )
    ca.cert_pem.write_to_path(str(ca_file))
    server.private_key_pem.write_to_path(str(key_file))
    with cert_file.open("wb") as out:
        for blob in server.cert_chain_pems:
            out.write(blob.bytes())
    return LabCertificates(ca_file, cert_file, key_file, names)
