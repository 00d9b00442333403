"""Prometheus metrics of the operator itself (prometheus-client), served on GPUFLEET_METRICS_PORT.

These names are an interface: the chart's PrometheusRule, its Grafana dashboard
and the runbooks (docs/runbooks/) query them. Per-ModelDeployment series carry
`namespace` and `name` and are removed when the ModelDeployment goes
(`forget_model_deployment`), so a deleted model leaves no alert behind.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from gpufleet.api.v1alpha1 import ModelDeploymentStatus
from gpufleet.planning.observe import Key
from gpufleet.planning.reconcile import ReconcilePlan

RECONCILES = Counter("gpufleet_reconciles_total", "Reconciles of ModelDeployments, by result.", ["result"])
RECONCILE_SECONDS = Histogram(
    "gpufleet_reconcile_duration_seconds",
    "Time of one reconcile (observe, plan, apply, status).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
KUBE_REQUESTS = Counter(
    "gpufleet_kube_requests_total",
    "Kubernetes API requests the operator made (not kopf's ModelDeployment watch), by verb and resource.",
    ["verb", "resource"],
)
WRITES = Counter(
    "gpufleet_object_writes_total", "Objects applied or deleted, by kind and action.", ["kind", "action"]
)
SCALE_DECISIONS = Counter(
    "gpufleet_autoscaler_decisions_total", "Autoscaler evaluations, by the decision's reason.", ["reason"]
)
MANAGED = Gauge("gpufleet_model_deployments", "ModelDeployments the operator knows.")
QUEUE_DEPTH = Gauge("gpufleet_work_queue_depth", "ModelDeployments waiting for a reconcile.")
LEADER = Gauge("gpufleet_leader", "1 while this operator process holds the leader lease (or runs alone).")

_MD = ["namespace", "name"]
CONDITION = Gauge(
    "gpufleet_condition",
    "1 when the ModelDeployment's condition of this type is True, 0 when False.",
    [*_MD, "type"],
)
PLACEMENT_REPLICAS = Gauge(
    "gpufleet_placement_replicas",
    "Replicas per zone and capacity type: desired (the plan) and ready (pods serving).",
    [*_MD, "zone", "capacity_type", "state"],
)
ROLLOUT_PHASE = Gauge(
    "gpufleet_rollout_phase",
    "1 for the phase of the ModelDeployment's canary rollout (status.rollout.phase); absent without one.",
    [*_MD, "phase"],
)
SLO_SECONDS = Gauge(
    "gpufleet_model_slo_seconds",
    "The model's service level objective (spec.slo), by signal: ttft_p95.",
    [*_MD, "signal"],
)
ROLLOUT_STEP = Gauge("gpufleet_rollout_step", "Step of the canary rollout under way, from 1.", _MD)
ROLLOUT_WEIGHT = Gauge(
    "gpufleet_rollout_weight_percent",
    "The canary's weight reached: its HTTPRoute backend weight, or its share of ready replicas.",
    _MD,
)
UNSCHEDULABLE_REPLICAS = Gauge(
    "gpufleet_unschedulable_replicas",
    "Pods of the ModelDeployment the scheduler has not placed for GPUFLEET_UNSCHEDULABLE_AFTER_SECONDS.",
    _MD,
)
AUTOSCALER_SWEEP_SECONDS = Histogram(
    "gpufleet_autoscaler_sweep_duration_seconds",
    "Time to evaluate every autoscaled ModelDeployment once (at most GPUFLEET_AUTOSCALE_INTERVAL_SECONDS"
    " keeps evaluations on time).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60, 120),
)
SIGNAL_AGE = Gauge(
    "gpufleet_autoscaler_signal_age_seconds",
    "Seconds since the autoscaler last read a complete set of signals for the ModelDeployment.",
    _MD,
)
COST_PER_HOUR = Gauge(
    "gpufleet_estimated_cost_per_hour",
    "Estimated cost per hour of the ModelDeployment's replicas at configured prices (GPUFLEET_PRICES).",
    _MD,
)
ON_DEMAND_COST_PER_HOUR = Gauge(
    "gpufleet_on_demand_equivalent_cost_per_hour",
    "What the same replicas would cost per hour all on on-demand capacity.",
    _MD,
)
INTERRUPTION_EVENTS = Counter(
    "gpufleet_interruption_events_total",
    "Capacity events seen (SQS messages and node signals), by type and what was done with them.",
    ["source", "type", "outcome"],
)
REPLACEMENTS = Counter(
    "gpufleet_replacements_total",
    "Replicas on going nodes drained, by why then: replaced, not-ready or deadline.",
    [*_MD, "reason"],
)
EVICTIONS_REFUSED = Counter(
    "gpufleet_evictions_refused_total",
    "Drains of serving replicas the eviction API refused (PodDisruptionBudget or 429), retried in 5 s.",
    [*_MD, "reason"],
)
INTERRUPTION_QUEUE_UP = Gauge(
    "gpufleet_interruption_queue_up",
    "1 when the last receive from the interruption SQS queue succeeded, 0 when it failed.",
)
INTERRUPTION_QUEUE_LAST_RECEIVE = Gauge(
    "gpufleet_interruption_queue_last_success_timestamp_seconds",
    "Unix time of the last successful receive from the interruption SQS queue.",
)
INTERRUPTION_QUEUE_ERRORS = Counter(
    "gpufleet_interruption_queue_errors_total", "Failed receives or deletes on the interruption SQS queue."
)
EVENT_QUEUE_DEPTH = Gauge(
    "gpufleet_event_queue_depth", "Kubernetes Events waiting to be posted (runtime.events.QueuedEvents)."
)
EVENTS_DROPPED = Counter(
    "gpufleet_events_dropped_total",
    "Kubernetes Events never posted: queue_full (the oldest waiting one gave way), post_failed (the API"
    " server refused or did not answer; not retried) or stopped (still waiting when the operator stopped).",
    ["reason"],
)
# Every reason exported from the start, so a rate over it is 0 rather than absent.
for _reason in ("queue_full", "post_failed", "stopped"):
    EVENTS_DROPPED.labels(reason=_reason)

_PER_MODEL_DEPLOYMENT = (
    CONDITION,
    PLACEMENT_REPLICAS,
    UNSCHEDULABLE_REPLICAS,
    ROLLOUT_PHASE,
    ROLLOUT_STEP,
    ROLLOUT_WEIGHT,
    SLO_SECONDS,
    SIGNAL_AGE,
    COST_PER_HOUR,
    ON_DEMAND_COST_PER_HOUR,
    REPLACEMENTS,
    EVICTIONS_REFUSED,
)


def kube_request(verb: str, resource: str) -> None:
    """RestKubeApi's on_request."""
    KUBE_REQUESTS.labels(verb=verb, resource=resource).inc()


def event_dropped(reason: str) -> None:
    """QueuedEvents' on_drop: runtime.events may not import this module (independent in the layers)."""
    EVENTS_DROPPED.labels(reason=reason).inc()


def forget_model_deployment(namespace: str, name: str) -> None:
    """Drop every series of a deleted ModelDeployment."""
    for metric in _PER_MODEL_DEPLOYMENT:
        metric.remove_by_labels({"namespace": namespace, "name": name})


def record_reconcile(key: Key, plan: ReconcilePlan) -> None:
    """What one executed reconcile did, and the gauges of the status it computed."""
    namespace, name = key
    RECONCILES.labels(result="ok" if plan.valid else "invalid").inc()
    for write in plan.applies:
        WRITES.labels(kind=write.obj["kind"], action="apply").inc()
    for removal in plan.removals:
        WRITES.labels(kind=removal.kind, action="delete").inc()
    for drain in plan.drains:
        REPLACEMENTS.labels(namespace=namespace, name=name, reason=drain.reason).inc()
    for drain in plan.refused_drains:
        EVICTIONS_REFUSED.labels(namespace=namespace, name=name, reason=drain.reason).inc()
    export_status(key, plan.status.status, plan.status.unschedulable)
    if plan.valid:  # an invalid spec's objective is unknown: the last one stays
        if plan.slo_ttft_seconds is not None:
            SLO_SECONDS.labels(namespace=namespace, name=name, signal="ttft_p95").set(plan.slo_ttft_seconds)
        else:
            SLO_SECONDS.remove_by_labels({"namespace": namespace, "name": name})


def export_status(key: Key, status: ModelDeploymentStatus, unschedulable: int) -> None:
    """Gauges of one ModelDeployment from the status a reconcile computed."""
    namespace, name = key
    for condition in status.conditions:
        CONDITION.labels(namespace=namespace, name=name, type=condition.type).set(
            1 if condition.status == "True" else 0
        )
    PLACEMENT_REPLICAS.remove_by_labels({"namespace": namespace, "name": name})
    for row in status.placement:
        labels = {"namespace": namespace, "name": name, "zone": row.zone, "capacity_type": row.capacity_type}
        PLACEMENT_REPLICAS.labels(**labels, state="desired").set(row.replicas)
        PLACEMENT_REPLICAS.labels(**labels, state="ready").set(row.ready_replicas)
    UNSCHEDULABLE_REPLICAS.labels(namespace=namespace, name=name).set(unschedulable)
    rollout = status.rollout
    ROLLOUT_PHASE.remove_by_labels({"namespace": namespace, "name": name})
    if rollout is not None:
        ROLLOUT_PHASE.labels(namespace=namespace, name=name, phase=rollout.phase).set(1)
        ROLLOUT_STEP.labels(namespace=namespace, name=name).set(rollout.step)
        ROLLOUT_WEIGHT.labels(namespace=namespace, name=name).set(rollout.weight)
    else:
        ROLLOUT_STEP.remove_by_labels({"namespace": namespace, "name": name})
        ROLLOUT_WEIGHT.remove_by_labels({"namespace": namespace, "name": name})
    cost = status.cost
    for gauge, value in (
        (COST_PER_HOUR, cost.per_hour if cost else None),
        (ON_DEMAND_COST_PER_HOUR, cost.on_demand_equivalent_per_hour if cost else None),
    ):
        if value is not None:
            gauge.labels(namespace=namespace, name=name).set(value)
        else:
            gauge.remove_by_labels({"namespace": namespace, "name": name})


def serve(port: int) -> None:
    """Serve /metrics on all interfaces; port 0 turns it off."""
    if port:
        start_http_server(port)
