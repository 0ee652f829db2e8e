#!/usr/bin/env bash
# Builds the image with buildah (no Docker engine): from the debootstrap base of build-base.sh, into
# .tools/containers. pip inside the build gets this host's index settings and CA bundle as build secrets
# (the registry TLS here is re-signed by a local CA); neither lands in a layer. Prints time and size.
# Usage: deploy/build-image.sh [extra buildah build args]
set -euo pipefail
source "$(dirname "$0")/common.sh"

# This host's pip settings, reduced to what works inside the build: http(s) indexes (file:// ones
# live on this host's disk), timeouts; the CA bundle path becomes the secret's mount point.
pip_conf=$(mktemp)
trap 'rm -f "$pip_conf"' EXIT
pip=$repo/.venv/bin/pip
[ -x "$pip" ] || pip="python3 -m pip"
$pip config list 2>/dev/null | python3 -c '
import re, sys
keep = {"index-url", "extra-index-url", "trusted-host", "timeout", "default-timeout", "retries"}
out = {"cert": "/run/secrets/ca.crt"}
for line in sys.stdin:
    m = re.match(r"^[^.]*\.([a-z-]+)=(.*)$", line.strip())
    if not m or m.group(1) not in keep:
        continue
    value = m.group(2).strip("\x27\"")
    if m.group(1).endswith("index-url"):
        value = " ".join(u for u in value.split() if u.startswith(("http://", "https://")))
    if value:
        out[m.group(1)] = value
print("[global]")
for key, value in out.items():
    print(f"{key} = {value}")
' >"$pip_conf"
# An index given only by environment (PIP_INDEX_URL) reaches the build through the same file.
if [ -n "${PIP_INDEX_URL:-}" ]; then echo "index-url = $PIP_INDEX_URL" >>"$pip_conf"; fi

version=$(python3 -c 'import re,sys; print(re.search(r"__version__ = \"(.+)\"", open(sys.argv[1]).read())[1])' "$repo/apiproxy/__init__.py")
revision=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)

started=$(date +%s)
# No --layers: on vfs every cached layer is a full copy of the root file system, so a layer-cached
# rebuild (~70 s) is slower than building in one container per stage (~30 s with the downloads).
buildah "${buildah_args[@]}" build --quiet \
  --isolation chroot \
  --build-arg BASE_IMAGE="$base_image" \
  --build-arg VERSION="$version" \
  --build-arg REVISION="$revision" \
  --secret id=pip.conf,src="$pip_conf" \
  --secret id=ca.crt,src="$host_ca" \
  --tag "$image" \
  "$@" \
  "$repo" >/dev/null
# The previous build's image, now untagged, and any leftovers of a failed build.
buildah "${buildah_args[@]}" rmi --prune >/dev/null 2>&1 || true
size=$(buildah "${buildah_args[@]}" images --format '{{.Size}}' "$image")
echo "build-image: $image ($version, $revision) built in $(($(date +%s) - started))s, size $size"
