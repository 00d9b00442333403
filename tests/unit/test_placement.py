"""Placement of replicas over zones × capacity types: table-driven, plus stability properties."""

from __future__ import annotations

from collections import Counter

import pytest

from gpufleet.api.v1alpha1 import Capacity
from gpufleet.planning.placement import PlacementGroup, plan_placement, replica_slots, spot_count

THREE_ZONES = ["us-east-1a", "us-east-1b", "us-east-1c"]


def groups(replicas: int, **capacity: object) -> set[tuple[str, str, int]]:
    return {(g.zone, g.capacity_type, g.replicas) for g in plan_placement(replicas, Capacity(**capacity))}


@pytest.mark.parametrize(
    ("replicas", "capacity", "expected"),
    [
        (0, {}, set()),
        (3, {}, {("", "on-demand", 3)}),
        (4, {"spot_percent": 100}, {("", "spot", 4)}),
        (4, {"spot_percent": 50}, {("", "on-demand", 2), ("", "spot", 2)}),
        (4, {"spot_percent": 100, "on_demand_replicas": 1}, {("", "on-demand", 1), ("", "spot", 3)}),
        # floor above the replica count: everything stays on-demand
        (2, {"spot_percent": 100, "on_demand_replicas": 5}, {("", "on-demand", 2)}),
        (3, {"zones": THREE_ZONES}, {(z, "on-demand", 1) for z in THREE_ZONES}),
        # the sample: floor 1, 70 % of the rest on spot, three zones
        (
            2,
            {"zones": THREE_ZONES, "on_demand_replicas": 1, "spot_percent": 70},
            {("us-east-1a", "on-demand", 1), ("us-east-1b", "spot", 1)},
        ),
        (
            5,
            {"zones": THREE_ZONES, "on_demand_replicas": 1, "spot_percent": 70},
            {
                ("us-east-1a", "on-demand", 1),
                ("us-east-1a", "spot", 1),
                ("us-east-1b", "spot", 1),
                ("us-east-1c", "on-demand", 1),
                ("us-east-1c", "spot", 1),
            },
        ),
    ],
)
def test_plan_placement(
    replicas: int, capacity: dict[str, object], expected: set[tuple[str, str, int]]
) -> None:
    assert groups(replicas, **capacity) == expected


@pytest.mark.parametrize(
    ("extra", "percent", "spot"),
    [
        (0, 70, 0),
        (1, 70, 1),
        (2, 70, 1),
        (10, 70, 7),
        (11, 70, 8),
        (1, 50, 1),
        (3, 50, 2),
        (5, 0, 0),
        (5, 100, 5),
    ],
)
def test_spot_share_rounds_half_up(extra: int, percent: int, spot: int) -> None:
    assert spot_count(extra, percent) == spot


CAPACITIES = [
    Capacity(zones=THREE_ZONES, on_demand_replicas=1, spot_percent=70),
    Capacity(zones=THREE_ZONES[:2], on_demand_replicas=2, spot_percent=50),
    Capacity(zones=THREE_ZONES, on_demand_replicas=0, spot_percent=100),
    Capacity(spot_percent=33),
]


@pytest.mark.parametrize("capacity", CAPACITIES)
def test_adding_a_replica_moves_none(capacity: Capacity) -> None:
    for n in range(30):
        assert replica_slots(n + 1, capacity)[:n] == replica_slots(n, capacity)


@pytest.mark.parametrize("capacity", CAPACITIES)
def test_counts_match_the_policy_and_zones_stay_even(capacity: Capacity) -> None:
    for n in range(40):
        slots = replica_slots(n, capacity)
        floor = min(n, capacity.on_demand_replicas)
        spot = sum(1 for _, t in slots if t == "spot")
        assert spot == spot_count(n - floor, capacity.spot_percent)
        per_zone = Counter(z for z, _ in slots)
        if n >= len(capacity.zones or [""]):
            assert max(per_zone.values()) - min(per_zone.values()) <= 1, (n, per_zone)
        for kind in ("spot", "on-demand"):
            per_type = Counter(z for z, t in slots if t == kind)
            counts = [per_type.get(z, 0) for z in (capacity.zones or [""])]
            assert max(counts) - min(counts) <= 1, (n, kind, counts)


def test_losing_any_zone_keeps_two_thirds() -> None:
    capacity = Capacity(zones=THREE_ZONES, on_demand_replicas=1, spot_percent=70)
    placement = plan_placement(9, capacity)
    for lost in THREE_ZONES:
        assert sum(g.replicas for g in placement if g.zone != lost) == 6


def test_group_order_is_zone_order_then_on_demand_first() -> None:
    placement = plan_placement(6, Capacity(zones=["b", "a"], spot_percent=50))
    assert [g.key for g in placement] == [
        ("b", "on-demand"),
        ("b", "spot"),
        ("a", "on-demand"),
        ("a", "spot"),
    ]
    assert all(isinstance(g, PlacementGroup) for g in placement)
