"""Operator settings, read from GPUFLEET_* environment variables (the Helm chart sets them).

The one place where the operator's defaults live: the planners' policies
(workload options, failover settings, scaling timings) are built from these
and have no defaults of their own. `Settings.defaults()` gives them without
reading the environment (tests, benchmarks).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic_settings import BaseSettings, SettingsConfigDict

from gpufleet.adapters.serving_metrics import MetricQueries
from gpufleet.planning.cost import ProductPrices
from gpufleet.planning.failover import FailoverSettings
from gpufleet.planning.reconcile import ReconcilePolicy
from gpufleet.planning.scaling import ScalingTimings
from gpufleet.planning.workloads import WorkloadOptions

# Capacity-type node labels and their values, per provisioner.
CAPACITY_LABELS: dict[str, tuple[str, str]] = {
    "karpenter.sh/capacity-type": ("spot", "on-demand"),
    "eks.amazonaws.com/capacityType": ("SPOT", "ON_DEMAND"),
}


class ProductPriceSetting(BaseModel):
    """Prices of the instance a GPU product comes in, per instance-hour (AWS's unit)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    instance_type: str = ""
    gpus_per_instance: int = Field(default=8, ge=1)
    on_demand: float = Field(ge=0)
    spot: dict[str, float] = Field(default_factory=dict)
    currency: str = "USD"

    def book(self) -> ProductPrices:
        return ProductPrices(
            on_demand=self.on_demand,
            gpus_per_instance=self.gpus_per_instance,
            spot=dict(self.spot),
            instance_type=self.instance_type,
            currency=self.currency,
        )


class Settings(BaseSettings):
    """Everything the operator can be told; each field is GPUFLEET_<NAME> in the environment."""

    model_config = SettingsConfigDict(env_prefix="GPUFLEET_", extra="ignore")

    @classmethod
    def defaults(cls) -> Settings:
        """Every setting at its default, whatever the environment says."""
        return cls.model_construct()

    namespaces: list[str] = Field(
        default_factory=list, description="Namespaces to watch; empty means the whole cluster."
    )
    capacity_type_label: Literal["karpenter.sh/capacity-type", "eks.amazonaws.com/capacityType"] = Field(
        default="karpenter.sh/capacity-type",
        description="Node label that says spot or on-demand (Karpenter's, or EKS managed node groups').",
    )
    cpu_per_gpu: str = Field(default="4", description="CPU request per GPU (or MIG slice).")
    memory_per_gpu: str = Field(default="32Gi", description="Memory request per GPU (or MIG slice).")
    prestop_delay_seconds: int = Field(default=15, ge=0)
    drain_seconds: int = Field(default=120, ge=0)
    startup_base_seconds: int = Field(default=600, ge=0)
    resync_seconds: float = Field(
        default=60.0, gt=0, description="Re-check every ModelDeployment this often even without events."
    )
    unschedulable_after_seconds: int = Field(
        default=300, ge=0, description="A pod pending this long makes the ModelDeployment Degraded."
    )
    workers: int = Field(default=8, ge=1, description="ModelDeployments reconciled at once.")
    prometheus_url: str | None = Field(
        default=None, description="Prometheus the autoscaler reads; unset: autoscaling holds replicas."
    )
    autoscale_interval_seconds: float = Field(default=15.0, gt=0, description="How often to evaluate.")
    autoscale_concurrency: int = Field(
        default=8,
        ge=1,
        description="ModelDeployments evaluated at once (each lists its pods; Prometheus: once a sweep).",
    )
    # The planner's windows (gpufleet.planning.scaling); the defaults are its published anchors.
    autoscale_panic_window_seconds: int = Field(
        default=60, ge=0, description="No scale-down this long after a panic (queue ≥ 2× capacity)."
    )
    autoscale_scale_down_step_seconds: int = Field(
        default=30, ge=0, description="Time between two single-replica scale-down steps."
    )
    autoscale_stale_after_seconds: int = Field(
        default=90, gt=0, description="Samples older than this count as missing: replicas are held."
    )

    autoscale_status_refresh_seconds: int = Field(
        default=60,
        ge=0,
        description=(
            "status.autoscaler is rewritten for changed readings alone at most this often (decisions at"
            " once); 0 writes every evaluation."
        ),
    )
    token_cost_refresh_seconds: int = Field(
        default=300,
        ge=0,
        description=(
            "status.tokenCost (cost per million output tokens per revision) is read and written at most "
            "this often per model; 0 turns it off."
        ),
    )

    def scaling_timings(self) -> ScalingTimings:
        return ScalingTimings(
            panic_window_seconds=self.autoscale_panic_window_seconds,
            scale_down_step_seconds=self.autoscale_scale_down_step_seconds,
            stale_after_seconds=self.autoscale_stale_after_seconds,
            status_refresh_seconds=self.autoscale_status_refresh_seconds,
        )

    # PromQL of the signals: fleet-wide (split by namespace/model_name or namespace/pod labels), or
    # templates with $namespace, $model, $pods run per model (gpufleet.adapters.serving_metrics).
    query_waiting: str = MetricQueries.waiting
    query_running: str = MetricQueries.running
    query_kv_cache_usage: str = MetricQueries.kv_cache_usage
    query_gpu_utilization: str = MetricQueries.gpu_utilization
    query_mig_utilization: str = MetricQueries.mig_utilization
    query_reporting: str = MetricQueries.reporting
    query_oldest_sample: str = MetricQueries.oldest_sample
    query_generation_tokens: str = MetricQueries.generation_tokens
    query_activation: str | None = Field(
        default=None, description="A gateway's request signal for the model; wakes a model at zero replicas."
    )

    def metric_queries(self) -> MetricQueries:
        return MetricQueries(
            waiting=self.query_waiting,
            running=self.query_running,
            kv_cache_usage=self.query_kv_cache_usage,
            gpu_utilization=self.query_gpu_utilization,
            mig_utilization=self.query_mig_utilization,
            reporting=self.query_reporting,
            oldest_sample=self.query_oldest_sample,
            generation_tokens=self.query_generation_tokens,
            activation=self.query_activation,
        )

    # Spot interruptions (issue 6). Credentials come from the environment or IRSA, never from here.
    spot_failover: bool = Field(
        default=True,
        description=(
            "React to capacity signals (SQS, node taints, lost nodes and zones); off: plain placement, "
            "pods die with their nodes (for comparison)."
        ),
    )
    interruption_queue_url: str | None = Field(
        default=None,
        description="SQS queue receiving EventBridge EC2 spot/rebalance/state-change and AWS Health events.",
    )
    aws_region: str | None = Field(
        default=None,
        description=(
            "AWS region of the queue and the spot price history (default: the queue URL's, else AWS_REGION)."
        ),
    )
    aws_endpoint_url: str | None = Field(
        default=None, description="Override of the AWS endpoint (a local moto server in tests)."
    )
    interruption_queue_max_backoff_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Longest wait between attempts while the queue cannot be read (jittered: half to all).",
    )
    interruption_queue_wait_seconds: int = Field(
        default=20, ge=0, le=20, description="Long-poll wait of one receive (Karpenter: 20 s)."
    )
    interruption_queue_visibility_seconds: int = Field(
        default=20,
        ge=0,
        description=(
            "How long a received message stays invisible; one read by a replica that died comes back "
            "after this (Karpenter: 20 s)."
        ),
    )
    interruption_queue_pollers: int = Field(
        default=4,
        ge=1,
        le=32,
        description=(
            "Long polls of the interruption queue at once: a backlog of thousands is read in seconds "
            "(each poll takes up to 10 messages)."
        ),
    )
    rebalance_starts_replacements: bool = Field(
        default=True,
        description="Order replacements on a rebalance recommendation (no draining until a warning).",
    )
    max_surge_replicas: int = Field(
        default=4,
        ge=1,
        description=(
            "Extra replicas a planned move (spot returning, a rebalance back after a cooldown) runs above "
            "spec.replicas at once. Replacements of replicas on going nodes are never held back by it."
        ),
    )
    not_ready_eviction_seconds: int = Field(
        default=300,
        ge=0,
        description=(
            "Replicas on a NotReady node are removed after this (Kubernetes' default not-ready and "
            "unreachable toleration, 300 s); their replacements start at once."
        ),
    )
    spot_fallback_after_seconds: int = Field(
        default=300, ge=0, description="Spot pods unschedulable this long in every zone → on-demand fallback."
    )
    spot_return_after_seconds: int = Field(
        default=900,
        ge=0,
        description="Spot schedulable again this long → move fallback replicas back to spot.",
    )
    spot_notice_seconds: int = Field(
        default=120,
        ge=0,
        description="Interruption warning to reclaim: AWS 120 s (GCP and Azure spot: 30 s, for taints).",
    )
    zone_loss_window_seconds: int = Field(
        default=600,
        gt=0,
        description="Two nodes (one on-demand) of a zone lost within this and none Ready: the zone is lost.",
    )
    interruption_drain_seconds: int = Field(
        default=60,
        ge=0,
        description="Delete a doomed replica this long before its deadline (preStop + in-flight requests).",
    )
    prices: dict[str, ProductPriceSetting] = Field(
        default_factory=dict,
        description=(
            "Per GPU product (node label nvidia.com/gpu.product), as JSON: {instanceType, gpusPerInstance, "
            "onDemand: price per instance-hour, spot: {zone: price per instance-hour}}."
        ),
    )
    spot_price_refresh_seconds: int = Field(
        default=0, ge=0, description="Refresh spot prices from EC2 spot price history this often; 0 = never."
    )
    # Two operator replicas: the one holding the Lease works, the other keeps its watches warm.
    leader_election: bool = Field(default=False, description="Coordinate replicas through a Lease.")
    leader_election_namespace: str = Field(default="default", description="Namespace of the Lease.")
    leader_election_name: str = Field(default="gpufleet-leader", description="Name of the Lease.")
    pod_name: str | None = Field(default=None, description="This replica's identity in the Lease (pod name).")

    webhook_enabled: bool = Field(default=False, description="Serve the validating admission webhook.")
    webhook_listen_address: str = "0.0.0.0"
    webhook_port: int = 9443
    webhook_host: str | None = Field(
        default=None, description="Address the API server calls; set with a managed configuration."
    )
    webhook_cert_dir: Path | None = Field(
        default=None, description="Folder with tls.crt, tls.key and ca.crt for the webhook server."
    )
    webhook_managed: bool = Field(
        default=True,
        description="Let the operator create its ValidatingWebhookConfiguration (off when the chart does).",
    )
    verbose_watch_log: bool = Field(default=False, description="Log every watch event kopf handles (INFO).")
    health_port: int = Field(default=8080, description="Port of the liveness endpoint (/healthz).")
    metrics_port: int = Field(default=8081, ge=0, description="Port of Prometheus /metrics; 0 turns it off.")

    def workload_options(self) -> WorkloadOptions:
        spot, on_demand = CAPACITY_LABELS[self.capacity_type_label]
        return WorkloadOptions(
            capacity_type_label=self.capacity_type_label,
            spot_value=spot,
            on_demand_value=on_demand,
            cpu_per_gpu=self.cpu_per_gpu,
            memory_per_gpu=self.memory_per_gpu,
            prestop_delay_seconds=self.prestop_delay_seconds,
            drain_seconds=self.drain_seconds,
            startup_base_seconds=self.startup_base_seconds,
        )

    def failover_settings(self) -> FailoverSettings:
        return FailoverSettings(
            max_surge=self.max_surge_replicas,
            drain=timedelta(seconds=self.interruption_drain_seconds),
            unavailable_after=timedelta(seconds=self.spot_fallback_after_seconds),
            return_after=timedelta(seconds=self.spot_return_after_seconds),
            rebalance_starts_replacements=self.rebalance_starts_replacements,
            zone_loss_window=timedelta(seconds=self.zone_loss_window_seconds),
            not_ready_grace=timedelta(seconds=self.not_ready_eviction_seconds),
        )

    def reconcile_policy(self) -> ReconcilePolicy:
        return ReconcilePolicy(
            workloads=self.workload_options(),
            unschedulable_after=timedelta(seconds=self.unschedulable_after_seconds),
            failover=self.failover_settings() if self.spot_failover else None,
        )

    def price_books(self) -> dict[str, ProductPrices]:
        return {product: setting.book() for product, setting in self.prices.items()}
