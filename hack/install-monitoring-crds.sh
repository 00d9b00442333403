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
# shellcheck source=lib/crds-from-module.sh
source "$(dirname "$0")/lib/crds-from-module.sh"

VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
SHA256="${PROMETHEUS_OPERATOR_ZIP_SHA256:-0bdb88ed823d0f2e86cf909638439b6ad1da744a228172c7411d9987527dc5d1}"
GOPROXY_URL="${GPUFLEET_GOPROXY:-https://proxy.golang.org}"
CACHE="${GPUFLEET_CACHE:-$HOME/.cache/gpufleet}"
OUT="$CACHE/prometheus-operator-crds-$VERSION"
PYTHON="${PYTHON:-python3}"
CRDS=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_podmonitors.yaml
  monitoring.coreos.com_prometheusrules.yaml)

crds_from_module install-monitoring-crds github.com/prometheus-operator/prometheus-operator "$VERSION" "$SHA256" example/prometheus-operator-crd "$OUT" "${CRDS[@]}"
