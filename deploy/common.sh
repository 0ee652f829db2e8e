# Shared settings of the deploy/ scripts: where tools and caches live, and buildah without a daemon.
# Everything goes under .tools/ (gitignored) so repeat CI runs reuse it.
# shellcheck shell=bash
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools="$repo/.tools"
mkdir -p "$tools"
# vfs storage and chroot isolation: no overlay mounts, no user namespaces, no daemon needed.
buildah_args=(--root "$tools/containers/storage" --runroot "$tools/containers/run" --storage-driver vfs)
export BUILDAH_ISOLATION=chroot
# The base made by debootstrap stands in for the official python image (no registry is reachable here).
base_image=localhost/apiproxy-base:bookworm
image=localhost/apiproxy:ci
host_ca=/etc/ssl/certs/ca-certificates.crt

# stage NAME COMMAND...: run a step and print how long it took.
stage() {
  local name=$1 started
  shift
  started=$(date +%s)
  "$@"
  echo "deploy: $name took $(($(date +%s) - started))s"
}
