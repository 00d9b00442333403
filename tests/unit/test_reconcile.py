"""The reconcile plan, table-driven: the specification of what one reconcile does (planning.reconcile).

Each case states what is observed (the ModelDeployment, its Deployments and pods, capacity signals, what
the operator remembers of its own writes) and checks the whole plan: applies with their Events, removals,
drains, status and its Warnings. Nothing here has an API: the plan is data.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpufleet.planning.cost import ProductPrices
from gpufleet.planning.failover import Doom
from gpufleet.planning.observe import version_of
from gpufleet.planning.reconcile import (
    CapacitySnapshot,
    Observed,
    ReconcilePlan,
    ReconcilePolicy,
    Remembered,
    plan_reconcile,
)
from gpufleet.planning.traffic import RouteLookup
from gpufleet.planning.zone_loss import NodeLoss
from tests.unit.helpers import (
    database_service,
    failover_settings,
    handmade_deployment,
    reconcile_policy,
    revision_name,
    sample,
)
from tests.unit.spot_objects import pod_object

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ZONES = ["us-east-1a", "us-east-1b", "us-east-1c"]
A100 = ProductPrices(on_demand=27.45, gpus_per_instance=8, instance_type="p4de")


@dataclass
class World:
    """The API server's side of a few reconciles: objects as applied, and what the operator remembers."""

    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    revisions: dict[str, dict[str, Any]] = field(default_factory=dict)  # ControllerRevisions
    pods: list[dict[str, Any]] = field(default_factory=list)
    applied: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    status: dict[str, Any] | None = None
    capacity: CapacitySnapshot = field(default_factory=CapacitySnapshot)
    prices: dict[str, ProductPrices] = field(default_factory=lambda: {"NVIDIA-A100-SXM4-80GB": A100})
    looked_up: dict[tuple[str, str], dict[str, Any] | None] = field(default_factory=dict)

    def plan(
        self, body: dict[str, Any], policy: ReconcilePolicy | None = None, now: datetime = NOW
    ) -> ReconcilePlan:
        observed = Observed(
            body=body,
            pods=self.pods,
            deployments=list(self.deployments.values()),
            revisions=list(self.revisions.values()),
            capacity=self.capacity,
            prices=self.prices,
            remembered=Remembered(dict(self.applied), self.status),
            looked_up=self.looked_up,
            route=self.route_lookup(body),
        )
        return plan_reconcile(observed, policy or reconcile_policy(), now)

    def route_lookup(self, body: dict[str, Any]) -> RouteLookup | None:
        """spec.rollout.httpRoute as the runtime would read it; none here."""
        return None

    def carry_out(self, plan: ReconcilePlan, body: dict[str, Any]) -> None:
        """As the runtime would, with the API server bumping generations on spec changes."""
        for write in plan.applies:
            obj = copy.deepcopy(write.obj)
            name = obj["metadata"]["name"]
            live = self.deployments.get(name) if obj["kind"] == "Deployment" else None
            generation = 1 if live is None else live["metadata"]["generation"] + (live["spec"] != obj["spec"])
            obj["metadata"]["generation"] = generation
            if obj["kind"] == "Deployment":
                self.deployments[name] = obj
            elif obj["kind"] == "ControllerRevision":
                obj["metadata"]["uid"] = f"uid-{name}"
                self.revisions[name] = obj
            self.applied[(obj["kind"], name)] = (write.template_hash, version_of(obj))
        for removal in plan.removals:
            (self.revisions if removal.kind == "ControllerRevision" else self.deployments).pop(
                removal.name, None
            )
            self.applied.pop((removal.kind, removal.name), None)
        if plan.status.patch is not None:
            self.status = plan.status.stored_form
            body["status"] = plan.status.stored_form

    def converge(self, body: dict[str, Any]) -> ReconcilePlan:
        """Reconcile until nothing more is written (at most three passes)."""
        for _ in range(3):
            plan = self.plan(body)
            self.carry_out(plan, body)
            if not plan.applies and plan.status.patch is None:
                return plan
        raise AssertionError("no steady state after three reconciles")


def applies(plan: ReconcilePlan) -> dict[str, str | None]:
    """Applied object → the reason of its Event (None: applied quietly)."""
    return {
        f"{a.obj['kind']}/{a.obj['metadata']['name']}": a.event.reason if a.event else None
        for a in plan.applies
    }


def conditions(plan: ReconcilePlan) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in plan.status.status.conditions}


def revision_of(body: dict[str, Any]) -> str:
    return f"ControllerRevision/{revision_name(body)}"


GROUPS = ("llama-3-70b-us-east-1a-on-demand", "llama-3-70b-us-east-1b-spot")
FIRST_LOOK = {
    revision_of(sample()): "NewRevision",
    f"Deployment/{GROUPS[0]}": "CreatedGroup",
    f"Deployment/{GROUPS[1]}": "CreatedGroup",
    "Service/llama-3-70b": None,
    "PodDisruptionBudget/llama-3-70b": None,
}


def someone_edits(world: World, body: dict[str, Any]) -> None:
    live = world.deployments[GROUPS[1]]
    live["spec"]["replicas"] = 7
    live["metadata"]["generation"] += 1


def someone_deletes(world: World, body: dict[str, Any]) -> None:
    del world.deployments[GROUPS[0]]


def operator_restarts(world: World, body: dict[str, Any]) -> None:
    world.applied.clear()
    world.status = None


def nothing(world: World, body: dict[str, Any]) -> None:
    pass


def new_image(world: World, body: dict[str, Any]) -> None:
    body["spec"]["engine"]["image"] = "vllm/vllm-openai:v0.12.0"


def new_image_body() -> dict[str, Any]:
    body = sample()
    new_image(World(), body)
    return body


def scale_to_three(world: World, body: dict[str, Any]) -> None:
    body["spec"]["replicas"] = 3


def scale_to_eight(world: World, body: dict[str, Any]) -> None:
    body["spec"]["replicas"] = 8


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(nothing, {}, id="steady state: nothing applied"),
        pytest.param(someone_edits, {f"Deployment/{GROUPS[1]}": "RevertedDrift"}, id="drift reverted"),
        pytest.param(
            someone_deletes, {f"Deployment/{GROUPS[0]}": "RestoredGroup"}, id="deleted group restored"
        ),
        # After a restart nothing is known to have drifted: one quiet apply per object, no Event.
        pytest.param(
            operator_restarts,
            {k: None for k in FIRST_LOOK if not k.startswith("ControllerRevision/")},
            id="restart re-applies quietly (the history is read, not written)",
        ),
        pytest.param(
            new_image,
            {
                f"Deployment/{GROUPS[0]}": "UpdatedGroup",
                f"Deployment/{GROUPS[1]}": "UpdatedGroup",
                revision_of(new_image_body()): "NewRevision",
            },
            id="rollout of a new template: a new revision first",
        ),
        # 3 replicas at 70 % spot above one on-demand: 2 on-demand (1a, 1c) and 1 spot (1b)
        pytest.param(
            scale_to_three, {"Deployment/llama-3-70b-us-east-1c-on-demand": "CreatedGroup"}, id="scale up"
        ),
        # 8 replicas: 3 on-demand and 5 spot spread over three zones; two groups grow
        pytest.param(
            scale_to_eight,
            {
                f"Deployment/{GROUPS[1]}": "ScaledGroup",
                "Deployment/llama-3-70b-us-east-1a-spot": "CreatedGroup",
                "Deployment/llama-3-70b-us-east-1b-on-demand": "CreatedGroup",
                "Deployment/llama-3-70b-us-east-1c-on-demand": "CreatedGroup",
                "Deployment/llama-3-70b-us-east-1c-spot": "CreatedGroup",
            },
            id="scale up further: existing groups grow",
        ),
    ],
)
def test_what_a_reconcile_applies_and_why(
    change: Callable[[World, dict[str, Any]], None], expected: dict[str, str | None]
) -> None:
    world, body = World(), sample()
    first = world.plan(body)
    assert applies(first) == FIRST_LOOK
    world.carry_out(first, body)
    world.converge(body)
    change(world, body)
    plan = world.plan(body)
    assert applies(plan) == expected
    assert plan.removals == ()
    assert plan.drains == ()


def test_a_steady_state_writes_no_status() -> None:
    world, body = World(), sample()
    world.converge(body)
    plan = world.plan(body)
    assert plan.status.patch is None
    assert plan.status.events == ()


def test_scaling_down_removes_the_groups_no_longer_placed() -> None:
    world, body = World(), sample(replicas=5)
    world.converge(body)
    assert len(world.deployments) == 5
    body["spec"]["replicas"] = 2
    plan = world.plan(body)
    assert [(r.name, r.event.reason) for r in plan.removals] == [
        ("llama-3-70b-us-east-1a-spot", "RemovedGroup"),
        ("llama-3-70b-us-east-1c-on-demand", "RemovedGroup"),
        ("llama-3-70b-us-east-1c-spot", "RemovedGroup"),
    ]
    assert applies(plan) == {}  # the two groups left keep their one replica each: nothing to apply


def test_a_deployment_with_our_label_but_another_owner_is_never_removed() -> None:
    world, body = World(), sample()
    world.deployments["llama-3-70b-handmade"] = handmade_deployment()
    assert world.plan(body).removals == ()


def test_an_invalid_spec_is_reported_and_nothing_is_touched() -> None:
    world, body = World(), sample()
    world.converge(body)
    body["spec"]["accelerator"]["tensorParallelSize"] = 1
    plan = world.plan(body)
    assert not plan.valid
    assert (plan.applies, plan.removals, plan.drains, plan.events) == ((), (), (), ())
    valid = next(c for c in plan.status.status.conditions if c.type == "Valid")
    assert (valid.status, valid.reason) == ("False", "InvalidSpec")
    assert "use tensorParallelSize: 4" in valid.message
    assert [(e.type, e.reason) for e in plan.status.events] == [("Warning", "InvalidSpec")]
    assert plan.status.status.desired_replicas == 2  # what it was converging to is kept


def test_replicas_past_max_are_clamped_not_invalid() -> None:
    plan = World().plan(sample(replicas=20))
    assert plan.valid
    assert sum(a.obj["spec"]["replicas"] for a in plan.applies if a.obj["kind"] == "Deployment") == 12
    assert conditions(plan)["ScalingLimited"] == ("True", "TooManyReplicas")
    assert ("Warning", "TooManyReplicas") in [(e.type, e.reason) for e in plan.status.events]


# --- capacity: drains and zones ------------------------------------------------------------------

SPOT_BODY = {"zones": ZONES, "onDemandReplicas": 1, "spotPercent": 100}


def serving_world() -> tuple[World, dict[str, Any]]:
    """Three replicas serving: on-demand in 1a, spot in 1b and 1c, each on its own node."""
    world, body = World(), sample(replicas=3, capacity=SPOT_BODY)
    world.converge(body)
    world.pods = [
        pod_object(f"p-{zone}", zone, kind, f"n-{zone}")
        for zone, kind in (("us-east-1a", "on-demand"), ("us-east-1b", "spot"), ("us-east-1c", "spot"))
    ]
    world.converge(body)
    return world, body


def warning(node: str, zone: str, deadline: datetime = NOW + timedelta(seconds=120)) -> Doom:
    return Doom(node, zone, "spot", "interruption", NOW, deadline, "i-0123456789abcdef0", "spot warning")


def test_a_doomed_replica_serves_until_its_replacement_is_ready_then_is_drained() -> None:
    world, body = serving_world()
    world.capacity = CapacitySnapshot(cloud_dooms=(warning("n-us-east-1b", "us-east-1b"),))
    plan = world.plan(body)
    assert plan.drains == ()
    assert applies(plan) == {"Deployment/llama-3-70b-us-east-1a-spot": "CreatedGroup"}
    assert plan.requeue_after == pytest.approx(60)  # 120 s notice − 60 s drain
    assert [e.reason for e in plan.events] == ["SpotInterruption"]
    assert conditions(plan)["SpotInterrupted"] == ("True", "SpotInterruption")
    world.carry_out(plan, body)

    world.pods.append(pod_object("p-new", "us-east-1a", "spot", "n-us-east-1a"))
    plan = world.plan(body, now=NOW + timedelta(seconds=20))
    assert [(d.pod, d.reason) for d in plan.drains] == [("p-us-east-1b", "replaced")]
    assert [r.name for r in plan.removals] == ["llama-3-70b-us-east-1b-spot"]


def test_a_doomed_replica_is_drained_at_the_deadline_even_without_a_replacement() -> None:
    world, body = serving_world()
    world.capacity = CapacitySnapshot(
        cloud_dooms=(warning("n-us-east-1b", "us-east-1b", NOW + timedelta(seconds=30)),)
    )
    plan = world.plan(body)
    assert [(d.pod, d.reason) for d in plan.drains] == [("p-us-east-1b", "deadline")]


def test_a_rebalance_recommendation_is_ignored_when_the_setting_says_so() -> None:
    world, body = serving_world()
    rebalance = Doom("n-us-east-1b", "us-east-1b", "spot", "rebalance", NOW, None, "i-1", "rebalance")
    world.capacity = CapacitySnapshot(cloud_dooms=(rebalance,))
    acting = world.plan(body)
    assert "Deployment/llama-3-70b-us-east-1a-spot" in applies(acting)
    off = reconcile_policy(failover=True)
    off = ReconcilePolicy(
        off.workloads, off.unschedulable_after, failover_settings(rebalance_starts_replacements=False)
    )
    ignoring = world.plan(body, policy=off)
    assert applies(ignoring) == {}
    assert conditions(ignoring)["SpotInterrupted"] == ("False", "NoneInProgress")


def test_a_lost_zone_is_avoided_for_every_capacity_type() -> None:
    world, body = serving_world()
    world.capacity = CapacitySnapshot(
        losses=(
            NodeLoss(NOW - timedelta(seconds=30), "n-us-east-1c", "us-east-1c", "spot"),
            NodeLoss(NOW - timedelta(seconds=20), "od-us-east-1c", "us-east-1c", "on-demand"),
        ),
        ready_zones=frozenset({"us-east-1a", "us-east-1b"}),
    )
    plan = world.plan(body)
    assert conditions(plan)["ZoneDegraded"] == ("True", "ZoneLost")
    assert ("Warning", "ZoneLost") in [(e.type, e.reason) for e in plan.events]
    placed = {g.zone for g in plan.status.status.placement if g.replicas}
    assert "us-east-1c" in placed  # its pod still exists (status shows what is); the plan moves it:
    assert applies(plan) == {"Deployment/llama-3-70b-us-east-1a-spot": "CreatedGroup"}


def test_with_spot_failover_off_signals_change_nothing() -> None:
    world, body = serving_world()
    world.capacity = CapacitySnapshot(cloud_dooms=(warning("n-us-east-1b", "us-east-1b"),))
    plan = world.plan(body, policy=reconcile_policy(failover=False))
    assert (plan.applies, plan.drains, plan.events) == ((), (), ())


def test_status_members_that_went_away_are_deleted_and_an_invalid_spec_leaves_spot_and_cost_alone() -> None:
    world, body = World(), sample()
    # As a restarted operator finds it: a fallback that has ended since, and a price no longer known.
    body["status"] = {
        "spot": {"interruptionsHandled": 1, "fallbackSince": "2026-11-22T11:00:00Z"},
        "cost": {"currency": "USD", "perHour": 41.2, "message": "old"},
    }
    world.prices = {}
    plan = world.plan(body)
    patch = plan.status.patch
    assert patch is not None
    assert patch["spot"]["fallbackSince"] is None
    assert patch["spot"]["interruptionsHandled"] == 1
    assert patch["cost"]["perHour"] is None
    world.carry_out(plan, body)

    broken = sample()
    broken["spec"]["accelerator"]["tensorParallelSize"] = 1
    broken["status"] = {**plan.status.stored_form, "spot": {"interruptionsHandled": 1}}
    invalid = world.plan(broken)
    assert invalid.status.patch is not None
    assert "spot" not in invalid.status.patch
    assert "cost" not in invalid.status.patch


# --- objects of the model's name that belong to someone else ----------------------------------------

FOREIGN_SERVICE = database_service()


def test_a_service_of_the_models_name_that_is_not_its_own_is_never_taken() -> None:
    world, body = World(), sample()
    world.looked_up = {
        ("Service", "llama-3-70b"): FOREIGN_SERVICE,
        ("PodDisruptionBudget", "llama-3-70b"): None,
    }
    plan = world.plan(body)
    assert "Service/llama-3-70b" not in applies(plan)
    assert {"PodDisruptionBudget/llama-3-70b", f"Deployment/{GROUPS[0]}"} <= set(applies(plan))
    degraded = next(c for c in plan.status.status.conditions if c.type == "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "ObjectConflict")
    assert "Service ml/llama-3-70b exists and belongs to no ModelDeployment" in degraded.message
    assert "rename the ModelDeployment or remove that object" in degraded.message
    assert ("Warning", "ObjectConflict") in [(e.type, e.reason) for e in plan.status.events]


def test_its_own_service_found_after_a_restart_is_applied_and_the_conflict_ends() -> None:
    world, body = World(), sample()
    own = {
        **FOREIGN_SERVICE,
        "metadata": {**FOREIGN_SERVICE["metadata"], "ownerReferences": [{"uid": "uid-1"}]},
    }
    world.looked_up = {("Service", "llama-3-70b"): own}
    plan = world.plan(body)
    assert "Service/llama-3-70b" in applies(plan)
    assert conditions(plan)["Degraded"] == ("False", "AsExpected")
