"""What many unit tests share: the operator's default settings as the planners' policies, and samples."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from gpufleet.config import Settings
from gpufleet.planning.failover import FailoverSettings
from gpufleet.planning.reconcile import ReconcilePolicy
from gpufleet.planning.scaling import ScalingTimings
from gpufleet.planning.workloads import WorkloadOptions

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = Settings.defaults()


def workload_options(**changes: Any) -> WorkloadOptions:
    return dataclasses.replace(DEFAULTS.workload_options(), **changes)


def failover_settings(**changes: Any) -> FailoverSettings:
    return dataclasses.replace(DEFAULTS.failover_settings(), **changes)


def scaling_timings(**changes: Any) -> ScalingTimings:
    return dataclasses.replace(DEFAULTS.scaling_timings(), **changes)


def reconcile_policy(failover: bool = True, **changes: Any) -> ReconcilePolicy:
    policy = DEFAULTS.reconcile_policy()
    return dataclasses.replace(policy, failover=policy.failover if failover else None, **changes)


def sample(name: str = "llama-3-70b-a100-spot.yaml", **spec: Any) -> dict[str, Any]:
    """A sample ModelDeployment as the watch delivers it (namespace ml, uid uid-1, generation 1)."""
    body: dict[str, Any] = yaml.safe_load((ROOT / "samples" / name).read_text())
    body["metadata"].update(namespace="ml", uid="uid-1", generation=1)
    body["spec"].update(spec)
    return body


@dataclass(frozen=True)
class Readings:
    """Metric readings as a test states them (planning.scaling.MetricReadings)."""

    sampled_at: datetime
    waiting: float | None
    running: float | None
    kv_cache_usage: float | None
    gpu_utilization: float | None
    activation: float | None = None
    error: str | None = None
    reporting_replicas: int | None = None


def handmade_deployment() -> dict[str, Any]:
    """A Deployment with llama-3-70b's label that another owner made: never the operator's to remove."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "llama-3-70b-handmade",
            "namespace": "ml",
            "labels": {"gpufleet.io/model-deployment": "llama-3-70b"},
            "ownerReferences": [{"uid": "someone-else"}],
        },
        "spec": {"replicas": 1},
    }


def database_service() -> dict[str, Any]:
    """A Service named like the sample ModelDeployment that belongs to a database: never to be taken."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "llama-3-70b", "namespace": "ml", "uid": "svc-1", "resourceVersion": "7"},
        "spec": {"selector": {"app": "database"}, "ports": [{"port": 5432}]},
    }


def revision_name(body: dict[str, Any]) -> str:
    """The ControllerRevision name of the body's serving template (planning.revisions)."""
    from gpufleet.api.v1alpha1 import ModelDeploymentSpec
    from gpufleet.planning.revisions import revision_hash, serving_template

    template = serving_template(ModelDeploymentSpec.model_validate(body["spec"]))
    return f"{body['metadata']['name']}-{revision_hash(template)}"
