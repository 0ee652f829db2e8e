"""A kubeconfig copy that reaches a cluster through `apiproxy tunnel`'s local listener.

`tunnel_kubeconfig` is pure: it takes the parsed input and returns a rewritten copy whose cluster `server`
is the local listener while `tls-server-name` keeps the original host, so kubectl still verifies the API
server's certificate against the name it was issued for. Only `read_kubeconfig`/`write_kubeconfig` touch
files. The copy is written as JSON: kubectl (client-go) reads kubeconfig files with a YAML parser, and
JSON is YAML, so writing has no YAML typing surprises (`no`, `on`, `1e3`). Reading takes JSON or YAML
through `documents` (bounded in size, depth and alias expansion). A kubeconfig holds bearer tokens and
client keys: no error message quotes its text or a user's entry, and names and URLs are shown bounded.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .addresses import host_port
from .documents import DocumentError, UnreadableFile, load_mapping, read_text, show

Kubeconfig = dict[str, Any]


class KubeconfigError(ValueError):
    """The kubeconfig cannot be used. `str()` is one line for the user."""


@dataclass(frozen=True)
class TunnelledCluster:
    """What `tunnel_kubeconfig` changed, for the message the user sees."""

    context: str
    cluster: str
    original_server: str
    server: str
    tls_server_name: str | None
    dropped_proxy_url: bool


def parse_kubeconfig(text: str, source: str = "kubeconfig") -> Kubeconfig:
    """JSON or YAML text to a kubeconfig mapping."""
    try:
        return load_mapping(text, "a kubeconfig (a mapping with clusters and contexts)")
    except DocumentError as error:
        raise KubeconfigError(f"{source}: {error}") from None


def local_server_url(host: str, port: int, scheme: str = "https") -> str:
    """The URL of the local listener. A wildcard address is reached on loopback."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"{scheme}://{host_port(host, port)}"


def _named(document: Kubeconfig, section: str, name: str, source: str) -> dict[str, Any]:
    entries = document.get(section) or []
    if not isinstance(entries, list):
        raise KubeconfigError(f"{source}: '{section}' is not a list")
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry
    raise KubeconfigError(f"{source}: no entry named {show(name)} in '{section}'")


def tunnel_kubeconfig(
    document: Kubeconfig,
    listen_host: str,
    listen_port: int,
    *,
    context: str | None = None,
    base_directory: Path | None = None,
    source: str = "kubeconfig",
) -> tuple[Kubeconfig, TunnelledCluster]:
    """A copy of `document` whose `context` (default: the current one) reaches its cluster through the
    listener. `document` is not changed. Relative file references are made absolute against
    `base_directory` (the input's directory), since the copy may be written elsewhere."""
    result = copy.deepcopy(document)
    context_name = context or result.get("current-context")
    if not context_name or not isinstance(context_name, str):
        raise KubeconfigError(f"{source}: no current-context; name one with --context")
    context_entry = _named(result, "contexts", context_name, source).get("context")
    if not isinstance(context_entry, dict) or not context_entry.get("cluster"):
        raise KubeconfigError(f"{source}: context {show(context_name)} names no cluster")
    cluster_name = str(context_entry["cluster"])
    cluster = _named(result, "clusters", cluster_name, source).get("cluster")
    if not isinstance(cluster, dict) or not isinstance(cluster.get("server"), str):
        raise KubeconfigError(f"{source}: cluster {show(cluster_name)} has no server")
    original = cluster["server"]
    try:
        parts = urlsplit(original)
    except ValueError:  # an unclosed [IPv6 literal
        parts = urlsplit("")
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise KubeconfigError(
            f"{source}: cluster {show(cluster_name)} has server {show(_without_userinfo(original))}, "
            "expected an https:// URL"
        )
    local = urlsplit(local_server_url(listen_host, listen_port, parts.scheme))
    cluster["server"] = urlunsplit((parts.scheme, local.netloc, parts.path, parts.query, parts.fragment))
    tls_server_name: str | None = None
    if parts.scheme == "https":
        # An explicit tls-server-name already names the certificate; otherwise the original host does.
        tls_server_name = cluster.get("tls-server-name") or parts.hostname
        cluster["tls-server-name"] = tls_server_name
    # A proxy in front of the API server would be asked to reach our loopback listener: it cannot.
    dropped_proxy = cluster.pop("proxy-url", None) is not None
    result["current-context"] = context_name
    if base_directory is not None:
        _absolute_file_references(result, base_directory)
    return result, TunnelledCluster(
        context=context_name,
        cluster=cluster_name,
        original_server=original,
        server=cluster["server"],
        tls_server_name=tls_server_name,
        dropped_proxy_url=dropped_proxy,
    )


def _absolute_file_references(document: Kubeconfig, base: Path) -> None:
    """What client-go resolves relative to the kubeconfig's directory (clientcmd ResolvePaths)."""

    def resolve(entry: dict[str, Any], key: str, only_with_separator: bool = False) -> None:
        value = entry.get(key)
        if not isinstance(value, str) or not value or os.path.isabs(value):
            return
        if only_with_separator and os.sep not in value:
            return  # a bare command name is looked up on PATH
        entry[key] = str(base / value)

    for item in document.get("clusters") or []:
        cluster = item.get("cluster") if isinstance(item, dict) else None
        if isinstance(cluster, dict):
            resolve(cluster, "certificate-authority")
    for item in document.get("users") or []:
        user = item.get("user") if isinstance(item, dict) else None
        if isinstance(user, dict):
            for key in ("client-certificate", "client-key", "tokenFile"):
                resolve(user, key)
            if isinstance(user.get("exec"), dict):
                resolve(user["exec"], "command", only_with_separator=True)


def dump_kubeconfig(document: Kubeconfig) -> str:
    # default=str: YAML may have produced dates in extensions; kubectl would have read them as strings.
    return json.dumps(document, indent=2, default=str) + "\n"


def read_kubeconfig(path: Path) -> Kubeconfig:
    try:
        text = read_text(path)
    except UnreadableFile as error:
        raise KubeconfigError(f"cannot read {path}: {error}") from None
    return parse_kubeconfig(text, str(path))


_USERINFO = re.compile(r"//[^/?#]*@")


def _without_userinfo(url: str) -> str:
    """A URL as an error may show it: `https://user:password@host` loses `user:password@`."""
    return _USERINFO.sub("//", url, count=1)


def same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def write_kubeconfig(path: Path, text: str) -> None:
    """Write atomically with mode 0600: the copy holds the same credentials as the input."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as error:
        raise KubeconfigError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise KubeconfigError(f"cannot write {path}: {error.strerror or error}") from None
