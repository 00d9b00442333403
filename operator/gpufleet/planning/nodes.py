"""Node objects and capacity signals → what the failover planner reads: a node's zone, kind and dooms.

A node's zone comes from its topology label, else from its AWS provider id
(aws:///<zone>/<instance-id>); its capacity type from the provisioner's label
(Karpenter's or EKS managed node groups', a setting); its instance type from
the well-known label node.kubernetes.io/instance-type.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gpufleet.api.timestamps import kube_time, parse_kube_time
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


# --- the durable record of a cloud signal on its Node --------------------------------------------
#
# An SQS message is deleted only once what it says is recorded where a restarted operator (or the
# next leader) reads it again: on the Node itself. The annotation carries the signal; the NoSchedule
# taint keeps replacements off a node the cloud is taking (NTH cordons such nodes too, Karpenter
# taints them). A rebalance recommendation is recorded without a taint: the node may well stay for
# days, and a taint nobody removes would take it out of scheduling for good.
CAPACITY_SIGNAL_KEY = "gpufleet.io/capacity-signal"
_UNSCHEDULABLE_KINDS = {"interruption", "stopping", "terminated", "scheduled-change"}


def signal_record_patch(node: Mapping[str, Any], doom: Doom) -> dict[str, Any] | None:
    """The merge patch that records `doom` on the Node as read (None: already recorded, or a sooner
    deadline is). Carries the resourceVersion read, so a concurrent change of the taints is a 409
    rather than lost: the taint list is replaced whole by a merge patch."""
    meta = node.get("metadata") or {}
    recorded = read_signal_record(node)
    if recorded is not None and not doom.supersedes(recorded):
        return None
    record = {
        "kind": doom.kind,
        "since": kube_time(doom.since),
        "deadline": kube_time(doom.deadline) if doom.deadline else None,
        "instanceId": doom.instance_id,
        "detail": doom.detail[:256],
    }
    patch: dict[str, Any] = {
        "metadata": {
            "resourceVersion": meta.get("resourceVersion"),
            "annotations": {CAPACITY_SIGNAL_KEY: json.dumps(record, sort_keys=True)},
        }
    }
    taints = [t for t in (node.get("spec") or {}).get("taints") or [] if isinstance(t, Mapping)]
    if doom.kind in _UNSCHEDULABLE_KINDS and not any(t.get("key") == CAPACITY_SIGNAL_KEY for t in taints):
        ours = {"key": CAPACITY_SIGNAL_KEY, "value": doom.kind, "effect": "NoSchedule"}
        patch["spec"] = {"taints": [*taints, ours]}
    return patch


def read_signal_record(node: Mapping[str, Any], info: NodeInfo | None = None) -> Doom | None:
    """The cloud signal recorded on a Node by signal_record_patch, placed by `info` (the node as
    read_node reads it); None when absent or unreadable."""
    meta = node.get("metadata") or {}
    raw = (meta.get("annotations") or {}).get(CAPACITY_SIGNAL_KEY)
    if not isinstance(raw, str):
        return None
    try:
        record = json.loads(raw)
        since = parse_kube_time(record["since"])
        deadline = parse_kube_time(record["deadline"]) if record.get("deadline") else None
        kind = str(record["kind"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return Doom(
        node=str(meta.get("name", "")),
        zone=info.zone if info else "",
        capacity_type=info.capacity_type if info else "spot",
        kind=kind,
        since=since,
        deadline=deadline,
        instance_id=str(record.get("instanceId", "")),
        detail=str(record.get("detail", "")),
        source="sqs",
        instance_type=info.instance_type if info else "",
    )
