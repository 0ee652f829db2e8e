#!/usr/bin/env bash
# Checks charts/apiserver-proxy: its README's values table is current, helm lint --strict and helm template for each mode and each value file
# in its ci/ folder, every manifest validated by kubernetes-validate --strict (the current Kubernetes and
# the oldest the chart allows), the chart's tests (tests/deploy), and each rendered envoy.yaml
# (gardenerCompatible) validated by the real Envoy and by apiproxy's own `envoy`.
# The rendered files stay in .tools/chart-out/ for check-image.sh.
set -euo pipefail
source "$(dirname "$0")/common.sh"

chart=$repo/charts/apiserver-proxy
helm=$tools/bin/helm
validate=$tools/venv/bin/kubernetes-validate
kube_versions=(1.37.0 1.27.0)
out=$tools/chart-out
rm -rf "$out" && mkdir -p "$out"

"$repo/.venv/bin/python" "$repo/deploy/chart_readme.py" --check "$chart"
# Without values the required ones are missing: lint still checks the rest (and says so at INFO level).
lint=$("$helm" lint --strict --quiet "$chart" 2>&1) || { echo "$lint" >&2; exit 1; }
for values in "$chart"/ci/*-values.yaml; do
  name=$(basename "$values" -values.yaml)
  "$helm" lint --strict --quiet "$chart" --values "$values"
  "$helm" template apiserver-proxy "$chart" --namespace kube-system --values "$values" >"$out/$name.yaml"
  for version in "${kube_versions[@]}"; do
    "$validate" --strict --quiet --kubernetes-version "$version" "$out/$name.yaml" 2>&1 \
      | { grep -v "Couldn't find schema for kind ServiceMonitor" || true; } | { ! grep .; } \
      || { echo "check-chart: FAIL: $name does not validate against Kubernetes $version" >&2; exit 1; }
  done
  "$repo/.venv/bin/python" - "$out/$name.yaml" "$out/$name.envoy.yaml" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc["kind"] == "ConfigMap" and "envoy.yaml" in doc.get("data", {}):
        open(sys.argv[2], "w").write(doc["data"]["envoy.yaml"])
PY
  if [ -f "$out/$name.envoy.yaml" ]; then
    "$repo/.venv/bin/envoy" --mode validate -c "$out/$name.envoy.yaml" >"$out/$name.envoy-validate.log" 2>&1 \
      || { tail -5 "$out/$name.envoy-validate.log" >&2; echo "check-chart: FAIL: Envoy rejects $name's envoy.yaml" >&2; exit 1; }
    "$repo/.venv/bin/apiproxy-envoy" --mode validate -c "$out/$name.envoy.yaml" >/dev/null \
      || { echo "check-chart: FAIL: apiproxy's envoy rejects $name's envoy.yaml" >&2; exit 1; }
    echo "check-chart: $name: lint, template, kubernetes-validate ${kube_versions[*]}, envoy.yaml valid for Envoy and apiproxy"
  else
    echo "check-chart: $name: lint, template, kubernetes-validate ${kube_versions[*]}"
  fi
done

"$repo/.venv/bin/pytest" -q -p no:cacheprovider "$repo/tests/deploy"
