"""The kubeconfig copy for `apiproxy tunnel`, without sockets: rewriting, path resolution, reading, writing."""

from __future__ import annotations

import copy
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from apiproxy import documents
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
    assert parse_kubeconfig(text) == result


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{not json", r"not valid YAML or JSON: .* \(line 2, column 1\)"),
        ("a: [b", r"not valid YAML or JSON: .* \(line 2, column 1\)"),
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


# --- hostile or broken input: the attack, then the bound ----------------------------------------------------

TOKEN = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2Vu.SIGNATURE-0123456789"


def laughs(levels: int = 9) -> str:
    """A "billion laughs": 10^levels values from a few hundred bytes of YAML anchors and aliases."""
    lines = ['lol0: &lol0 "lol"']
    lines += [f"lol{n}: &lol{n} [" + ", ".join([f"*lol{n - 1}"] * 10) + "]" for n in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_a_syntax_error_on_a_token_line_names_the_place_not_the_token() -> None:
    text = GARDENER_STYLE.replace("user: {token: secret}", f"user:\n    token: {TOKEN}: oops")
    with pytest.raises(KubeconfigError) as caught:
        parse_kubeconfig(text, "in.yaml")
    message = str(caught.value)
    # PyYAML's own message quotes the line (and so the token); only its problem and position are kept.
    assert re.fullmatch(r"in\.yaml: not valid YAML or JSON: .+ \(line 21, column \d+\)", message), message
    assert "c2VjcmV0" not in message and "SIGNATURE" not in message


def test_a_billion_laughs_is_refused_before_anything_walks_it() -> None:
    text = laughs() + GARDENER_STYLE.replace("kind: Config", "kind: Config\nextensions: *lol9")
    with pytest.raises(
        KubeconfigError, match=r"^in\.yaml: YAML aliases expand it to more than 100,000 values \(line 6,"
    ):
        parse_kubeconfig(text, "in.yaml")
    # A few aliases are YAML as usual.
    assert parse_kubeconfig(laughs(2) + GARDENER_STYLE)["lol2"] == [["lol"] * 10] * 10


def test_a_cycle_through_an_alias_is_refused() -> None:
    with pytest.raises(
        KubeconfigError, match=r"^src: a YAML alias inside its own anchor \(a cycle\) \(line 1,"
    ):
        parse_kubeconfig("clusters: &c [*c]\n", "src")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("clusters: " + "[" * 100_000 + "]" * 100_000, "nesting depth"),  # libyaml's own limit (1,000)
        (
            "clusters:\n" + "".join(" " * level + "- \n" for level in range(1, 150)),
            "nested deeper than 100 levels",
        ),
        (
            '{"clusters": ' + "[" * 100_000 + "]" * 100_000 + "}",
            r"nested deeper than 100 levels \(line 1, column 113\)",
        ),
    ],
    ids=["yaml-flow", "yaml-block", "json"],
)
def test_deep_nesting_is_refused_without_recursion(text: str, message: str) -> None:
    with pytest.raises(KubeconfigError, match=f"^src: .*{message}"):
        parse_kubeconfig(text, "src")


def test_a_file_larger_than_the_bound_is_not_read_whole(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("w") as out:
        out.write("preferences:\n")
        for index in range(30 * 1024 * 1024 // 60):
            out.write(f"  key_{index:08d}: {'x' * 45}\n")
    assert big.stat().st_size > 30 * 1024 * 1024
    with pytest.raises(KubeconfigError, match=r"^cannot read .*big\.yaml: larger than 8 MiB$"):
        read_kubeconfig(big)


def test_a_dense_document_within_the_size_bound_is_refused_by_its_count() -> None:
    """A million list items in 4 MB: PyYAML would take ~20 s to build them; counting stops at 100,000."""
    with pytest.raises(KubeconfigError, match=r"^src: more than 100,000 values \(line 99999, column 3\)$"):
        parse_kubeconfig("preferences:\n" + "- 1\n" * 1_000_000, "src")
    with pytest.raises(KubeconfigError, match=r"^src: more than 100,000 values$"):
        parse_kubeconfig(json.dumps({"preferences": [1] * 1_000_000}), "src")


def test_a_file_that_is_not_utf8_says_where(tmp_path: Path) -> None:
    source = tmp_path / "latin1.yaml"
    source.write_bytes(b"current-context: x\nusers:\n- name: caf\xe9\n")
    with pytest.raises(KubeconfigError, match=r"latin1\.yaml: not UTF-8 text \(line 3, column 12\)$"):
        read_kubeconfig(source)


def test_values_shown_in_messages_are_bounded_and_a_servers_password_is_not() -> None:
    document: dict[str, Any] = {
        "current-context": "x",
        "contexts": [{"name": "x", "context": {"cluster": "c" * 10_000}}],
    }
    with pytest.raises(KubeconfigError) as caught:
        tunnel_kubeconfig(document, "127.0.0.1", 6443, source="in.yaml")
    assert len(str(caught.value)) < 120, str(caught.value)
    document["clusters"] = [{"name": "c" * 10_000, "cluster": {"server": "ftp://admin:hunter2@api.example"}}]
    with pytest.raises(KubeconfigError, match=r"has server 'ftp://api\.example', expected") as caught:
        tunnel_kubeconfig(document, "127.0.0.1", 6443, source="in.yaml")
    assert "hunter2" not in str(caught.value) and len(str(caught.value)) < 200
    document["clusters"][0]["cluster"]["server"] = "https://[::1"
    with pytest.raises(KubeconfigError, match=r"has server 'https://\[::1', expected an https:// URL"):
        tunnel_kubeconfig(document, "127.0.0.1", 6443, source="in.yaml")


def test_json_is_read_as_json() -> None:
    # json.dumps escapes non-ASCII as \\uXXXX, a character outside the BMP as a surrogate pair: read back whole.
    document = {"current-context": "café ☕ 🚀", "clusters": [], "number": 1e3}
    assert parse_kubeconfig(json.dumps(document)) == document


def test_the_same_bounds_without_libyaml(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyYAML built without libyaml (an sdist install): the pure-Python parser is used, bounds unchanged."""
    monkeypatch.setattr(documents, "_LOADER", yaml.SafeLoader)
    with pytest.raises(KubeconfigError, match=r"^src: nested deeper than 100 levels \(line 1, column 110\)$"):
        parse_kubeconfig("clusters: " + "[" * 100_000 + "]" * 100_000, "src")
    with pytest.raises(KubeconfigError, match=r"^src: YAML aliases expand it to more than 100,000 values"):
        parse_kubeconfig(laughs(), "src")
    # The pure-Python reader counts characters where libyaml counts bytes: the same column either way.
    with pytest.raises(
        KubeconfigError, match=r"^src: not valid YAML or JSON: character U\+0000: .* \(line 2, column 7\)$"
    ):
        parse_kubeconfig("a: b\nnamé: \x00\n", "src")
    monkeypatch.undo()
    with pytest.raises(
        KubeconfigError, match=r"^src: not valid YAML or JSON: character U\+0000: .* \(line 2, column 7\)$"
    ):
        parse_kubeconfig("a: b\nnamé: \x00\n", "src")
