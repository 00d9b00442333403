"""Nodes and capacity signals, shared by the watches, the SQS loop and the reconciles.

In memory and safe to lose: a cloud event is recorded on its Node (annotation
and taint, gpufleet.planning.nodes) before its SQS message is deleted, and read
back from the node here; cloud events that moved replicas are also persisted
by the reconcile in each ModelDeployment's status.spot; node state is read
again from the watch after a restart. Thread-safe: kopf's handlers, the SQS
thread and the reconcile workers use it at once. It only records; every rule
(what a node's taints mean, which doom wins, when a zone is lost) is in
gpufleet.planning.

Bounded: it holds the nodes that exist, the pods of ModelDeployments that
exist, node losses within the zone-loss window, and the cloud signals of
deleted nodes until `signal_retention` after their deadline. Deletions a
watch missed while it was away reach it from the informer's next list
(runtime.informer), as deletions.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from gpufleet.planning.capacity_signals import CapacitySignal
from gpufleet.planning.failover import Doom
from gpufleet.planning.nodes import NodeInfo, doom_of, lost_without_warning, read_node, read_signal_record
from gpufleet.planning.observe import Key
from gpufleet.planning.reconcile import CapacitySnapshot
from gpufleet.planning.zone_loss import NodeLoss, recent

# How long the cloud signal of a deleted node is kept past its deadline (or, without one, past its first
# sighting): by then the reconciles of the models it hit have persisted it in their status.spot.
SIGNAL_RETENTION = timedelta(hours=1)
# Cloud signals of deleted nodes are swept at most this often (a sweep reads them all).
_SWEEP_EVERY = timedelta(minutes=1)


def _pod_id(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


class CapacityStore:
    def __init__(
        self,
        capacity_type_label: str,
        spot_value: str,
        notice: timedelta,
        zone_loss_window: timedelta,
        signal_retention: timedelta = SIGNAL_RETENTION,
    ) -> None:
        self._label = capacity_type_label
        self._spot = spot_value
        self.notice = notice
        self.zone_loss_window = zone_loss_window
        self.signal_retention = signal_retention
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeInfo] = {}
        self._by_instance: dict[str, str] = {}  # instance id → name, of nodes in _nodes only
        self._node_dooms: dict[str, tuple[Doom, ...]] = {}  # nodes in _nodes with a doom only
        self._cloud_dooms: dict[str, Doom] = {}  # outlives its node: see _sweep_cloud
        self._pods: dict[str, dict[str, Key]] = {}  # node → pod → owning ModelDeployment
        self._pod_at: dict[str, str] = {}  # pod → its node: the index of _pods
        self._losses: deque[NodeLoss] = deque()
        self._swept: datetime | None = None

    # --- nodes -----------------------------------------------------------------------------------

    def update_node(self, node: Mapping[str, Any], now: datetime) -> bool:
        """Record a node as the watch sees it; True when its dooms changed (reconcile its models)."""
        name = node.get("metadata", {}).get("name", "")
        with self._lock:
            before = self._node_dooms.get(name, ())
        reading = read_node(
            node,
            capacity_type_label=self._label,
            spot_value=self._spot,
            notice=self.notice,
            now=now,
            dooms_before=before,
        )
        info = reading.info
        with self._lock:
            old = self._nodes.get(name)
            self._nodes[name] = info
            if old is not None and old.instance_id != info.instance_id:
                # Another machine under the same name (its deletion unseen): the old id must not find
                # this node, nor stay behind.
                self._unindex(old)
            if info.instance_id:
                self._by_instance[info.instance_id] = name
            if reading.dooms:
                self._node_dooms[name] = reading.dooms
            else:
                self._node_dooms.pop(name, None)
            # A warning recorded on the node before a restart (or by the previous leader) counts again.
            recorded = read_signal_record(node, info)
            if recorded is not None and recorded.supersedes(self._cloud_dooms.get(name)):
                self._cloud_dooms[name] = recorded
            if old is not None and old.ready and not info.ready:
                self._lose(NodeLoss(now, name, info.zone, info.capacity_type), now)
        return [(d.kind, d.deadline) for d in before] != [(d.kind, d.deadline) for d in reading.dooms]

    def delete_node(self, name: str, now: datetime) -> None:
        """A node gone without warning is a loss; with a warning its doom stays until the pods are gone."""
        with self._lock:
            self._delete_node(name, now)
            self._sweep_cloud(now)

    def _delete_node(self, name: str, now: datetime) -> None:
        info = self._nodes.pop(name, None)
        self._node_dooms.pop(name, None)
        for pod in self._pods.pop(name, {}):
            self._pod_at.pop(pod, None)
        if info is None:
            return
        self._unindex(info)
        self._lose(NodeLoss(now, name, info.zone, info.capacity_type), now)
        if name not in self._cloud_dooms:
            self._cloud_dooms[name] = lost_without_warning(info, now)

    def _unindex(self, info: NodeInfo) -> None:
        if info.instance_id and self._by_instance.get(info.instance_id) == info.name:
            del self._by_instance[info.instance_id]

    def _lose(self, loss: NodeLoss, now: datetime) -> None:
        # Older losses no longer count for the zone-loss rule; keeping them would only grow. They come
        # in time order (near enough: one out of order only waits for those before it).
        while self._losses and now - self._losses[0].when > self.zone_loss_window:
            self._losses.popleft()
        self._losses.append(loss)

    def zones(self) -> set[str]:
        """Zones of the nodes known now."""
        with self._lock:
            return {n.zone for n in self._nodes.values() if n.zone}

    def node_for_instance(self, instance_id: str) -> NodeInfo | None:
        with self._lock:
            name = self._by_instance.get(instance_id)
            return self._nodes.get(name) if name else None

    # --- cloud events ----------------------------------------------------------------------------

    def record_cloud(self, signal: CapacitySignal) -> Doom | None:
        """Attach an SQS signal to its node; None when no node of this cluster has that instance."""
        node = self.node_for_instance(signal.instance_id or "")
        if node is None:
            return None
        doom = doom_of(node, signal)
        with self._lock:
            if doom.supersedes(self._cloud_dooms.get(node.name)):
                self._cloud_dooms[node.name] = doom
        return doom

    def forget_cloud(self, older_than: datetime) -> None:
        """Drop cloud dooms whose node is gone and whose deadline passed long ago."""
        with self._lock:
            self._forget_cloud(older_than)

    def _forget_cloud(self, older_than: datetime) -> None:
        for name, doom in list(self._cloud_dooms.items()):
            if name not in self._nodes and (doom.deadline or doom.since) < older_than:
                del self._cloud_dooms[name]

    def _sweep_cloud(self, now: datetime) -> None:
        """Forget the cloud signals of deleted nodes `signal_retention` after their deadline: the store
        keeps them no longer than that, whoever calls forget_cloud. A signal still ahead of its deadline
        stays: the replicas it moves may not have moved yet."""
        if self._swept is None or now - self._swept >= _SWEEP_EVERY:
            self._swept = now
            self._forget_cloud(now - self.signal_retention)

    # --- pods ------------------------------------------------------------------------------------

    def update_pod(self, key: Key, pod: str, node: str | None) -> None:
        with self._lock:
            self._drop_pod(pod)
            if node:
                self._pods.setdefault(node, {})[pod] = key
                self._pod_at[pod] = node

    def delete_pod(self, pod: str) -> None:
        with self._lock:
            self._drop_pod(pod)

    def _drop_pod(self, pod: str) -> None:
        node = self._pod_at.pop(pod, None)
        if node is None:
            return
        pods = self._pods.get(node, {})
        pods.pop(pod, None)
        if not pods:
            self._pods.pop(node, None)  # an empty entry per node ever seen would grow without bound

    def forget_model(self, key: Key) -> None:
        """A ModelDeployment is deleted: forget its pods now, whether or not their deletions are seen
        (what they would still wake is a key the work queue no longer knows)."""
        with self._lock:
            for pod in [pod for pod, node in self._pod_at.items() if self._pods[node][pod] == key]:
                self._drop_pod(pod)

    def models_on(self, node: str) -> set[Key]:
        with self._lock:
            return set(self._pods.get(node, {}).values())

    # --- a fresh start ---------------------------------------------------------------------------

    def prime(
        self,
        nodes: Iterable[Mapping[str, Any]],
        pods: Iterable[Mapping[str, Any]],
        owner_of: Callable[[Mapping[str, Any]], Key | None],
        now: datetime,
    ) -> None:
        """Record listed nodes and our pods, as their watch events would: before the interruption queue
        is read, so a warning for a node the watch has not shown yet is not taken for another cluster's."""
        for node in nodes:
            self.update_node(node, now)
        for pod in pods:
            key = owner_of(pod)
            if key is not None:
                self.update_pod(key, _pod_id(pod), (pod.get("spec") or {}).get("nodeName"))

    # --- what a reconcile reads ------------------------------------------------------------------

    def snapshot(self, now: datetime) -> CapacitySnapshot:
        with self._lock:
            return CapacitySnapshot(
                cloud_dooms=tuple(self._cloud_dooms.values()),
                node_dooms=tuple(d for dooms in self._node_dooms.values() for d in dooms),
                losses=tuple(recent(self._losses, now, self.zone_loss_window)),
                ready_zones=frozenset(n.zone for n in self._nodes.values() if n.ready and n.zone),
                instance_types={n.name: n.instance_type for n in self._nodes.values() if n.instance_type},
            )

    def sizes(self) -> dict[str, int]:
        """How much is held, structure by structure (for tests and debugging)."""
        with self._lock:
            return {
                "nodes": len(self._nodes),
                "instances": len(self._by_instance),
                "node_dooms": len(self._node_dooms),
                "cloud_dooms": len(self._cloud_dooms),
                "pod_nodes": len(self._pods),
                "pods": len(self._pod_at),
                "losses": len(self._losses),
            }
