#!/usr/bin/env bash
# Debian packages the tests need: iproute2 (ip netns), iptables and conntrack (VIP rules), promtool and
# a Prometheus server (metrics checks), iperf3 and wrk (benchmarks), buildah and debootstrap (image build),
# curl and npm (the deploy checks fetch helm from the npm registry).
# Installs only what is missing; needs root (CI runs as root). Safe to run again.
set -euo pipefail
packages=(iproute2 procps iptables conntrack prometheus iperf3 wrk buildah debootstrap unzip)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Commands that may come from another package (Node.js's own npm): install only if absent.
command -v curl >/dev/null || missing+=(curl)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-system-deps: need root to install: ${missing[*]}" >&2
  exit 1
fi
echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
# The prometheus package starts a server on :9090 and the exporter; tests start their own on loopback.
systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true
