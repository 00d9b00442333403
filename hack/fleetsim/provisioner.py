"""The Karpenter-like provisioner's I/O: observe pending pods and nodes, ask pools.plan_provisioning.

Launched instances count as in flight until their Node registers, so a pod
waiting for one does not order a second (the pure planner bin-packs into them).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Collection, Mapping
from typing import Any, Protocol

from kubernetes import client

from fleetsim.pools import LABEL_SIM_NODE, Fleet, InFlight, NodeState, PendingPod, Pool, plan_provisioning


class _Record(Protocol):
    pool: Pool


def _requests(pod: Mapping[str, Any]) -> dict[str, int]:
    total: dict[str, int] = {}
    for container in pod.get("spec", {}).get("containers", []):
        for name, value in container.get("resources", {}).get("requests", {}).items():
            if name.startswith("nvidia.com/"):
                total[name] = total.get(name, 0) + int(value)
    return total


def _unschedulable(pod: Mapping[str, Any]) -> bool:
    if pod.get("spec", {}).get("nodeName") or pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in conditions)


class Provisioner:
    def __init__(self, core: client.CoreV1Api, fleet: Fleet) -> None:
        self.core = core
        self.fleet = fleet
        self.in_flight: list[InFlight] = []
        self.last_reasons: list[str] = []

    def decide(
        self,
        nodes: Mapping[str, _Record],
        lost_zones: Collection[str],
        spot_out_zones: Collection[str] = (),
    ) -> list[Pool]:
        """Pools to launch one node each in, now; records them as in flight.

        `lost_zones`: no pool there may launch. `spot_out_zones`: no spot pool there may launch
        (a spotOutage event). Cordoned nodes (spec.unschedulable) take no pending pod, as in
        Karpenter's scheduling simulation: their pods need a new node even if GPUs are free there.
        """
        response = self.core.list_pod_for_all_namespaces(_preload_content=False)
        pods: list[dict[str, Any]] = json.loads(response.data)["items"]
        pending = [PendingPod.from_manifest(p) for p in pods if _unschedulable(p) and _requests(p)]
        if not pending:
            return []
        used: dict[str, dict[str, int]] = {}
        for pod in pods:
            node = pod.get("spec", {}).get("nodeName")
            if node in nodes and not pod["metadata"].get("deletionTimestamp"):
                for name, count in _requests(pod).items():
                    used.setdefault(node, {})[name] = used.setdefault(node, {}).get(name, 0) + count
        cordoned = self._cordoned()
        states = []
        for name, record in nodes.items():
            capacity = record.pool.capacity()
            free = {
                k: v - used.get(name, {}).get(k, 0)
                for k, v in capacity.items()
                if k.startswith("nvidia.com/")
            }
            states.append(NodeState(name, record.pool.name, free, schedulable=name not in cordoned))
        unavailable = {
            p.name: math.inf
            for p in self.fleet.pools
            if p.zone in lost_zones or (p.capacity_type == "spot" and p.zone in spot_out_zones)
        }
        plan = plan_provisioning(
            pending, states, self.fleet.pools, self.in_flight, time.monotonic(), unavailable
        )
        self.last_reasons = plan.reasons()
        launched = []
        for launch in plan:
            self.in_flight.append(InFlight(launch.pool.name))
            launched.append(launch.pool)
        return launched

    def _cordoned(self) -> set[str]:
        response = self.core.list_node(label_selector=f"{LABEL_SIM_NODE}=true", _preload_content=False)
        items: list[dict[str, Any]] = json.loads(response.data)["items"]
        return {n["metadata"]["name"] for n in items if (n.get("spec") or {}).get("unschedulable")}

    def landed(self, pool: Pool) -> None:
        """The node launched for `pool` registered (or failed): it is no longer in flight."""
        for index, flight in enumerate(self.in_flight):
            if flight.pool == pool.name:
                del self.in_flight[index]
                return
