#!/usr/bin/env bash
# The demo: bring up a local control plane, install the CRD, apply the samples,
# show `kubectl get md`, and stop everything it started.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${GPUFLEET_DEMO_DIR:-$ROOT/.state/demo}"
cd "$ROOT"

cleanup() { bash hack/cluster.sh down "$STATE" >/dev/null 2>&1 || true; }
trap cleanup EXIT

kubeconfig="$(bash hack/cluster.sh up "$STATE" | tail -n1)"
kubectl="$(cat "$STATE/bin")/kubectl --kubeconfig $kubeconfig"

echo "== gpufleet validate samples/"
.venv/bin/gpufleet validate samples/*.yaml

echo "== install the CRD generated from the API models"
$kubectl apply --server-side -f crds/gpufleet.io_modeldeployments.yaml
$kubectl wait --for condition=Established --timeout=60s crd/modeldeployments.gpufleet.io

echo "== apply the samples"
$kubectl apply -f samples/

echo "== kubectl get md -o wide"
$kubectl get md -o wide

echo "== a manifest the API server rejects (tensorParallelSize: 3)"
sed 's/tensorParallelSize: 4/tensorParallelSize: 3/' samples/llama-3-70b-a100-spot.yaml \
  | $kubectl apply -f - 2>&1 || true

echo "== kubectl scale md/llama-3-70b --replicas=3"
$kubectl scale md/llama-3-70b --replicas=3
$kubectl get md llama-3-70b

echo "== done; stopping the control plane"
