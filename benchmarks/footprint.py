"""RSS at start of `apiproxy run` with the VIP reconciler and monitoring on, and where it goes:
`python -m benchmarks.footprint` (root: the VIP lives on `lo` of a network namespace made for the run).

1. The process as deployed: `apiproxy run --ip-address ... --interface lo`, VmRSS one second after it
   listens (median of `--repeats`), bytecode compiled first (`compileall`, as an image is built: this
   machine may set PYTHONDONTWRITEBYTECODE).
2. The same proxy without the command line: its ProxyConfig built by the same parse functions, then
   `run_proxy` - what the process would hold if it dropped typer, click and pydantic after parsing.
3. The imports in the order `run` makes them, each step's RSS in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIP = "10.96.0.2"
RUN = ["run", "--ip-address", VIP, "--interface", "lo", "--upstream", "127.0.0.1:8443",
       "--destination", "outbound|443||kube-apiserver.shoot--bench--rss.svc.cluster.local"]  # fmt: skip

# Step 2: the same configuration, built without typer.
WITHOUT_CLI = f"""
import sys
from apiproxy import logs
from apiproxy.config import Endpoint, ListenerConfig, MonitoringConfig, ProxyConfig, TunnelConfig, parse_endpoint
from apiproxy.runtime import run_proxy
from apiproxy.vip.options import build_vip, parse_vip
logs.setup(0, "text")
tunnel = TunnelConfig(upstream=parse_endpoint("--upstream", "127.0.0.1:8443"), connect_authority="127.0.0.1:443",
                      connect_headers=(("X-Gardener-Destination", "{RUN[-1]}"),))
config = ProxyConfig(listener=ListenerConfig(listen=Endpoint("{VIP}", 443), freebind=True), tunnel=tunnel,
                     monitoring=MonitoringConfig(),
                     vip=build_vip(parse_vip("--ip-address", "{VIP}"), "lo", "1m", False, False, 443))
assert "typer" not in sys.modules
sys.exit(run_proxy(config))
"""

# Step 3: cumulative imports, as `apiproxy run` makes them.
STEPS = [
    ("apiproxy.runtime (asyncio, ssl, uvloop, the server)", "import apiproxy.runtime"),
    ("typer, click", "import typer"),
    ("apiproxy.cli and its sub-commands (kubeconfig: PyYAML)", "import apiproxy.cli as c; c._register()"),
    ("parsing `run` (typer builds pydantic adapters)", "PARSE"),
    ("apiproxy.monitoring (prometheus-client)", "import apiproxy.monitoring"),
    ("apiproxy.vip.service", "import apiproxy.vip.service"),
]
IMPORTS = """
import sys
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024
print(f"python|{rss():.1f}|{len(sys.modules)}")
for label, step in STEPS:
    if step == "PARSE":
        import typer, apiproxy.cli, apiproxy.runtime
        apiproxy.runtime.run_proxy = lambda config, on_serving=None: 0
        try:
            typer.main.get_command(apiproxy.cli.app).main(args=RUN, prog_name="apiproxy", standalone_mode=False)
        except SystemExit:
            pass
    else:
        exec(step)
    print(f"{label}|{rss():.1f}|{len(sys.modules)}")
"""


def _vm_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _started(command: list[str], namespace: str | None) -> float:
    """VmRSS (MiB) of `command` one second after it says it listens; then it is stopped."""
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    with subprocess.Popen([*prefix, *command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT, stdin=subprocess.DEVNULL) as process:  # fmt: skip
        try:
            assert process.stderr is not None
            deadline = time.monotonic() + 30
            for line in process.stderr:
                if "listening on" in line:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("not listening within 30 s")
            else:
                raise RuntimeError(f"{' '.join(command[:4])}... exited with {process.wait()}")
            time.sleep(1)
            return _vm_rss_mib(process.pid)
        finally:
            process.terminate()
            process.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.footprint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="processes measured per figure (1-9)")
    options = parser.parse_args(argv)
    if not 1 <= options.repeats <= 9:
        parser.error(f"--repeats {options.repeats}: expected 1 to 9")
    if os.geteuid() != 0:
        parser.error("needs root: the VIP is kept on lo of a network namespace made for the run")
    compileall.compile_dir(ROOT / "apiproxy", quiet=1)
    namespace = f"apiproxy-rss-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up"], check=True)
        deployed = [
            _started([sys.executable, "-m", "apiproxy", *RUN], namespace) for _ in range(options.repeats)
        ]
        bare = [_started([sys.executable, "-c", WITHOUT_CLI], namespace) for _ in range(options.repeats)]
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)
    print(f"apiproxy run (VIP reconciler and monitoring on): {statistics.median(deployed):.1f} MiB VmRSS at start "
          f"({', '.join(f'{r:.1f}' for r in deployed)})")  # fmt: skip
    print(f"the same without the command line:              {statistics.median(bare):.1f} MiB "
          f"({', '.join(f'{r:.1f}' for r in bare)})")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", f"STEPS = {STEPS!r}\nRUN = {RUN!r}\n{IMPORTS}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    print("\nimports, cumulative (fresh interpreter):")
    previous = None
    for line in done.stdout.splitlines():
        label, mib, modules = line.split("|")
        step = (
            ""
            if previous is None
            else f"+{float(mib) - previous[0]:4.1f} MiB, +{int(modules) - previous[1]:3d} modules"
        )
        print(f"  {label:58s} {float(mib):5.1f} MiB {step}")
        previous = (float(mib), int(modules))
    return 0


if __name__ == "__main__":
    sys.exit(main())
