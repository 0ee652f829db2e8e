"""The optional historical rules of the sidecar (`--setup-iptables`): NOTRACK in the raw table and ACCEPT
in the filter table for VIP:port, both directions, so the node-local VIP costs no conntrack entries.

Driven through the iptables command of the backend the node already uses (nft or legacy: rules in the
other one would be invisible to whoever reads the node's rules), checked with -C and inserted with -I.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..config import IPAddress

# The chains kubelet and kube-proxy create to mark the backend they use (as kube's iptables-wrapper reads).
_BACKEND_HINTS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")


@dataclass(frozen=True, slots=True)
class Rule:
    table: str
    chain: str
    match: tuple[str, ...]

    def __str__(self) -> str:
        return f"-t {self.table} {self.chain} {' '.join(self.match)}"


def rules_for(address: IPAddress, port: int) -> tuple[Rule, ...]:
    to_vip = ("-p", "tcp", "-d", str(address), "--dport", str(port))
    from_vip = ("-p", "tcp", "-s", str(address), "--sport", str(port))
    return (
        Rule("raw", "PREROUTING", (*to_vip, "-j", "NOTRACK")),
        Rule("filter", "INPUT", (*to_vip, "-j", "ACCEPT")),
        Rule("raw", "OUTPUT", (*from_vip, "-j", "NOTRACK")),
        Rule("filter", "OUTPUT", (*from_vip, "-j", "ACCEPT")),
        # Connections from the node itself (hostNetwork pods) to the VIP.
        Rule("raw", "OUTPUT", (*to_vip, "-j", "NOTRACK")),
    )


def choose_backend(saves: Mapping[str, str]) -> str:
    """Pick among `{command: its iptables-save output}`: the one carrying kubelet's hint chains, else the
    one holding more rules; nft on a tie (Debian's and kubelet's default)."""
    for command, text in saves.items():
        if any(hint in text for hint in _BACKEND_HINTS):
            return command
    return max(saves, key=lambda command: (text_rules(saves[command]), "nft" in command))


def text_rules(save_output: str) -> int:
    return sum(1 for line in save_output.splitlines() if line.startswith("-A "))


Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)


def detect_command(version: int, run: Runner = _run) -> str:
    base = "iptables" if version == 4 else "ip6tables"
    candidates = [c for c in (f"{base}-nft", f"{base}-legacy") if shutil.which(c)]
    if not candidates:
        return base
    if len(candidates) == 1:
        return candidates[0]
    return choose_backend({c: run([f"{c}-save"]).stdout for c in candidates})


class IPTablesError(RuntimeError):
    pass


class IPTables:
    """Keeps `rules_for(address, port)` present; runs commands, so call it off the event loop."""

    def __init__(
        self, address: IPAddress, port: int, *, command: str | None = None, run: Runner = _run
    ) -> None:
        self.rules = rules_for(address, port)
        self._run = run
        self.command = command or detect_command(address.version, run)

    def _exec(self, action: str, rule: Rule) -> subprocess.CompletedProcess[str]:
        # -w: wait for the xtables lock (legacy backend) instead of failing while kube-proxy holds it.
        return self._run([self.command, "-w", "5", "-t", rule.table, action, rule.chain, *rule.match])

    def present(self, rule: Rule) -> bool:
        return self._exec("-C", rule).returncode == 0

    def ensure(self) -> list[str]:
        """Insert every missing rule at the top of its chain. Returns what was added."""
        added = []
        for rule in self.rules:
            if self.present(rule):
                continue
            answer = self._exec("-I", rule)
            if answer.returncode != 0:
                raise IPTablesError(f"{self.command} -I {rule}: {answer.stderr.strip()}")
            added.append(f"added iptables rule {rule}")
        return added

    def remove(self) -> list[str]:
        """Delete every copy of every rule."""
        removed = []
        for rule in self.rules:
            for _ in range(100):  # bounded: a rule inserted again and again by someone else
                if not self.present(rule):
                    break
                answer = self._exec("-D", rule)
                if answer.returncode != 0:
                    raise IPTablesError(f"{self.command} -D {rule}: {answer.stderr.strip()}")
                removed.append(f"removed iptables rule {rule}")
        return removed
