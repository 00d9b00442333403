"""Split a replica count over zones × capacity types.

Each replica index gets its place from its index alone, so going from n to
n+1 replicas adds one replica somewhere and moves none (and n-1 removes the
last one). The rules, in order:

1. The first `onDemandReplicas` indices are on-demand (the floor spot cannot take).
2. Above the floor, the j-th extra replica is spot when the running spot share
   `round(j × spotPercent / 100)` grows by one at j, so n replicas hold
   `round((n - floor) × spotPercent / 100)` spot replicas.
3. Each replica goes to the zone with the fewest replicas of its capacity type,
   then the fewest replicas overall, then the first in `zones`: both capacity
   types and the totals stay within one of even, so losing any one zone loses
   as little as possible.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

from gpufleet.api.v1alpha1 import Capacity

CapacityType = Literal["spot", "on-demand"]
CAPACITY_TYPES: tuple[CapacityType, ...] = ("on-demand", "spot")


@dataclass(frozen=True, order=True)
class PlacementGroup:
    """Replicas of one ModelDeployment in one zone ("" = any zone) on one capacity type."""

    zone: str
    capacity_type: CapacityType
    replicas: int

    @property
    def key(self) -> tuple[str, CapacityType]:
        return (self.zone, self.capacity_type)


def _round_half_up(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def spot_count(extra_replicas: int, spot_percent: int) -> int:
    """Spot replicas among `extra_replicas` above the on-demand floor."""
    return _round_half_up(Decimal(extra_replicas) * spot_percent / 100)


def replica_slots(replicas: int, capacity: Capacity) -> list[tuple[str, CapacityType]]:
    """(zone, capacity type) of replica 0..replicas-1; a prefix of the list for n+1."""
    zones: Sequence[str] = capacity.zones or [""]
    floor = capacity.on_demand_replicas
    slots: list[tuple[str, CapacityType]] = []
    per_type: Counter[tuple[str, CapacityType]] = Counter()
    per_zone: Counter[str] = Counter()
    for index in range(replicas):
        extra = index - floor
        grows = spot_count(extra + 1, capacity.spot_percent) > spot_count(extra, capacity.spot_percent)
        capacity_type: CapacityType = "spot" if extra >= 0 and grows else "on-demand"
        zone = _least_loaded(zones, capacity_type, per_type, per_zone)
        slots.append((zone, capacity_type))
        per_type[(zone, capacity_type)] += 1
        per_zone[zone] += 1
    return slots


def _least_loaded(
    zones: Sequence[str],
    capacity_type: CapacityType,
    per_type: Counter[tuple[str, CapacityType]],
    per_zone: Counter[str],
) -> str:
    def load(zone: str) -> tuple[int, int, int]:
        return (per_type[(zone, capacity_type)], per_zone[zone], zones.index(zone))

    return min(zones, key=load)


def plan_placement(replicas: int, capacity: Capacity) -> list[PlacementGroup]:
    """Non-empty groups for `replicas`, ordered by zone list order, on-demand before spot."""
    counts = Counter(replica_slots(replicas, capacity))
    zones: Sequence[str] = capacity.zones or [""]
    return [
        PlacementGroup(zone, capacity_type, counts[(zone, capacity_type)])
        for zone in zones
        for capacity_type in CAPACITY_TYPES
        if counts[(zone, capacity_type)] > 0
    ]
