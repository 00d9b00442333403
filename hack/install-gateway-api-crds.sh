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
# shellcheck source=lib/crds-from-module.sh
source "$(dirname "$0")/lib/crds-from-module.sh"

VERSION="${GATEWAY_API_VERSION:-v1.6.3}"
SHA256="${GATEWAY_API_ZIP_SHA256:-7c5d0a931d6ffb3e08ac4d5318969faaa6acf25a40ad13cc5978c22117e9b64b}"
GOPROXY_URL="${GPUFLEET_GOPROXY:-https://proxy.golang.org}"
CACHE="${GPUFLEET_CACHE:-$HOME/.cache/gpufleet}"
OUT="$CACHE/gateway-api-crds-$VERSION"
PYTHON="${PYTHON:-python3}"
CRDS=(gateway.networking.k8s.io_gatewayclasses.yaml gateway.networking.k8s.io_gateways.yaml
  gateway.networking.k8s.io_httproutes.yaml)

crds_from_module install-gateway-api-crds sigs.k8s.io/gateway-api "$VERSION" "$SHA256" config/crd/standard "$OUT" "${CRDS[@]}"
