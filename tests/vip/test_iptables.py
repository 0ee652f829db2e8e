"""The sidecar's historical rules and the choice of iptables backend (rules in the backend the node does
not use would be invisible to its operators). Running them is covered by the namespace tests."""

from __future__ import annotations

import ipaddress
import subprocess

from apiproxy.vip.iptables import IPTables, choose_backend, rules_for

LEGACY_SAVE = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j KUBE-FIREWALL\n-A OUTPUT -j KUBE-FIREWALL\nCOMMIT\n"
NFT_SAVE = "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"


def test_rules_are_the_sidecars_five() -> None:
    rules = [str(r) for r in rules_for(ipaddress.ip_address("10.96.0.2"), 443)]
    assert rules == [
        "-t raw PREROUTING -p tcp -d 10.96.0.2 --dport 443 -j NOTRACK",
        "-t filter INPUT -p tcp -d 10.96.0.2 --dport 443 -j ACCEPT",
        "-t raw OUTPUT -p tcp -s 10.96.0.2 --sport 443 -j NOTRACK",
        "-t filter OUTPUT -p tcp -s 10.96.0.2 --sport 443 -j ACCEPT",
        "-t raw OUTPUT -p tcp -d 10.96.0.2 --dport 443 -j NOTRACK",
    ]


def test_backend_with_more_rules_wins() -> None:
    assert choose_backend({"iptables-nft": NFT_SAVE, "iptables-legacy": LEGACY_SAVE}) == "iptables-legacy"


def test_kubelet_hint_chain_wins_over_rule_count() -> None:
    hinted = ":KUBE-IPTABLES-HINT - [0:0]\n"
    assert choose_backend({"iptables-nft": hinted, "iptables-legacy": LEGACY_SAVE}) == "iptables-nft"


def test_nft_on_a_tie() -> None:
    assert choose_backend({"iptables-legacy": NFT_SAVE, "iptables-nft": NFT_SAVE}) == "iptables-nft"


def test_ensure_inserts_only_missing_rules_and_remove_deletes_every_copy() -> None:
    present = {"-t raw PREROUTING -p tcp -d 10.96.0.2 --dport 443 -j NOTRACK": 2}
    calls: list[str] = []

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        assert args[:4] == ["iptables-nft", "-w", "5", "-t"]
        action, rule = args[5], f"-t {args[4]} {' '.join(args[6:])}"
        calls.append(action)
        code = 0
        if action == "-C":
            code = 0 if present.get(rule) else 1
        elif action == "-I":
            present[rule] = present.get(rule, 0) + 1
        elif action == "-D":
            present[rule] -= 1
        return subprocess.CompletedProcess(args, code, "", "")

    tables = IPTables(ipaddress.ip_address("10.96.0.2"), 443, command="iptables-nft", run=run)
    assert len(tables.ensure()) == 4
    assert tables.ensure() == []
    assert len(tables.remove()) == 6
    assert not any(present.values())
