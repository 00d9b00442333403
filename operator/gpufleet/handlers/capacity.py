"""Nodes and capacity signals, shared by the watches, the SQS loop and the reconciles.

In memory and safe to lose: cloud events that moved replicas are persisted by
the reconciler in each ModelDeployment's status.spot, and node state is read
again from the watch after a restart. Thread-safe: kopf's handlers, the SQS
thread and the reconcile workers use it at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from gpufleet.planning.failover import Doom
from gpufleet.planning.placement import CapacityType
from gpufleet.planning.signals import SPOT_NOTICE, CapacitySignal, node_signals, provider_instance

Key = tuple[str, str]
ZONE_LABEL = "topology.kubernetes.io/zone"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    zone: str
    capacity_type: CapacityType
    ready: bool
    instance_id: str = ""


def _capacity_type(labels: Mapping[str, str], label: str, spot_value: str) -> CapacityType:
    return "spot" if labels.get(label) == spot_value else "on-demand"


class CapacityStore:
    def __init__(
        self,
        capacity_type_label: str,
        spot_value: str,
        notice: timedelta = SPOT_NOTICE,
        zone_loss_window: timedelta = timedelta(minutes=10),
    ) -> None:
        self._label = capacity_type_label
        self._spot = spot_value
        self.notice = notice
        self.zone_loss_window = zone_loss_window
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeInfo] = {}
        self._by_instance: dict[str, str] = {}
        self._node_dooms: dict[str, list[Doom]] = {}
        self._cloud_dooms: dict[str, Doom] = {}
        self._pods: dict[str, dict[str, Key]] = {}  # node → pod uid/name → owning ModelDeployment
        # zone → (when, node, capacity type) of nodes that went NotReady or away
        self._losses: dict[str, list[tuple[datetime, str, CapacityType]]] = {}

    # --- nodes -----------------------------------------------------------------------------------

    def update_node(self, node: Mapping[str, Any], now: datetime) -> bool:
        """Record a node as the watch sees it; True when its doom changed (reconcile its models)."""
        meta = node.get("metadata", {})
        name = meta.get("name", "")
        labels = meta.get("labels") or {}
        located = provider_instance((node.get("spec") or {}).get("providerID", "") or "")
        signals = node_signals(node, now=now, notice=self.notice)
        ready = not any(s.kind == "not-ready" for s in signals)
        info = NodeInfo(
            name,
            labels.get(ZONE_LABEL) or (located[0] if located else ""),
            _capacity_type(labels, self._label, self._spot),
            ready,
            located[1] if located else "",
        )
        dooms = [self._doom(info, s) for s in signals]
        with self._lock:
            old = self._nodes.get(name)
            self._nodes[name] = info
            if info.instance_id:
                self._by_instance[info.instance_id] = name
            before = self._node_dooms.get(name, [])
            # A NoSchedule taint has no timeAdded, so its deadline is "now + notice" at every read:
            # the first sighting of a (node, kind) is the one that counts.
            first = {d.kind: d for d in before}
            dooms = [
                replace(d, since=first[d.kind].since, deadline=first[d.kind].deadline)
                if d.kind in first
                else d
                for d in dooms
            ]
            self._node_dooms[name] = dooms
            if old is not None and old.ready and not ready:
                self._losses.setdefault(info.zone, []).append((now, name, info.capacity_type))
        return [(d.kind, d.deadline) for d in before] != [(d.kind, d.deadline) for d in dooms]

    def delete_node(self, name: str, now: datetime) -> None:
        """A node gone without warning is a loss; with a warning its doom stays until the pods are gone."""
        with self._lock:
            info = self._nodes.pop(name, None)
            self._node_dooms.pop(name, None)
            if info is None:
                return
            self._by_instance.pop(info.instance_id, None)
            self._losses.setdefault(info.zone, []).append((now, name, info.capacity_type))
            if name not in self._cloud_dooms:
                self._cloud_dooms[name] = Doom(
                    name, info.zone, info.capacity_type, "terminated", now, now, info.instance_id, "deleted"
                )

    def zones(self) -> set[str]:
        """Zones of the nodes known now."""
        with self._lock:
            return {n.zone for n in self._nodes.values() if n.zone}

    def node_for_instance(self, instance_id: str) -> NodeInfo | None:
        with self._lock:
            name = self._by_instance.get(instance_id)
            return self._nodes.get(name) if name else None

    def _doom(self, info: NodeInfo, signal: CapacitySignal) -> Doom:
        return Doom(
            node=info.name,
            zone=info.zone,
            capacity_type=info.capacity_type,
            kind=signal.kind,
            since=signal.event_time,
            deadline=signal.deadline,
            instance_id=info.instance_id,
            detail=signal.detail,
            source=signal.source,
        )

    # --- cloud events ----------------------------------------------------------------------------

    def record_cloud(self, signal: CapacitySignal) -> NodeInfo | None:
        """Attach an SQS signal to its node; None when no node of this cluster has that instance."""
        node = self.node_for_instance(signal.instance_id or "")
        if node is None:
            return None
        doom = self._doom(node, signal)
        with self._lock:
            if doom.supersedes(self._cloud_dooms.get(node.name)):
                self._cloud_dooms[node.name] = doom
        return node

    # --- pods ------------------------------------------------------------------------------------

    def update_pod(self, key: Key, pod: str, node: str | None) -> None:
        with self._lock:
            for pods in self._pods.values():
                pods.pop(pod, None)
            if node:
                self._pods.setdefault(node, {})[pod] = key

    def delete_pod(self, pod: str) -> None:
        with self._lock:
            for pods in self._pods.values():
                pods.pop(pod, None)

    def models_on(self, node: str) -> set[Key]:
        with self._lock:
            return set(self._pods.get(node, {}).values())

    # --- what a reconcile asks -------------------------------------------------------------------

    def dooms(self, nodes: Iterable[str], zones: Iterable[str]) -> tuple[list[Doom], list[Doom]]:
        """(cloud, node) dooms of `nodes`, plus spot pressure anywhere in `zones` (for cooldowns)."""
        wanted, in_zones = set(nodes), set(zones)
        with self._lock:
            cloud = [d for n, d in self._cloud_dooms.items() if n in wanted or d.zone in in_zones]
            node = [
                d for n, dooms in self._node_dooms.items() for d in dooms if n in wanted or d.zone in in_zones
            ]
        return cloud, node

    def lost_zones(self, now: datetime) -> dict[str, datetime]:
        """Zones that lost two or more nodes in the window, an on-demand one among them, and have no
        Ready node left.

        Spot nodes alone never make a zone lost: the market takes them back one by one, and on a
        Karpenter cluster a zone may hold nothing but the spot node it just lost. Their zone cools
        down for spot instead (the failover planner). On-demand nodes are not reclaimed, so two
        losses with one of them on-demand and nothing Ready left is an outage.
        """
        lost = {}
        with self._lock:
            for zone, losses in self._losses.items():
                recent = [loss for loss in losses if now - loss[0] <= self.zone_loss_window]
                self._losses[zone] = recent
                ready = any(n.ready for n in self._nodes.values() if n.zone == zone)
                nodes = {node for _, node, _ in recent}
                on_demand = any(kind == "on-demand" for _, _, kind in recent)
                if zone and len(nodes) >= 2 and on_demand and not ready:
                    lost[zone] = min(when for when, _, _ in recent)
        return lost

    def forget_cloud(self, older_than: datetime) -> None:
        """Drop cloud dooms whose node is gone and whose deadline passed long ago."""
        with self._lock:
            for name, doom in list(self._cloud_dooms.items()):
                if name not in self._nodes and (doom.deadline or doom.since) < older_than:
                    del self._cloud_dooms[name]
