"""One reconcile against an in-memory API: what is written, and when nothing is."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpufleet.handlers.reconcile import Reconciler, observe_pod
from gpufleet.planning.workloads import WorkloadOptions
from tests.unit.fake_kube import FakeKube

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def sample(name: str = "llama-3-70b-a100-spot.yaml", **spec: Any) -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "samples" / name).read_text())
    body["metadata"].update(namespace="ml", uid="uid-1", generation=1)
    body["spec"].update(spec)
    return body


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def reconciler(kube: FakeKube) -> Reconciler:
    return Reconciler(kube, WorkloadOptions(), clock=lambda: NOW)


def deployments(kube: FakeKube) -> dict[str, int]:
    return {
        name: o["spec"]["replicas"] for (kind, _, name), o in kube.objects.items() if kind == "Deployment"
    }


def test_first_reconcile_applies_groups_service_and_pdb(kube: FakeKube, reconciler: Reconciler) -> None:
    outcome = reconciler.reconcile(sample())
    assert deployments(kube) == {"llama-3-70b-us-east-1a-on-demand": 1, "llama-3-70b-us-east-1b-spot": 1}
    assert sorted(outcome.applied) == [
        "Deployment/llama-3-70b-us-east-1a-on-demand",
        "Deployment/llama-3-70b-us-east-1b-spot",
        "PodDisruptionBudget/llama-3-70b",
        "Service/llama-3-70b",
    ]
    assert outcome.status_written
    assert kube.last_status["desiredReplicas"] == 2
    assert [e[1] for e in kube.events] == ["CreatedGroup", "CreatedGroup"]


def test_steady_state_reconcile_writes_nothing(kube: FakeKube, reconciler: Reconciler) -> None:
    body = sample()
    for _ in range(2):  # the first status is computed before the Deployments existed
        reconciler.reconcile(body)
        body["status"] = kube.last_status
    applies, patches = len(kube.applies), kube.status_patches
    outcome = reconciler.reconcile(body)
    assert outcome.applied == []
    assert (len(kube.applies), kube.status_patches) == (applies, patches)


def test_scaling_adds_and_removes_groups(kube: FakeKube, reconciler: Reconciler) -> None:
    reconciler.reconcile(sample(replicas=5))
    assert len(deployments(kube)) == 5
    outcome = reconciler.reconcile(sample(replicas=2))
    assert deployments(kube) == {"llama-3-70b-us-east-1a-on-demand": 1, "llama-3-70b-us-east-1b-spot": 1}
    assert sorted(outcome.deleted) == [
        "llama-3-70b-us-east-1a-spot",
        "llama-3-70b-us-east-1c-on-demand",
        "llama-3-70b-us-east-1c-spot",
    ]
    assert "RemovedGroup" in [e[1] for e in kube.events]


def test_drift_is_reverted_and_reported(kube: FakeKube, reconciler: Reconciler) -> None:
    reconciler.reconcile(sample())
    name = "llama-3-70b-us-east-1b-spot"
    kube.edit("Deployment", "ml", name, lambda o: o["spec"].update(replicas=7))
    outcome = reconciler.reconcile(sample())
    assert outcome.applied == [f"Deployment/{name}"]
    assert deployments(kube)[name] == 1
    assert kube.events[-1][1] == "RevertedDrift"


def test_deleted_group_is_restored(kube: FakeKube, reconciler: Reconciler) -> None:
    reconciler.reconcile(sample())
    kube.objects.pop(("Deployment", "ml", "llama-3-70b-us-east-1a-on-demand"))
    reconciler.reconcile(sample())
    assert "llama-3-70b-us-east-1a-on-demand" in deployments(kube)
    assert kube.events[-1][1] == "RestoredGroup"


def test_restart_reapplies_quietly_without_claiming_drift(kube: FakeKube) -> None:
    Reconciler(kube, WorkloadOptions(), clock=lambda: NOW).reconcile(sample())
    events = len(kube.events)
    fresh = Reconciler(kube, WorkloadOptions(), clock=lambda: NOW)
    fresh.reconcile(sample())
    assert len(kube.events) == events
    assert len(deployments(kube)) == 2


def test_invalid_spec_touches_no_workload(kube: FakeKube, reconciler: Reconciler) -> None:
    reconciler.reconcile(sample())
    before = copy.deepcopy(kube.objects)
    applies = len(kube.applies)
    broken = sample()
    broken["spec"]["accelerator"]["tensorParallelSize"] = 2
    outcome = reconciler.reconcile(broken)
    assert not outcome.valid
    assert kube.objects == before
    assert len(kube.applies) == applies
    assert kube.deletes == []
    valid = next(c for c in kube.last_status["conditions"] if c["type"] == "Valid")
    assert valid["status"] == "False"
    assert "use tensorParallelSize: 4" in valid["message"]
    assert kube.events[-1][:2] == ("Warning", "InvalidSpec")


def test_replicas_past_max_are_clamped_not_invalid(kube: FakeKube, reconciler: Reconciler) -> None:
    outcome = reconciler.reconcile(sample(replicas=20))
    assert outcome.valid
    assert sum(deployments(kube).values()) == 12
    limited = next(c for c in kube.last_status["conditions"] if c["type"] == "ScalingLimited")
    assert (limited["status"], limited["reason"]) == ("True", "TooManyReplicas")
    assert ("Warning", "TooManyReplicas") in [e[:2] for e in kube.events]


def test_deployment_owned_by_someone_else_is_left_alone(kube: FakeKube, reconciler: Reconciler) -> None:
    foreign = {
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
    kube.apply(foreign)
    reconciler.reconcile(sample())
    assert "llama-3-70b-handmade" in deployments(kube)
    assert kube.deletes == []


def test_observe_pod_reads_scheduling_failure() -> None:
    pod = {
        "metadata": {"name": "p", "labels": {"gpufleet.io/zone": "a", "gpufleet.io/capacity-type": "spot"}},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                    "lastTransitionTime": "2026-11-22T11:50:00Z",
                }
            ],
        },
    }
    observed = observe_pod(pod)
    assert (observed.zone, observed.capacity_type, observed.ready) == ("a", "spot", False)
    assert observed.unschedulable_since == datetime(2026, 11, 22, 11, 50, tzinfo=UTC)
    assert "Insufficient" in observed.unschedulable_message
