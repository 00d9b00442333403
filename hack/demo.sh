#!/usr/bin/env bash
# The demo: a local control plane, the CRD, the operator with its webhook, the
# samples, and what the operator makes of them; then it stops everything it started.
# There are no GPU nodes yet (the fleet simulator comes next), so pods stay Pending.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${GPUFLEET_DEMO_DIR:-$ROOT/.state/demo}"
cd "$ROOT"

operator_pid=""
cleanup() {
  [[ -n "$operator_pid" ]] && kill "$operator_pid" 2>/dev/null && wait "$operator_pid" 2>/dev/null
  bash hack/cluster.sh down "$STATE" >/dev/null 2>&1 || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
step() { printf '\n== %s\n' "$*"; }

kubeconfig="$(bash hack/cluster.sh up "$STATE" | tail -n1)"
export KUBECONFIG="$kubeconfig"
kubectl="$(cat "$STATE/bin")/kubectl"

step "gpufleet validate samples/"
.venv/bin/gpufleet validate samples/*.yaml

step "install the CRD generated from the API models"
$kubectl apply --server-side -f crds/gpufleet.io_modeldeployments.yaml
$kubectl wait --for condition=Established --timeout=60s crd/modeldeployments.gpufleet.io

step "start the operator (log: $STATE/operator.log)"
health_port="$(free_port)"
GPUFLEET_HEALTH_PORT="$health_port" GPUFLEET_METRICS_PORT=0 \
GPUFLEET_WEBHOOK_ENABLED=true GPUFLEET_WEBHOOK_PORT="$(free_port)" GPUFLEET_WEBHOOK_HOST=127.0.0.1 \
GPUFLEET_WEBHOOK_LISTEN_ADDRESS=127.0.0.1 GPUFLEET_WEBHOOK_CERT_DIR="$STATE/webhook" \
  .venv/bin/gpufleet run >"$STATE/operator.log" 2>&1 &
operator_pid=$!
for _ in $(seq 1 120); do
  curl -fs "http://127.0.0.1:$health_port/healthz" -o /dev/null && \
    $kubectl get validatingwebhookconfiguration gpufleet.io -o name >/dev/null 2>&1 && break
  sleep 0.5
done

step "apply the samples"
$kubectl apply -f samples/
$kubectl wait --for=jsonpath='{.status.observedGeneration}'=1 --timeout=60s md --all

step "kubectl get md -o wide"
$kubectl get md -o wide

step "what the operator made: one Deployment per zone x capacity type, a Service, a PDB"
$kubectl get deployments,services,poddisruptionbudgets -l app.kubernetes.io/managed-by=gpufleet

step "kubectl scale md/llama-3-70b --replicas=5"
$kubectl scale md/llama-3-70b --replicas=5
$kubectl wait --for=jsonpath='{.status.desiredReplicas}'=5 --timeout=60s md/llama-3-70b
$kubectl get deployments -l gpufleet.io/model-deployment=llama-3-70b

step "events of llama-3-70b"
$kubectl get events --field-selector involvedObject.name=llama-3-70b,involvedObject.kind=ModelDeployment

step "the webhook denies 70B bf16 on 2 GPUs and says how to fix it"
sed 's/tensorParallelSize: 4/tensorParallelSize: 2/; s/name: llama-3-70b$/name: too-small/' \
  samples/llama-3-70b-a100-spot.yaml | $kubectl apply -f - 2>&1 || true

step "done; stopping the operator and the control plane"
