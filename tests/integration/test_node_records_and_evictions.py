"""Against the real API server: a cloud signal recorded on its Node (a stale write is refused, not lost),
and drains through the eviction API, which a PodDisruptionBudget really refuses."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client

from gpufleet.adapters.kube import KubeError, RestKubeApi
from gpufleet.planning.failover import Doom
from gpufleet.planning.nodes import CAPACITY_SIGNAL_KEY, read_signal_record, signal_record_patch
from gpufleet.planning.workloads import Owner, pod_disruption_budget, selector_labels
from gpufleet.runtime.node_records import NodeRecorder
from tests.conftest import Cluster, wait_until
from tests.integration.fleet import FakeKubelet

pytestmark = pytest.mark.integration


@pytest.fixture
def bare_node(api: client.ApiClient) -> Iterator[str]:
    """A node of our own (no pod lands on it: it is not Ready), so no shared test node is tainted."""
    core = client.CoreV1Api(api)
    name = f"record-{uuid.uuid4().hex[:8]}"
    core.create_node(
        {
            "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": "us-east-1a"}},
            "spec": {
                "providerID": f"aws:///us-east-1a/i-{uuid.uuid4().hex[:17]}",
                "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
            },
        }
    )
    yield name
    core.delete_node(name)


def warning(node: str) -> Doom:
    now = datetime.now(UTC).replace(microsecond=0)
    return Doom(
        node, "us-east-1a", "spot", "interruption", now, now + timedelta(seconds=120), "i-1", "warning"
    )


def test_a_warning_is_recorded_on_the_real_node_and_a_stale_write_is_refused(
    api: client.ApiClient, bare_node: str
) -> None:
    kube = RestKubeApi(api)
    read_before = kube.get("v1", "Node", None, bare_node)
    assert read_before is not None
    NodeRecorder(kube).record(warning(bare_node))
    stored = kube.get("v1", "Node", None, bare_node)
    assert stored is not None
    keys = [t["key"] for t in stored["spec"]["taints"]]
    assert "nvidia.com/gpu" in keys  # the taints it had are kept
    assert CAPACITY_SIGNAL_KEY in keys
    recorded = read_signal_record(stored)
    assert recorded is not None
    assert recorded.kind == "interruption"
    # A patch computed from the older read carries its resourceVersion: the API server refuses it
    # (a merge patch replaces the taint list whole, so a blind write would drop the new taint).
    stale = signal_record_patch(read_before, warning(bare_node))
    assert stale is not None
    with pytest.raises(KubeError) as refused:
        kube.patch("v1", "Node", None, bare_node, stale)
    assert refused.value.status == 409
    # The recorder reads again: the same signal is already there, nothing more is written.
    version = stored["metadata"]["resourceVersion"]
    NodeRecorder(kube).record(warning(bare_node))
    again = kube.get("v1", "Node", None, bare_node)
    assert again is not None
    assert again["metadata"]["resourceVersion"] == version


def ready_pods(core: client.CoreV1Api, namespace: str, selector: str, count: int) -> list[str]:
    """The Deployment's pods, marked Ready as a kubelet would (no container runs here)."""

    def scheduled() -> list[Any] | None:
        pods = [
            p for p in core.list_namespaced_pod(namespace, label_selector=selector).items if p.spec.node_name
        ]
        return pods if len(pods) == count else None

    names = []
    for pod in wait_until(scheduled, timeout=60, what=f"{count} pods scheduled"):
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        conditions = [
            {"type": kind, "status": "True", "lastTransitionTime": stamp}
            for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        core.patch_namespaced_pod_status(
            pod.metadata.name, namespace, {"status": {"phase": "Running", "conditions": conditions}}
        )
        names.append(pod.metadata.name)
    return sorted(names)


def test_the_models_pdb_lets_one_serving_replica_go_and_refuses_the_next(
    api: client.ApiClient, cluster: Cluster, namespace: str, fleet: FakeKubelet
) -> None:
    core, apps, policy = client.CoreV1Api(api), client.AppsV1Api(api), client.PolicyV1Api(api)
    owner = Owner("evict-me", namespace, "uid-unused")
    pdb = pod_disruption_budget(owner)
    pdb["metadata"].pop("ownerReferences", None)
    policy.create_namespaced_pod_disruption_budget(namespace, pdb)
    labels = selector_labels(owner.name)
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "evict-me-a-on-demand"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "nodeSelector": {"kubernetes.io/hostname": "gpu-a-od-1"},
                        "tolerations": [
                            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                        ],
                        "containers": [{"name": "vllm", "image": "vllm/vllm-openai:test"}],
                    },
                },
            },
        },
    )
    selector = ",".join(f"{k}={v}" for k, v in labels.items())
    first, second = ready_pods(core, namespace, selector, 2)

    def budget_allows(n: int) -> bool:
        status = policy.read_namespaced_pod_disruption_budget(owner.name, namespace).status
        return status is not None and status.current_healthy == 2 and status.disruptions_allowed == n

    wait_until(lambda: budget_allows(1), timeout=30, what="the PDB allowing one disruption")
    kube = RestKubeApi(api)
    assert kube.evict(namespace, first) is True
    # one replica is going (or gone, its replacement not ready): maxUnavailable 1 is spent
    assert kube.evict(namespace, second) is False
    assert core.read_namespaced_pod(second, namespace).metadata.deletion_timestamp is None

    # an unready pod is not protected (unhealthyPodEvictionPolicy AlwaysAllow): a starting replica
    # never blocks a drain
    def replacement() -> str | None:
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        fresh = [
            p.metadata.name
            for p in pods
            if p.metadata.name not in (first, second) and not p.metadata.deletion_timestamp
        ]
        return fresh[0] if fresh else None

    assert kube.evict(namespace, wait_until(replacement, timeout=30, what="the replacement pod")) is True
    assert kube.evict(namespace, "no-such-pod") is True  # gone already: nothing to drain
