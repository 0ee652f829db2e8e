"""Writes the values table of a chart's README.md from its values.yaml (keys, defaults, `# --` comments).

The table sits between `<!-- values:begin -->` and `<!-- values:end -->`; the rest of the README is prose.
`--check` only compares, so CI fails when values.yaml changed and the README did not.
Usage: python deploy/chart_readme.py [--check] charts/apiserver-proxy
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

BEGIN, END = "<!-- values:begin -->", "<!-- values:end -->"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?: |$)")


def documented_keys(text: str) -> list[tuple[str, str]]:
    """(dotted key, description) for every key of values.yaml, in file order; `# --` comments describe."""
    rows: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and pending:
            pending.append(stripped[1:].strip())
            continue
        match = _KEY.match(line)
        if not match or stripped.startswith("- "):
            continue  # list items are part of the default of the key above them
        indent = len(match.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group("key")))
        rows.append((".".join(key for _, key in stack), " ".join(pending)))
        pending = []
    return rows


def lookup(values: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    """(found, value); keys inside list items (a toleration's `operator`) are not values of their own."""
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def table(values_text: str) -> str:
    values = yaml.safe_load(values_text)
    lines = ["| Key | Default | Description |", "| --- | --- | --- |"]
    collapsed: list[str] = []
    for key, description in documented_keys(values_text):
        found, default = lookup(values, key)
        if not found or any(key.startswith(group + ".") for group in collapsed):
            continue
        if isinstance(default, dict) and default:
            if not description:
                continue  # a group: its keys have rows of their own
            collapsed.append(key)  # a described group is one row, its whole default shown
        shown = json.dumps(default, separators=(", ", ": ")).replace("|", "\\|")
        lines.append(f"| `{key}` | `{shown}` | {description.replace('|', chr(92) + '|')} |")
    return "\n".join(lines)


def render(readme: str, values_text: str) -> str:
    head, _, rest = readme.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{table(values_text)}\n{END}{tail}"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    (chart,) = [Path(arg) for arg in argv if arg != "--check"]
    readme_path = chart / "README.md"
    readme = readme_path.read_text()
    if BEGIN not in readme or END not in readme:
        print(f"chart_readme: {readme_path} lacks the {BEGIN} ... {END} markers", file=sys.stderr)
        return 1
    wanted = render(readme, (chart / "values.yaml").read_text())
    if wanted == readme:
        return 0
    if check:
        print(
            f"chart_readme: {readme_path} is out of date: run python deploy/chart_readme.py {chart}",
            file=sys.stderr,
        )
        return 1
    readme_path.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
