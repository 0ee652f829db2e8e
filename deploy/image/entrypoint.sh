#!/bin/sh
# The image's entry point. Gardener's sidecar and init containers give the image only flags
# (args, no command), as its Go image expects: those go to apiserver-proxy-sidecar. Anything else is a
# command (`apiproxy run ...`, `envoy -c ...`) and runs as given.
set -e
case "${1:-}" in
  "" | -*) exec apiserver-proxy-sidecar "$@" ;;
  *) exec "$@" ;;
esac
