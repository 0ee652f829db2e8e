#!/usr/bin/env bash
# Makes the local base image the CI build uses instead of docker.io/python:3.11-slim: a minimal
# Debian bookworm (debootstrap minbase) with python3 and venv. Cached: a rebuild happens only when the
# image is missing from .tools/containers or when this script's package list changes.
set -euo pipefail
source "$(dirname "$0")/common.sh"

suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=python3,python3-venv
key="$suite $packages"
stamp="$tools/base-image.key"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && buildah "${buildah_args[@]}" inspect --type image "$base_image" >/dev/null 2>&1; then
  echo "build-base: $base_image is cached"
  exit 0
fi

rootfs=$(mktemp -d "$tools/rootfs.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
echo "build-base: debootstrap $suite ($packages) from $mirror"
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >"$tools/debootstrap.log" 2>&1 \
  || { tail -20 "$tools/debootstrap.log" >&2; exit 1; }
# What a slim image leaves out: package lists, caches, docs, man pages, logs.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*

ctr=$(buildah "${buildah_args[@]}" from scratch)
mnt=$(buildah "${buildah_args[@]}" mount "$ctr")
cp -a "$rootfs"/. "$mnt"/
buildah "${buildah_args[@]}" umount "$ctr" >/dev/null
buildah "${buildah_args[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --cmd python3 --label org.opencontainers.image.description="Debian $suite minbase with python3 (CI stand-in for python:3.11-slim)" "$ctr"
buildah "${buildah_args[@]}" commit --rm -q "$ctr" "$base_image" >/dev/null
echo "$key" >"$stamp"
echo "build-base: $base_image built"
