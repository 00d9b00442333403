"""The failover planner: cooldowns, fallback, make-before-break and drains, with time passed in."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpufleet.api.v1alpha1 import Capacity
from gpufleet.planning.failover import (
    ON_DEMAND_FALLBACK,
    SPOT_INTERRUPTED,
    ZONE_DEGRADED,
    Cooldown,
    Doom,
    FailoverPlan,
    FailoverPolicy,
    FailoverState,
    PodView,
    plan_failover,
)
from gpufleet.planning.placement import Constraints, plan_placement
from tests.unit.helpers import failover_settings

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
ZONES = ["a", "b", "c"]


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def capacity(**fields: Any) -> Capacity:
    values: dict[str, Any] = {"zones": ZONES, "onDemandReplicas": 1, "spotPercent": 100}
    values.update(fields)
    return Capacity.model_validate(values)


def policy(**fields: Any) -> FailoverPolicy:
    cap = fields.pop("capacity", capacity())
    prices = fields.pop("spot_prices", {})
    return FailoverPolicy(capacity=cap, settings=failover_settings(**fields), spot_prices=prices)


def groups(plan: FailoverPlan) -> dict[tuple[str, str], int]:
    return {(g.zone, g.capacity_type): g.replicas for g in plan.groups}


def targets(plan: FailoverPlan) -> dict[tuple[str, str], int]:
    return {(g.zone, g.capacity_type): g.replicas for g in plan.targets}


def fleet(desired: int, pol: FailoverPolicy, constraints: Constraints | None = None) -> list[PodView]:
    """One ready pod per planned replica, on node <zone>-<type>-<i>."""
    pods = []
    for group in plan_placement(desired, pol.capacity, constraints or Constraints()):
        for i in range(group.replicas):
            node = f"{group.zone}-{group.capacity_type}-{i}"
            pods.append(PodView(f"p-{node}", group.zone, group.capacity_type, node, True))
    return pods


def warning(node: str, zone: str, since: datetime = NOW, notice: float = 120, **extra: Any) -> Doom:
    return Doom(
        node=node,
        zone=zone,
        capacity_type="spot",
        kind="interruption",
        since=since,
        deadline=since + timedelta(seconds=notice),
        instance_id="i-0abc",
        detail="EC2 Spot Instance Interruption Warning for i-0abc (terminate)",
        **extra,
    )


def condition(plan: FailoverPlan, kind: str) -> tuple[bool, str]:
    found = next(c for c in plan.conditions if c.type == kind)
    return found.ok, found.reason


# --- quiet fleet ---------------------------------------------------------------------------------


def test_no_signal_changes_nothing() -> None:
    pol = policy()
    pods = fleet(4, pol)
    plan = plan_failover(pol, 4, pods, FailoverState(), NOW)
    assert (
        groups(plan)
        == targets(plan)
        == {("a", "on-demand"): 1, ("a", "spot"): 1, ("b", "spot"): 1, ("c", "spot"): 1}
    )
    assert plan.retire == plan.kept == ()
    assert plan.events == ()
    assert [condition(plan, k) for k in (SPOT_INTERRUPTED, ON_DEMAND_FALLBACK, ZONE_DEGRADED)] == [
        (False, "NoneInProgress"),
        (False, "SpotAvailable"),
        (False, "AllZonesAvailable"),
    ]
    assert plan.requeue_after is None


# --- interruption --------------------------------------------------------------------------------


def test_a_warning_orders_the_replacement_elsewhere_and_keeps_the_doomed_replica_serving() -> None:
    pol = policy()
    pods = fleet(4, pol)
    plan = plan_failover(pol, 4, pods, FailoverState(), NOW, cloud_dooms=[warning("b-spot-0", "b")])
    # spot in b cools down: the spot replica goes to a or c, and the doomed pod stays until it is replaced
    assert ("b", "spot") not in targets(plan)
    assert sum(targets(plan).values()) == 4
    assert groups(plan)[("b", "spot")] == 1
    assert sum(groups(plan).values()) == 5  # one surge replica
    assert plan.kept == ("p-b-spot-0",)
    assert plan.retire == ()
    assert plan.state.interruptions_handled == 1
    assert condition(plan, SPOT_INTERRUPTED) == (True, "SpotInterruption")
    assert condition(plan, ZONE_DEGRADED) == (True, "SpotCoolingDown")
    (event,) = [e for e in plan.events if e.reason == "SpotInterruption"]
    for text in ("b-spot-0", "i-0abc", "p-b-spot-0"):
        assert text in event.message
    # drain 60 s before the 120 s deadline: come back in 60 s
    assert plan.requeue_after == pytest.approx(60)


def test_the_doomed_replica_drains_once_its_replacement_is_ready() -> None:
    pol = policy()
    pods = fleet(4, pol)
    first = plan_failover(pol, 4, pods, FailoverState(), NOW, cloud_dooms=[warning("b-spot-0", "b")])
    (new_group,) = [k for k, n in targets(first).items() if n > sum(p.group == k for p in pods)]
    replacement = PodView("p-new", new_group[0], "spot", f"{new_group[0]}-spot-9", ready=False)
    starting = plan_failover(pol, 4, [*pods, replacement], first.state, at(20))
    assert starting.kept == ("p-b-spot-0",)
    assert starting.retire == ()
    ready = plan_failover(pol, 4, [*pods, replace_ready(replacement)], first.state, at(40))
    assert ready.retire == ("p-b-spot-0",)
    assert ready.kept == ()
    assert groups(ready) == targets(ready)
    drained = [e.message for e in ready.events if e.reason == "DrainedReplica"]
    assert any("replacement is ready" in m for m in drained)
    # the warning is handled once, however often it is seen again
    again = plan_failover(pol, 4, pods, ready.state, at(50), cloud_dooms=[warning("b-spot-0", "b")])
    assert again.state.interruptions_handled == 1


def replace_ready(pod: PodView) -> PodView:
    return PodView(pod.name, pod.zone, pod.capacity_type, pod.node, True, None)


def test_the_deadline_drains_even_without_a_replacement() -> None:
    pol = policy()
    pods = fleet(4, pol)
    first = plan_failover(pol, 4, pods, FailoverState(), NOW, cloud_dooms=[warning("b-spot-0", "b")])
    late = plan_failover(pol, 4, pods, first.state, at(61))
    assert late.retire == ("p-b-spot-0",)
    assert late.retire_reasons == ("deadline",)
    assert "deadline is 59s away" in next(e.message for e in late.events if e.reason == "DrainedReplica")


def test_every_doomed_replica_serves_until_replaced_whatever_max_surge() -> None:
    pol = policy(max_surge=1)
    pods = fleet(7, pol)
    doomed = [p for p in pods if p.group == ("b", "spot")]
    assert len(doomed) == 2
    plan = plan_failover(
        pol, 7, pods, FailoverState(), NOW, cloud_dooms=[warning("b-spot-0", "b"), warning("b-spot-1", "b")]
    )
    # Both go with their node anyway: both replacements start now, and both keep serving until then.
    assert sorted(plan.kept) == sorted(p.name for p in doomed)
    assert plan.retire == ()
    assert sum(groups(plan).values()) == 9


def two_zone_spot_fleet() -> tuple[FailoverPolicy, list[PodView]]:
    """The issue's scenario: 20 spot replicas, 10 in each of zones a and b, on p4d.24xlarge nodes."""
    pol = policy(capacity=capacity(zones=["a", "b"], onDemandReplicas=0, spotPercent=100), max_surge=4)
    return pol, fleet(20, pol)


def test_a_rebalance_for_an_unrelated_cpu_node_moves_and_cools_nothing() -> None:
    pol, pods = two_zone_spot_fleet()
    cpu_node = Doom(
        "cpu-a-1", "a", "spot", "rebalance", NOW, None, "i-0cpu", "rebalance", instance_type="m5.large"
    )
    plan = plan_failover(
        pol, 20, pods, FailoverState(), NOW, cloud_dooms=[cpu_node], pools=frozenset({"p4d.24xlarge"})
    )
    assert groups(plan) == targets(plan) == {("a", "spot"): 10, ("b", "spot"): 10}
    assert plan.state.cooldowns == ()
    assert plan.retire == plan.kept == ()
    assert condition(plan, ZONE_DEGRADED) == (False, "AllZonesAvailable")


def test_a_not_ready_node_without_our_pods_cools_nothing() -> None:
    pol, pods = two_zone_spot_fleet()
    other = Doom("gpu-a-9", "a", "spot", "not-ready", NOW, None, source="node", instance_type="p4d.24xlarge")
    plan = plan_failover(
        pol, 20, pods, FailoverState(), NOW, node_dooms=[other], pools=frozenset({"p4d.24xlarge"})
    )
    assert plan.state.cooldowns == ()
    assert groups(plan) == {("a", "spot"): 10, ("b", "spot"): 10}


def test_a_warning_in_the_models_pool_steers_new_replicas_and_moves_no_serving_one() -> None:
    pol, pods = two_zone_spot_fleet()
    same_pool = warning("gpu-a-9", "a", instance_type="p4d.24xlarge")  # hosts none of our pods
    plan = plan_failover(
        pol, 20, pods, FailoverState(), NOW, cloud_dooms=[same_pool], pools=frozenset({"p4d.24xlarge"})
    )
    assert condition(plan, ZONE_DEGRADED) == (True, "SpotCoolingDown")
    # the ten serving replicas in a stay; nothing is started or drained
    assert groups(plan) == {("a", "spot"): 10, ("b", "spot"): 10}
    assert plan.retire == plan.kept == ()
    # a scale-up during the cooldown goes to b only
    bigger = plan_failover(pol, 24, pods, plan.state, at(10), pools=frozenset({"p4d.24xlarge"}))
    assert targets(bigger) == {("a", "spot"): 10, ("b", "spot"): 14}


def test_a_warning_on_our_node_replaces_that_replica_only() -> None:
    pol, pods = two_zone_spot_fleet()
    plan = plan_failover(pol, 20, pods, FailoverState(), NOW, cloud_dooms=[warning("a-spot-3", "a")])
    # nine healthy replicas keep zone a; the doomed one's replacement goes to b; the doomed one serves on
    assert targets(plan) == {("a", "spot"): 9, ("b", "spot"): 11}
    assert groups(plan) == {("a", "spot"): 10, ("b", "spot"): 11}
    assert plan.kept == ("p-a-spot-3",)


def test_a_planned_move_keeps_every_serving_replica_and_runs_max_surge_new_ones_at_a_time() -> None:
    pol = policy(capacity=capacity(zones=["a", "b"], onDemandReplicas=0, spotPercent=100), max_surge=4)
    # ten replicas on on-demand after a fallback whose cooldowns have ended: they move back to spot
    on_demand = [PodView(f"od-{i}", "ab"[i % 2], "on-demand", f"od-node-{i}", True) for i in range(10)]
    state = FailoverState(fallback_since=NOW)
    first = plan_failover(pol, 10, on_demand, state, at(1))
    assert targets(first) == {("a", "spot"): 5, ("b", "spot"): 5}
    assert first.retire == ()
    # every serving replica kept; only max_surge new ones start
    assert groups(first) == {("a", "on-demand"): 5, ("b", "on-demand"): 5, ("a", "spot"): 2, ("b", "spot"): 2}
    started = [PodView(f"s-{z}-{i}", z, "spot", f"s-node-{z}-{i}", False) for z in "ab" for i in range(2)]
    waiting = plan_failover(pol, 10, on_demand + started, first.state, at(2))
    assert groups(waiting) == groups(first)  # nothing more starts while they load
    ready = [replace_ready(p) for p in started]
    step = plan_failover(pol, 10, on_demand + ready, waiting.state, at(3))
    # four serve on spot: four on-demand may go, four more spot start
    assert sum(n for (_, kind), n in groups(step).items() if kind == "on-demand") == 6
    assert sum(n for (_, kind), n in groups(step).items() if kind == "spot") == 8
    assert sum(groups(step).values()) <= 10 + 4


def test_pods_on_a_not_ready_node_wait_the_grace_while_their_replacement_starts() -> None:
    pol = policy(not_ready_grace=timedelta(seconds=300))
    pods = [p if p.node != "b-spot-0" else PodView(p.name, "b", "spot", p.node, False) for p in fleet(4, pol)]
    down = Doom("b-spot-0", "b", "spot", "not-ready", NOW, None, source="node")
    first = plan_failover(pol, 4, pods, FailoverState(), at(10), node_dooms=[down])
    assert first.retire == ()
    assert first.kept == ("p-b-spot-0",)
    assert sum(groups(first).values()) == 5  # its replacement starts now
    assert first.requeue_after == pytest.approx(290)
    later = plan_failover(pol, 4, pods, first.state, at(300), node_dooms=[down])
    assert later.retire == ("p-b-spot-0",)
    assert later.retire_reasons == ("not-ready",)
    assert later.evict == (False,)  # not serving: deleted, the PDB has nothing to protect


def test_serving_pods_leave_by_eviction() -> None:
    pol = policy()
    pods = fleet(4, pol)
    first = plan_failover(pol, 4, pods, FailoverState(), NOW, cloud_dooms=[warning("b-spot-0", "b")])
    late = plan_failover(pol, 4, pods, first.state, at(61))
    assert late.retire_reasons == ("deadline",)
    assert late.evict == (True,)


def test_a_rebalance_starts_replacements_without_a_deadline_and_the_warning_adds_one() -> None:
    pol = policy()
    pods = fleet(4, pol)
    rebalance = Doom("b-spot-0", "b", "spot", "rebalance", NOW, None, "i-0abc", "rebalance")
    first = plan_failover(pol, 4, pods, FailoverState(), NOW, cloud_dooms=[rebalance])
    assert first.kept == ("p-b-spot-0",)
    assert first.requeue_after is None
    assert condition(first, SPOT_INTERRUPTED) == (True, "RebalanceRecommendation")
    later = plan_failover(
        pol, 4, pods, first.state, at(30), cloud_dooms=[warning("b-spot-0", "b", since=at(30))]
    )
    (doom,) = later.state.doomed
    assert doom.deadline == at(150)
    assert doom.since == NOW
    assert later.state.interruptions_handled == 1
    assert later.requeue_after == pytest.approx(60)


def test_unready_pods_on_a_doomed_node_drain_at_once() -> None:
    pol = policy()
    pods = [p if p.node != "b-spot-0" else PodView(p.name, "b", "spot", p.node, False) for p in fleet(4, pol)]
    plan = plan_failover(pol, 4, pods, FailoverState(), NOW, cloud_dooms=[warning("b-spot-0", "b")])
    assert plan.retire == ("p-b-spot-0",)
    assert "not serving" in next(e.message for e in plan.events if e.reason == "DrainedReplica")


def test_a_node_that_recovers_clears_its_doom() -> None:
    pol = policy()
    pods = fleet(4, pol)
    not_ready = Doom("b-spot-0", "b", "spot", "not-ready", NOW, None, source="node")
    first = plan_failover(pol, 4, pods, FailoverState(), NOW, node_dooms=[not_ready])
    assert first.kept == ("p-b-spot-0",)
    assert first.state.interruptions_handled == 1
    # seen again: the same doom, not a new one
    still = plan_failover(pol, 4, pods, first.state, at(10), node_dooms=[not_ready])
    assert still.state.interruptions_handled == 1
    assert not [e for e in still.events if e.reason == "NodeNotReady"]
    recovered = plan_failover(pol, 4, pods, still.state, at(30))
    assert recovered.state.doomed == ()
    assert condition(recovered, SPOT_INTERRUPTED)[0] is False
    assert recovered.retire == recovered.kept == ()


def test_on_demand_floor_is_never_lost_to_a_spot_event() -> None:
    pol = policy(capacity=capacity(onDemandReplicas=2, spotPercent=100))
    pods = fleet(5, pol)
    plan = plan_failover(pol, 5, pods, FailoverState(), NOW, cloud_dooms=[warning("a-spot-0", "a")])
    on_demand = sum(n for (_, kind), n in targets(plan).items() if kind == "on-demand")
    assert on_demand == 2
    assert not set(plan.retire) & {p.name for p in pods if p.capacity_type == "on-demand"}


# --- cooldowns and fallback ----------------------------------------------------------------------


def test_spot_pressure_in_every_zone_falls_back_to_on_demand_and_returns_later() -> None:
    pol = policy(capacity=capacity(zoneCooldownSeconds=300))
    pods = fleet(4, pol)
    dooms = [warning(f"{z}-spot-0", z) for z in ZONES]
    plan = plan_failover(pol, 4, pods, FailoverState(), NOW, cloud_dooms=dooms)
    assert all(kind == "on-demand" for _, kind in targets(plan))
    assert condition(plan, ON_DEMAND_FALLBACK) == (True, "SpotUnavailable")
    assert plan.state.fallback_since == NOW
    assert any(e.reason == "OnDemandFallback" for e in plan.events)
    # after the cooldown, spot is used again: targets go back; on-demand replicas serve until then
    od_pods = fleet(4, pol, Constraints(spot_excluded_zones=frozenset(ZONES), fallback=True))
    back = plan_failover(pol, 4, od_pods, plan.state, at(301))
    assert condition(back, ON_DEMAND_FALLBACK) == (False, "SpotAvailable")
    assert any(e.reason == "SpotRestored" for e in back.events)
    assert sum(n for (_, kind), n in targets(back).items() if kind == "spot") == 3
    # nothing spot is ready yet: the on-demand replicas above target are kept (3 of them)
    assert sum(groups(back).values()) == 7
    assert back.retire == ()


def test_without_fallback_spot_stays_on_spot() -> None:
    pol = policy(capacity=capacity(fallbackToOnDemand=False))
    plan = plan_failover(
        pol, 4, fleet(4, pol), FailoverState(), NOW, cloud_dooms=[warning(f"{z}-spot-0", z) for z in ZONES]
    )
    assert sum(n for (_, kind), n in targets(plan).items() if kind == "spot") == 3
    assert condition(plan, ON_DEMAND_FALLBACK)[0] is False


def test_unschedulable_spot_makes_the_zone_unavailable_with_growing_waits() -> None:
    pol = policy()
    pods = [
        p if p.group != ("c", "spot") else PodView(p.name, "c", "spot", "", False, unschedulable_since=NOW)
        for p in fleet(4, pol)
    ]
    early = plan_failover(pol, 4, pods, FailoverState(), at(299))
    assert early.state.cooldowns == ()
    found = plan_failover(pol, 4, pods, FailoverState(), at(300))
    (cool,) = found.state.cooldowns
    assert (cool.zone, cool.scope, cool.reason, cool.strikes, cool.until) == (
        "c",
        "spot",
        "SpotUnavailable",
        1,
        at(1200),
    )
    assert ("c", "spot") not in targets(found)
    assert any(e.reason == "SpotUnavailable" for e in found.events)
    # retried after the wait, unschedulable again: the wait doubles
    retry_pods = [
        p if p.group != ("c", "spot") else PodView("p-new", "c", "spot", "", False, at(1201)) for p in pods
    ]
    again = plan_failover(pol, 4, retry_pods, found.state, at(1501))
    (cool,) = again.state.cooldowns
    assert (cool.strikes, cool.until) == (2, at(1501 + 1800))


def test_a_lost_zone_moves_every_replica_to_the_others() -> None:
    pol = policy(capacity=capacity(onDemandReplicas=3, spotPercent=0))
    pods = fleet(3, pol)
    plan = plan_failover(pol, 3, pods, FailoverState(), NOW, lost_zones={"a": NOW})
    assert "a" not in {zone for zone, _ in targets(plan)}
    assert sum(targets(plan).values()) == 3
    assert condition(plan, ZONE_DEGRADED) == (True, "ZoneLost")


def test_unschedulable_on_demand_moves_on_demand_only() -> None:
    # On-demand short in b: on-demand replicas leave b, spot replicas may still go there.
    pol = policy(capacity=capacity(onDemandReplicas=3, spotPercent=100))
    pods = [p if p.zone != "b" else PodView(p.name, "b", "on-demand", "", False, NOW) for p in fleet(3, pol)]
    plan = plan_failover(pol, 5, pods, FailoverState(), at(300))
    assert ("b", "on-demand") not in targets(plan)
    assert sum(n for (_, kind), n in targets(plan).items() if kind == "on-demand") == 3
    assert targets(plan).get(("b", "spot"), 0) >= 1
    (cooldown,) = plan.state.cooldowns
    assert (cooldown.zone, cooldown.scope, cooldown.reason) == ("b", "on-demand", "OnDemandUnavailable")
    assert condition(plan, ZONE_DEGRADED) == (True, "OnDemandUnavailable")


def test_cheaper_spot_zones_win_ties() -> None:
    pol = policy(spot_prices={"a": 3.0, "b": 1.0, "c": 2.0}, capacity=capacity(onDemandReplicas=0))
    plan = plan_failover(pol, 1, [], FailoverState(), NOW)
    assert targets(plan) == {("b", "spot"): 1}


def test_no_zones_means_no_zone_cooldown() -> None:
    pol = policy(capacity=capacity(zones=[]))
    pods = [PodView("p0", "", "on-demand", "n0", True), PodView("p1", "", "spot", "n1", True)]
    plan = plan_failover(pol, 2, pods, FailoverState(), NOW, cloud_dooms=[warning("n1", "us-east-1a")])
    assert plan.state.cooldowns == ()
    assert plan.kept == ("p1",)
    assert groups(plan) == {("", "on-demand"): 1, ("", "spot"): 2}


# --- state ---------------------------------------------------------------------------------------


def test_state_round_trips_through_json() -> None:
    state = FailoverState(
        doomed=(warning("n1", "a"),),
        cooldowns=(Cooldown("a", "spot", at(300), "Interruption", 2),),
        interruptions_handled=3,
        last_interruption=NOW,
        fallback_since=at(5),
    )
    assert FailoverState.from_json(json.loads(json.dumps(state.to_json()))) == state


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        "x",
        [],
        {"interruptionsHandled": -1},
        {"doomedNodes": [{"node": "n"}]},
        {"cooldowns": [{"zone": "a", "scope": "x"}]},
    ],
)
def test_unreadable_state_is_empty(garbage: Any) -> None:
    assert FailoverState.from_json(garbage) == FailoverState()


def test_cloud_dooms_are_forgotten_once_the_node_holds_nothing_of_ours() -> None:
    pol = policy()
    pods = fleet(4, pol)
    first = plan_failover(pol, 4, pods, FailoverState(), NOW, cloud_dooms=[warning("b-spot-0", "b")])
    gone = [p for p in pods if p.node != "b-spot-0"]
    soon = plan_failover(pol, 4, gone, first.state, at(200))
    assert [d.node for d in soon.state.doomed] == ["b-spot-0"]  # kept a while: the node may still report
    later = plan_failover(pol, 4, gone, soon.state, at(120 + 601))
    assert later.state.doomed == ()


def test_plan_requires_aware_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_failover(policy(), 1, [], FailoverState(), datetime(2026, 1, 1))


def _names(pods: Sequence[PodView]) -> set[str]:
    return {p.name for p in pods}
