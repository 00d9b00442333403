#!/usr/bin/env bash
# The Prometheus Operator's CRDs (ServiceMonitor, PodMonitor, PrometheusRule), for checking the chart's
# monitoring objects against the real schemas on the test control plane. Installed once.
#
#   hack/install-monitoring-crds.sh     (what `make monitoring-crds` runs; the folder is the last line of stdout)
#
# No GitHub release is reachable from these machines, but the Go module proxy is, and the
# prometheus-operator module's zip carries the CRDs (example/prometheus-operator-crd/). The zip is
# pinned by version and SHA-256, so the cache folder is keyed by the version and a rerun does nothing.
set -euo pipefail

VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
SHA256="${PROMETHEUS_OPERATOR_ZIP_SHA256:-0bdb88ed823d0f2e86cf909638439b6ad1da744a228172c7411d9987527dc5d1}"
GOPROXY_URL="${GPUFLEET_GOPROXY:-https://proxy.golang.org}"
CACHE="${GPUFLEET_CACHE:-$HOME/.cache/gpufleet}"
OUT="$CACHE/prometheus-operator-crds-$VERSION"
PYTHON="${PYTHON:-python3}"
CRDS=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_podmonitors.yaml
  monitoring.coreos.com_prometheusrules.yaml)

log() { echo "[install-monitoring-crds] $*" >&2; }
die() { echo "[install-monitoring-crds] ERROR: $*" >&2; exit 1; }

complete=1
for crd in "${CRDS[@]}"; do [[ -f "$OUT/$crd" ]] || complete=0; done
if (( complete )); then echo "$OUT"; exit 0; fi

mkdir -p "$CACHE"
work="$(mktemp -d "$CACHE/.monitoring-crds.XXXXXX")"
trap 'rm -rf "$work"' EXIT
url="$GOPROXY_URL/github.com/prometheus-operator/prometheus-operator/@v/$VERSION.zip"
log "downloading $url"
"$PYTHON" - "$url" "$work/module.zip" <<'PY' || die "download failed"
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=120) as response, open(sys.argv[2], "wb") as out:
    out.write(response.read())
PY
actual="$(sha256sum "$work/module.zip" | cut -d' ' -f1)"
[[ "$actual" == "$SHA256" ]] || die "SHA-256 of the module zip is $actual, expected $SHA256"
mkdir -p "$work/crds"
"$PYTHON" - "$work/module.zip" "$work/crds" "prometheus-operator@$VERSION/example/prometheus-operator-crd" \
  "${CRDS[@]}" <<'PY'
import sys, zipfile
module, out, folder, names = zipfile.ZipFile(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
for name in names:
    path = f"github.com/prometheus-operator/{folder}/{name}"
    with open(f"{out}/{name}", "wb") as crd:
        crd.write(module.read(path))
PY
rm -rf "$OUT"
mv "$work/crds" "$OUT"   # last, so a half-done run never looks complete
log "prometheus-operator $VERSION CRDs in $OUT"
echo "$OUT"
