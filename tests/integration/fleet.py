"""Fake GPU nodes on the real control plane, and the smallest kubelet stand-in they need.

Nodes carry the labels, taints and allocatable resources of real GPU nodes
(REFERENCE.md: nvidia.com/gpu.product, topology.kubernetes.io/zone,
karpenter.sh/capacity-type, MIG mixed-strategy resources), so the real
scheduler places pods on them. There is no kubelet, so a thread renews each
node's Lease and Ready condition (else the node lifecycle controller taints
and evicts after ~40 s) and finishes the deletion of pods on them, as a
kubelet would after the grace period. Pods never run: that is the fleet
simulator's job, not these tests'.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kubernetes import client
from kubernetes.client.exceptions import ApiException

A100 = "NVIDIA-A100-SXM4-80GB"
H100 = "NVIDIA-H100-80GB-HBM3"


@dataclass(frozen=True)
class FakeNode:
    name: str
    zone: str
    capacity_type: str
    product: str = A100
    resources: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu": "8"})

    def manifest(self) -> dict[str, object]:
        allocatable = {"cpu": "96", "memory": "1152Gi", "pods": "110", **self.resources}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "topology.kubernetes.io/zone": self.zone,
                    "node.kubernetes.io/instance-type": "p4de.24xlarge",
                    "karpenter.sh/capacity-type": self.capacity_type,
                    "nvidia.com/gpu.product": self.product,
                    "gpufleet.io/test-node": "true",
                },
            },
            "spec": {
                "providerID": f"aws:///{self.zone}/i-{abs(hash(self.name)) % 16**12:012x}",
                "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
            },
            "status": {"capacity": allocatable, "allocatable": allocatable},
        }


TEST_FLEET = (
    FakeNode("gpu-a-od-1", "us-east-1a", "on-demand"),
    FakeNode("gpu-a-spot-1", "us-east-1a", "spot"),
    FakeNode("gpu-b-od-1", "us-east-1b", "on-demand"),
    FakeNode("gpu-b-spot-1", "us-east-1b", "spot"),
    FakeNode("gpu-c-od-1", "us-east-1c", "on-demand"),
    FakeNode("gpu-c-spot-1", "us-east-1c", "spot"),
    # Only two free GPUs: a tensor-parallel-4 replica must never land here.
    FakeNode("gpu-d-spot-small", "us-east-1d", "spot", resources={"nvidia.com/gpu": "2"}),
    # Right zone and capacity, wrong GPU product.
    FakeNode("h100-a-od-1", "us-east-1a", "on-demand", product=H100),
    # An A100 split into 2g.20gb slices (3 per GPU x 8 GPUs), device plugin mixed strategy.
    FakeNode("mig-a-od-1", "us-east-1a", "on-demand", resources={"nvidia.com/mig-2g.20gb": "24"}),
)


def _now() -> datetime:
    return datetime.now(UTC)


class FakeKubelet:
    """Creates the nodes, keeps them Ready, and completes pod deletions on them."""

    def __init__(self, api: client.ApiClient, nodes: tuple[FakeNode, ...] = TEST_FLEET) -> None:
        self.core = client.CoreV1Api(api)
        self.leases = client.CoordinationV1Api(api)
        self.nodes = nodes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-kubelet", daemon=True)
        self.errors: list[str] = []

    def start(self) -> None:
        for node in self.nodes:
            try:
                self.core.create_node(node.manifest())
            except ApiException as error:
                if error.status != 409:
                    raise
        self._heartbeat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _heartbeat(self) -> None:
        now = _now()
        for node in self.nodes:
            stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
            self.core.patch_node_status(
                node.name,
                {
                    "status": {
                        "conditions": [
                            {
                                "type": "Ready",
                                "status": "True",
                                "reason": "KubeletReady",
                                "message": "fake kubelet (gpufleet tests)",
                                "lastHeartbeatTime": stamp,
                                "lastTransitionTime": stamp,
                            }
                        ]
                    }
                },
            )
            lease = {
                "metadata": {"name": node.name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": node.name, "leaseDurationSeconds": 40, "renewTime": now},
            }
            try:
                self.leases.patch_namespaced_lease(node.name, "kube-node-lease", {"spec": lease["spec"]})
            except ApiException as error:
                if error.status != 404:
                    raise
                self.leases.create_namespaced_lease("kube-node-lease", lease)

    def _finish_deletions(self) -> None:
        names = {n.name for n in self.nodes}
        for pod in self.core.list_pod_for_all_namespaces().items:
            if pod.metadata.deletion_timestamp and pod.spec.node_name in names:
                try:
                    self.core.delete_namespaced_pod(
                        pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0
                    )
                except ApiException as error:
                    if error.status != 404:
                        raise

    def _run(self) -> None:
        ticks = 0
        while not self._stop.wait(1.0):
            ticks += 1
            try:
                self._finish_deletions()
                if ticks % 10 == 0:
                    self._heartbeat()
            except Exception as error:  # keep beating; tests read `errors` if they care
                self.errors.append(repr(error))
