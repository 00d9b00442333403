#!/usr/bin/env bash
# The demo (`make demo`): a local control plane, Prometheus, a local AWS endpoint,
# a simulated three-zone A100 fleet and the gpufleet operator; the Llama 3 70B
# sample under a short story of load and a spot interruption, shown live; then a
# summary table. Everything it starts is stopped at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORKDIR="${GPUFLEET_DEMO_DIR:-$ROOT/.state/demo}"
rm -rf "$WORKDIR"
exec .venv/bin/python -m fleetsim run hack/scenarios/demo.yaml --live --workdir "$WORKDIR"
