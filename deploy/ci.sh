#!/usr/bin/env bash
# The deploy checks CI runs after `make test` (which made .venv), each stage timed:
#   deploy/ci.sh chart   tools, hadolint on the Dockerfile, the chart (lint, template, kubernetes-validate,
#                        envoy.yaml with Envoy and apiproxy, tests/deploy)
#   deploy/ci.sh image   debootstrap base (cached), buildah build, the image's checks
# Needs root (debootstrap, buildah, network namespaces).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$repo"

case "${1:-}" in
  chart)
    stage "install-tools" bash deploy/install-tools.sh
    stage "hadolint" "$tools/venv/bin/hadolint" --failure-threshold error Dockerfile
    stage "check-chart" bash deploy/check-chart.sh
    ;;
  image)
    stage "build-base" bash deploy/build-base.sh
    stage "build-image" bash deploy/build-image.sh
    # The rendered gardenerCompatible envoy.yaml (check-chart.sh) is also read by the image's own envoy.
    stage "check-image" bash deploy/check-image.sh "$tools/chart-out/gardener-compatible.envoy.yaml"
    ;;
  *)
    echo "usage: deploy/ci.sh chart|image" >&2
    exit 2
    ;;
esac
