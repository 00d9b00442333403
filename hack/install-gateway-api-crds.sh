#!/usr/bin/env bash
# The Gateway API's standard-channel CRDs (HTTPRoute, Gateway, GatewayClass), so the canary tests route
# traffic by HTTPRoute weights as a real gateway would, against the real schemas. Installed once.
#
#   hack/install-gateway-api-crds.sh     (what `make gateway-api-crds` runs; the folder is the last line of stdout)
#
# No GitHub release is reachable from these machines, but the Go module proxy is, and the
# sigs.k8s.io/gateway-api module's zip carries the CRDs (config/crd/standard/). The zip is pinned by
# version and SHA-256, so the cache folder is keyed by the version and a rerun does nothing.
set -euo pipefail

VERSION="${GATEWAY_API_VERSION:-v1.6.3}"
SHA256="${GATEWAY_API_ZIP_SHA256:-7c5d0a931d6ffb3e08ac4d5318969faaa6acf25a40ad13cc5978c22117e9b64b}"
GOPROXY_URL="${GPUFLEET_GOPROXY:-https://proxy.golang.org}"
CACHE="${GPUFLEET_CACHE:-$HOME/.cache/gpufleet}"
OUT="$CACHE/gateway-api-crds-$VERSION"
PYTHON="${PYTHON:-python3}"
CRDS=(gateway.networking.k8s.io_gatewayclasses.yaml gateway.networking.k8s.io_gateways.yaml
  gateway.networking.k8s.io_httproutes.yaml)

log() { echo "[install-gateway-api-crds] $*" >&2; }
die() { echo "[install-gateway-api-crds] ERROR: $*" >&2; exit 1; }

complete=1
for crd in "${CRDS[@]}"; do [[ -f "$OUT/$crd" ]] || complete=0; done
if (( complete )); then echo "$OUT"; exit 0; fi

mkdir -p "$CACHE"
work="$(mktemp -d "$CACHE/.gateway-api-crds.XXXXXX")"
trap 'rm -rf "$work"' EXIT
url="$GOPROXY_URL/sigs.k8s.io/gateway-api/@v/$VERSION.zip"
log "downloading $url"
"$PYTHON" - "$url" "$work/module.zip" <<'PY' || die "download failed"
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=120) as response, open(sys.argv[2], "wb") as out:
    out.write(response.read())
PY
actual="$(sha256sum "$work/module.zip" | cut -d' ' -f1)"
[[ "$actual" == "$SHA256" ]] || die "SHA-256 of the module zip is $actual, expected $SHA256"
mkdir -p "$work/crds"
"$PYTHON" - "$work/module.zip" "$work/crds" "sigs.k8s.io/gateway-api@$VERSION/config/crd/standard" \
  "${CRDS[@]}" <<'PY'
import sys, zipfile
module, out, folder, names = zipfile.ZipFile(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
for name in names:
    with open(f"{out}/{name}", "wb") as crd:
        crd.write(module.read(f"{folder}/{name}"))
PY
rm -rf "$OUT"
mv "$work/crds" "$OUT"   # last, so a half-done run never looks complete
log "gateway-api $VERSION CRDs in $OUT"
echo "$OUT"
