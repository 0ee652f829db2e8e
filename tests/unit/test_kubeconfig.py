"""The kubeconfig copy for `apiproxy tunnel`, without sockets: rewriting, path resolution, reading, writing."""

from __future__ import annotations

import copy
import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from apiproxy.kubeconfig import (
    KubeconfigError,
    dump_kubeconfig,
    local_server_url,
    parse_kubeconfig,
    read_kubeconfig,
    same_file,
    tunnel_kubeconfig,
    write_kubeconfig,
)

GARDENER_STYLE = """\
apiVersion: v1
kind: Config
current-context: shoot--foo--bar
clusters:
- name: shoot--foo--bar
  cluster:
    server: https://api.bar.foo.example.com
    certificate-authority-data: LS0tLS1CRUdJTg==
- name: other
  cluster:
    server: https://other.example.com:6443
    certificate-authority: certs/other-ca.crt
contexts:
- name: shoot--foo--bar
  context: {cluster: shoot--foo--bar, user: shoot--foo--bar-token}
- name: other
  context: {cluster: other, user: other}
users:
- name: shoot--foo--bar-token
  user: {token: secret}
- name: other
  user:
    client-certificate: certs/client.crt
    client-key: /abs/client.key
    tokenFile: token
    exec: {command: ./bin/login, apiVersion: client.authentication.k8s.io/v1}
"""


def cluster(document: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c["cluster"] for c in document["clusters"] if c["name"] == name)


def test_the_current_context_cluster_points_at_the_listener_and_keeps_its_name() -> None:
    document = parse_kubeconfig(GARDENER_STYLE)
    original = copy.deepcopy(document)
    result, changed = tunnel_kubeconfig(document, "127.0.0.1", 6443)
    assert cluster(result, "shoot--foo--bar") == {
        "server": "https://127.0.0.1:6443",
        "certificate-authority-data": "LS0tLS1CRUdJTg==",
        "tls-server-name": "api.bar.foo.example.com",
    }
    assert cluster(result, "other") == cluster(original, "other")  # only the chosen cluster changes
    assert (changed.context, changed.cluster, changed.original_server, changed.server) == (
        "shoot--foo--bar", "shoot--foo--bar", "https://api.bar.foo.example.com", "https://127.0.0.1:6443",
    )  # fmt: skip
    assert document == original  # the input is never modified


def test_a_named_context_is_chosen_and_becomes_current() -> None:
    result, changed = tunnel_kubeconfig(parse_kubeconfig(GARDENER_STYLE), "127.0.0.1", 7000, context="other")
    assert result["current-context"] == "other"
    assert cluster(result, "other")["server"] == "https://127.0.0.1:7000"
    assert changed.tls_server_name == "other.example.com"
    assert cluster(result, "shoot--foo--bar")["server"] == "https://api.bar.foo.example.com"


def test_an_explicit_tls_server_name_is_kept_and_a_proxy_url_dropped() -> None:
    document = {
        "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1/prefix", "tls-server-name": "api.x",
                                               "proxy-url": "http://corp-proxy:3128"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c"}}],
        "current-context": "x",
    }  # fmt: skip
    result, changed = tunnel_kubeconfig(document, "::1", 6443)
    assert cluster(result, "c") == {"server": "https://[::1]:6443/prefix", "tls-server-name": "api.x"}
    assert changed.dropped_proxy_url


def test_relative_file_references_become_absolute_against_the_input_directory(tmp_path: Path) -> None:
    result, _ = tunnel_kubeconfig(
        parse_kubeconfig(GARDENER_STYLE), "127.0.0.1", 6443, base_directory=tmp_path
    )
    assert cluster(result, "other")["certificate-authority"] == str(tmp_path / "certs/other-ca.crt")
    user = next(u["user"] for u in result["users"] if u["name"] == "other")
    assert user["client-certificate"] == str(tmp_path / "certs/client.crt")
    assert user["client-key"] == "/abs/client.key"
    assert user["tokenFile"] == str(tmp_path / "token")
    assert user["exec"]["command"] == str(tmp_path / "bin/login")


def test_a_bare_exec_command_stays_a_path_lookup(tmp_path: Path) -> None:
    document = parse_kubeconfig(GARDENER_STYLE.replace("./bin/login", "kubectl-oidc_login"))
    result, _ = tunnel_kubeconfig(document, "127.0.0.1", 6443, base_directory=tmp_path)
    user = next(u["user"] for u in result["users"] if u["name"] == "other")
    assert user["exec"]["command"] == "kubectl-oidc_login"


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ({"clusters": []}, "no current-context; name one with --context"),
        ({"current-context": "x", "contexts": []}, "no entry named 'x' in 'contexts'"),
        ({"current-context": "x", "contexts": [{"name": "x", "context": {}}]}, "context 'x' names no cluster"),
        ({"current-context": "x", "contexts": [{"name": "x", "context": {"cluster": "c"}}]},
         "no entry named 'c' in 'clusters'"),
        ({"current-context": "x", "contexts": [{"name": "x", "context": {"cluster": "c"}}],
          "clusters": [{"name": "c", "cluster": {"server": "unix:///run/k8s.sock"}}]},
         "cluster 'c' has server 'unix:///run/k8s.sock', expected an https:// URL"),
        ({"current-context": "x", "contexts": "x"}, "'contexts' is not a list"),
    ],
    ids=["no-current", "no-context", "no-cluster-name", "no-cluster", "bad-server", "not-a-list"],
)  # fmt: skip
def test_unusable_kubeconfigs_are_named(document: dict[str, Any], error: str) -> None:
    with pytest.raises(KubeconfigError, match=f"^in.yaml: {re.escape(error)}"):
        tunnel_kubeconfig(document, "127.0.0.1", 6443, source="in.yaml")


def test_the_copy_is_json_that_parses_back_the_same() -> None:
    result, _ = tunnel_kubeconfig(parse_kubeconfig(GARDENER_STYLE), "127.0.0.1", 6443)
    text = dump_kubeconfig(result)
    assert json.loads(text) == result
    assert parse_kubeconfig(text) == result  # JSON input needs no YAML parser


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{not json", "not valid JSON"),
        ("a: [b", "not valid YAML"),
        ("- just\n- a list\n", "expected a kubeconfig"),
    ],
)
def test_unreadable_text_is_named(text: str, error: str) -> None:
    with pytest.raises(KubeconfigError, match=f"^src: {error}"):
        parse_kubeconfig(text, "src")


@pytest.mark.parametrize(
    ("host", "url"),
    [("127.0.0.1", "https://127.0.0.1:6443"), ("0.0.0.0", "https://127.0.0.1:6443"), ("::", "https://[::1]:6443"),
     ("localhost", "https://localhost:6443")],
)  # fmt: skip
def test_local_server_url(host: str, url: str) -> None:
    assert local_server_url(host, 6443) == url


def test_write_is_private_and_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "out.kubeconfig"
    target.write_text("old")
    os.chmod(target, 0o644)
    write_kubeconfig(target, '{"a": 1}\n')
    assert target.read_text() == '{"a": 1}\n'
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["out.kubeconfig"]  # no temporary file left


def test_write_into_a_missing_directory_says_so(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigError, match=r"cannot write .*missing/out: No such file or directory"):
        write_kubeconfig(tmp_path / "missing" / "out", "{}")


def test_read_and_same_file(tmp_path: Path) -> None:
    source = tmp_path / "in.yaml"
    source.write_text(GARDENER_STYLE)
    assert read_kubeconfig(source)["current-context"] == "shoot--foo--bar"
    link = tmp_path / "link.yaml"
    link.symlink_to(source)
    assert same_file(source, link)
    assert same_file(source, tmp_path / "." / "in.yaml")
    assert not same_file(source, tmp_path / "out.yaml")
    with pytest.raises(KubeconfigError, match=r"cannot read .*nope\.yaml: No such file or directory"):
        read_kubeconfig(tmp_path / "nope.yaml")


def test_yaml_without_pyyaml_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test environment has PyYAML; None in sys.modules makes its import fail as on a bare install.
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(KubeconfigError, match=r"^in\.yaml: reading a YAML kubeconfig needs PyYAML"):
        parse_kubeconfig(GARDENER_STYLE, "in.yaml")
    assert parse_kubeconfig('{"current-context": "x"}') == {"current-context": "x"}
