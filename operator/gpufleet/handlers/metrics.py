"""Prometheus metrics of the operator itself (prometheus-client), served on GPUFLEET_METRICS_PORT."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter("gpufleet_reconciles_total", "Reconciles of ModelDeployments, by result.", ["result"])
RECONCILE_SECONDS = Histogram(
    "gpufleet_reconcile_duration_seconds",
    "Time of one reconcile (observe, plan, apply, status).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
KUBE_REQUESTS = Counter("gpufleet_kube_requests_total", "Kubernetes API requests made by reconciles.")
WRITES = Counter(
    "gpufleet_object_writes_total", "Objects applied or deleted, by kind and action.", ["kind", "action"]
)
SCALE_DECISIONS = Counter(
    "gpufleet_autoscaler_decisions_total", "Autoscaler evaluations, by the decision's reason.", ["reason"]
)
MANAGED = Gauge("gpufleet_model_deployments", "ModelDeployments the operator knows.")
QUEUE_DEPTH = Gauge("gpufleet_work_queue_depth", "ModelDeployments waiting for a reconcile.")


def serve(port: int) -> None:
    """Serve /metrics on all interfaces; port 0 turns it off."""
    if port:
        start_http_server(port)
