"""Split a replica count over zones × capacity types.

Each replica index gets its place from its index alone, so going from n to
n+1 replicas adds one replica somewhere and moves none (and n-1 removes the
last one). The rules, in order:

1. The first `onDemandReplicas` indices are on-demand (the floor spot cannot take).
2. Above the floor, the j-th extra replica is spot when the running spot share
   `round(j × spotPercent / 100)` grows by one at j, so n replicas hold
   `round((n - floor) × spotPercent / 100)` spot replicas.
3. Each replica goes to the zone with the fewest replicas of its capacity type,
   then the fewest replicas overall, then (spot only) the cheapest known spot
   price, then the first in `zones`: both capacity types and the totals stay
   within one of even, so losing any one zone loses as little as possible.

`Constraints` carry what the failover planner (gpufleet.planning.failover)
learned: zones lost for every capacity type, zones whose spot capacity is
cooling down after an interruption or was unavailable, and the on-demand
fallback. They filter the zones each replica may use; they never drop a
replica. When every zone is excluded for a capacity type the exclusion is
ignored (nowhere better to go), and spot replicas with no spot zone left run
on on-demand when `fallback` is set.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Constraints:
    """Where replicas may not go right now; the empty default changes nothing."""

    lost_zones: frozenset[str] = frozenset()  # no replica of any capacity type
    spot_excluded_zones: frozenset[str] = frozenset()  # no spot replica (cooldown or unavailable)
    on_demand_excluded_zones: frozenset[str] = frozenset()  # no on-demand replica (unavailable)
    fallback: bool = False  # spot replicas with no spot zone left run on on-demand
    spot_prices: Mapping[str, float] = field(default_factory=dict)  # zone → price; cheaper first on ties

    def zones_for(self, zones: Sequence[str]) -> list[str]:
        usable = [z for z in zones if z not in self.lost_zones]
        return usable or list(zones)

    def spot_zones_for(self, zones: Sequence[str]) -> list[str]:
        return [z for z in self.zones_for(zones) if z not in self.spot_excluded_zones]

    def on_demand_zones_for(self, zones: Sequence[str]) -> list[str]:
        usable = [z for z in self.zones_for(zones) if z not in self.on_demand_excluded_zones]
        return usable or self.zones_for(zones)

    def spot_falls_back(self, zones: Sequence[str]) -> bool:
        """True when spot replicas run on on-demand: no spot zone is usable and fallback is allowed."""
        return self.fallback and not self.spot_zones_for(zones)


NO_CONSTRAINTS = Constraints()


def _round_half_up(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def spot_count(extra_replicas: int, spot_percent: int) -> int:
    """Spot replicas among `extra_replicas` above the on-demand floor."""
    return _round_half_up(Decimal(extra_replicas) * spot_percent / 100)


def replica_slots(
    replicas: int, capacity: Capacity, constraints: Constraints = NO_CONSTRAINTS
) -> list[tuple[str, CapacityType]]:
    """(zone, capacity type) of replica 0..replicas-1; a prefix of the list for n+1."""
    all_zones: Sequence[str] = capacity.zones or [""]
    zones = constraints.zones_for(all_zones)
    spot_zones = constraints.spot_zones_for(all_zones) or zones
    on_demand_zones = constraints.on_demand_zones_for(all_zones)
    spot_on_demand = constraints.spot_falls_back(all_zones)
    floor = capacity.on_demand_replicas
    slots: list[tuple[str, CapacityType]] = []
    per_type: Counter[tuple[str, CapacityType]] = Counter()
    per_zone: Counter[str] = Counter()
    for index in range(replicas):
        extra = index - floor
        grows = spot_count(extra + 1, capacity.spot_percent) > spot_count(extra, capacity.spot_percent)
        capacity_type: CapacityType = "spot" if extra >= 0 and grows else "on-demand"
        if capacity_type == "spot" and spot_on_demand:
            capacity_type = "on-demand"
        candidates = spot_zones if capacity_type == "spot" else on_demand_zones
        prices = constraints.spot_prices if capacity_type == "spot" else {}
        zone = _least_loaded(candidates, all_zones, capacity_type, per_type, per_zone, prices)
        slots.append((zone, capacity_type))
        per_type[(zone, capacity_type)] += 1
        per_zone[zone] += 1
    return slots


def _least_loaded(
    candidates: Sequence[str],
    order: Sequence[str],
    capacity_type: CapacityType,
    per_type: Counter[tuple[str, CapacityType]],
    per_zone: Counter[str],
    prices: Mapping[str, float],
) -> str:
    def load(zone: str) -> tuple[int, int, float, int]:
        # An unknown price sorts after every known one: prefer what is known to be cheap.
        price = prices.get(zone, float("inf"))
        return (per_type[(zone, capacity_type)], per_zone[zone], price, order.index(zone))

    return min(candidates, key=load)


def plan_placement(
    replicas: int, capacity: Capacity, constraints: Constraints = NO_CONSTRAINTS
) -> list[PlacementGroup]:
    """Non-empty groups for `replicas`, ordered by zone list order, on-demand before spot."""
    counts = Counter(replica_slots(replicas, capacity, constraints))
    zones: Sequence[str] = capacity.zones or [""]
    return [
        PlacementGroup(zone, capacity_type, counts[(zone, capacity_type)])
        for zone in zones
        for capacity_type in CAPACITY_TYPES
        if counts[(zone, capacity_type)] > 0
    ]
