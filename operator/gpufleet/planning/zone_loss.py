"""Node losses → zones that are lost (an outage), as opposed to spot capacity being taken back.

A zone is lost when it lost two or more nodes within the window, an on-demand
one among them, and has no Ready node left. Spot nodes alone never make a zone
lost: the market takes them back one by one, and on a Karpenter cluster a zone
may hold nothing but the spot node it just lost; their zone cools down for spot
instead (gpufleet.planning.failover). On-demand nodes are not reclaimed, so two
losses with one of them on-demand and nothing Ready left is an outage.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from gpufleet.planning.placement import CapacityType


@dataclass(frozen=True)
class NodeLoss:
    """A node that went NotReady or away."""

    when: datetime
    node: str
    zone: str
    capacity_type: CapacityType


def recent(losses: Iterable[NodeLoss], now: datetime, window: timedelta) -> list[NodeLoss]:
    """The losses the rule still counts; older ones can be forgotten."""
    return [loss for loss in losses if now - loss.when <= window]


def lost_zones(
    losses: Iterable[NodeLoss], ready_zones: Iterable[str], now: datetime, window: timedelta
) -> dict[str, datetime]:
    """Lost zone → when its first counted loss happened."""
    by_zone: dict[str, list[NodeLoss]] = {}
    for loss in recent(losses, now, window):
        if loss.zone:
            by_zone.setdefault(loss.zone, []).append(loss)
    ready = set(ready_zones)
    lost = {}
    for zone, zone_losses in by_zone.items():
        nodes = {loss.node for loss in zone_losses}
        on_demand = any(loss.capacity_type == "on-demand" for loss in zone_losses)
        if len(nodes) >= 2 and on_demand and zone not in ready:
            lost[zone] = min(loss.when for loss in zone_losses)
    return lost
