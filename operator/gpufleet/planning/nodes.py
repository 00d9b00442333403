"""Node objects and capacity signals → what the failover planner reads: a node's zone, kind and dooms.

A node's zone comes from its topology label, else from its AWS provider id
(aws:///<zone>/<instance-id>); its capacity type from the provisioner's label
(Karpenter's or EKS managed node groups', a setting); its instance type from
the well-known label node.kubernetes.io/instance-type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gpufleet.planning.capacity_signals import CapacitySignal, node_signals, provider_instance
from gpufleet.planning.failover import Doom, keep_first_sightings
from gpufleet.planning.placement import CapacityType
from gpufleet.planning.workloads import NODE_LABEL_ZONE

NODE_LABEL_INSTANCE_TYPE = "node.kubernetes.io/instance-type"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    zone: str
    capacity_type: CapacityType
    ready: bool
    instance_id: str = ""
    instance_type: str = ""  # with the zone, the capacity pool a spot market signal speaks for


@dataclass(frozen=True)
class NodeReading:
    """One look at a node: what it is, and the dooms its taints and readiness say."""

    info: NodeInfo
    dooms: tuple[Doom, ...]


def doom_of(node: NodeInfo, signal: CapacitySignal) -> Doom:
    return Doom(
        node=node.name,
        zone=node.zone,
        capacity_type=node.capacity_type,
        kind=signal.kind,
        since=signal.event_time,
        deadline=signal.deadline,
        instance_id=node.instance_id,
        detail=signal.detail,
        source=signal.source,
        instance_type=node.instance_type,
    )


def read_node(
    node: Mapping[str, Any],
    *,
    capacity_type_label: str,
    spot_value: str,
    notice: timedelta,
    now: datetime,
    dooms_before: tuple[Doom, ...] = (),
) -> NodeReading:
    """The node as the watch shows it now; each doom keeps the time of its first sighting."""
    meta = node.get("metadata", {})
    labels = meta.get("labels") or {}
    located = provider_instance((node.get("spec") or {}).get("providerID", "") or "")
    signals = node_signals(node, now=now, notice=notice)
    info = NodeInfo(
        name=meta.get("name", ""),
        zone=labels.get(NODE_LABEL_ZONE) or (located[0] if located else ""),
        capacity_type="spot" if labels.get(capacity_type_label) == spot_value else "on-demand",
        ready=not any(s.kind == "not-ready" for s in signals),
        instance_id=located[1] if located else "",
        instance_type=labels.get(NODE_LABEL_INSTANCE_TYPE, ""),
    )
    dooms = keep_first_sightings(dooms_before, [doom_of(info, s) for s in signals])
    return NodeReading(info, tuple(dooms))


def lost_without_warning(node: NodeInfo, now: datetime) -> Doom:
    """A node deleted with no signal before: its replicas are gone, as if terminated now."""
    return Doom(
        node.name,
        node.zone,
        node.capacity_type,
        "terminated",
        now,
        now,
        node.instance_id,
        "deleted",
        instance_type=node.instance_type,
    )
