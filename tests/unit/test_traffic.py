"""Exact canary weights through an HTTPRoute (planning.traffic), alone and through whole reconciles."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from gpufleet.planning.observe import ObservedPod
from gpufleet.planning.reconcile import ReconcilePlan, route_name
from gpufleet.planning.traffic import RouteLookup, plan_traffic, ready_in_slot, routable
from gpufleet.planning.workloads import LABEL_REVISION_HASH, Owner
from tests.unit.helpers import sample
from tests.unit.test_reconcile import NOW, World
from tests.unit.test_reconcile_canary import NEW_IMAGE, OLD_IMAGE, settle

OWNER = Owner("llama", "ml", "uid-1")
HASHES = {"a": "hash-a", "b": "hash-b"}


def route(*rules: dict[str, Any], version: str = "7") -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "chat", "namespace": "ml", "resourceVersion": version},
        "spec": {"parentRefs": [{"name": "inference"}], "rules": list(rules)},
    }


def rule(*names: str, **extra: Any) -> dict[str, Any]:
    return {
        "matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
        "backendRefs": [{"name": n, "port": 8000, **extra} for n in names],
    }


def weights(patch: dict[str, Any] | None, index: int = 0) -> dict[str, int]:
    assert patch is not None
    return {ref["name"]: ref.get("weight", 1) for ref in patch["spec"]["rules"][index]["backendRefs"]}


@pytest.mark.parametrize(
    ("lookup", "reason"),
    [
        (RouteLookup("chat", None, error="403 forbidden"), "HTTPRouteUnreadable"),
        (RouteLookup("chat", None), "HTTPRouteNotFound"),
        (RouteLookup("chat", route(rule("other-model"))), "NoBackendRef"),
        (
            RouteLookup("chat", route({"backendRefs": [{"name": "llama", "kind": "ServiceImport"}]})),
            "NoBackendRef",
        ),
    ],
)
def test_a_route_that_cannot_carry_the_weights_is_left_alone_and_named(
    lookup: RouteLookup, reason: str
) -> None:
    plan = plan_traffic(OWNER, 8000, lookup, HASHES, "a", 10, stable_ready=2)
    assert plan.patch is None
    assert not plan.routed
    assert (plan.condition.type, plan.condition.ok, plan.condition.reason) == ("TrafficRouted", False, reason)
    assert "chat" in plan.condition.message
    assert not routable(lookup, "llama")


@pytest.mark.parametrize(
    ("stable_slot", "canary_weight", "expected"),
    [
        ("a", 0, {"llama-a": 100, "llama-b": 0}),
        ("a", 10, {"llama-a": 90, "llama-b": 10}),
        ("b", 10, {"llama-a": 10, "llama-b": 90}),
        ("b", 100, {"llama-a": 100, "llama-b": 0}),
        ("a", 100, {"llama-a": 0, "llama-b": 100}),
    ],
)
def test_the_rule_of_the_models_service_gets_both_slots_with_exact_weights(
    stable_slot: str, canary_weight: int, expected: dict[str, int]
) -> None:
    lookup = RouteLookup("chat", route(rule("llama", filters=[{"type": "RequestMirror"}])))
    plan = plan_traffic(OWNER, 8000, lookup, HASHES, stable_slot, canary_weight, stable_ready=1)  # type: ignore[arg-type]
    assert plan.routed
    assert weights(plan.patch) == expected
    written = plan.patch["spec"]["rules"][0] if plan.patch else {}
    # Matches and a backendRef's own filters stay the user's; the route's version guards the write.
    assert written["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}}]
    assert all(ref["filters"] == [{"type": "RequestMirror"}] for ref in written["backendRefs"])
    assert plan.patch
    assert plan.patch["metadata"] == {"resourceVersion": "7"}
    assert plan.condition.ok
    assert plan.condition.reason == "BackendWeights"


def test_other_rules_and_other_backends_of_the_rule_are_kept_and_nothing_is_written_twice() -> None:
    lookup = RouteLookup("chat", route(rule("docs-site"), rule("llama", "llama-old-experiment")))
    plan = plan_traffic(OWNER, 8000, lookup, HASHES, "a", 25, stable_ready=3)
    assert plan.patch is not None
    rules = plan.patch["spec"]["rules"]
    assert rules[0] == rule("docs-site")
    assert [ref["name"] for ref in rules[1]["backendRefs"]] == ["llama-old-experiment", "llama-a", "llama-b"]
    assert weights(plan.patch, 1)["llama-b"] == 25
    # Read back as written: no second write.
    again = plan_traffic(OWNER, 8000, RouteLookup("chat", route(*rules, version="8")), HASHES, "a", 25, 3)
    assert again.patch is None


def test_without_a_ready_labelled_stable_pod_the_route_points_at_the_models_service() -> None:
    """Pods from before the revision label are being replaced: the slot Service has no endpoint yet,
    and a gateway would answer 503 for every request sent to it."""
    written = route(rule("llama-a", "llama-b"))
    plan = plan_traffic(OWNER, 8000, RouteLookup("chat", written), HASHES, "a", 10, stable_ready=0)
    assert not plan.routed
    assert weights(plan.patch) == {"llama": 1}
    assert plan.condition.reason == "WaitingForLabelledPods"
    # A rule already at the model's Service, as the user wrote it, is not rewritten.
    untouched = plan_traffic(OWNER, 8000, RouteLookup("chat", route(rule("llama"))), HASHES, "a", 10, 0)
    assert untouched.patch is None


def test_slot_services_select_each_slots_revision() -> None:
    plan = plan_traffic(OWNER, 8000, RouteLookup("chat", None), HASHES, "a", 0, 0)
    selectors = {s["metadata"]["name"]: s["spec"]["selector"] for s in plan.services}
    assert selectors == {
        "llama-a": {"gpufleet.io/model-deployment": "llama", LABEL_REVISION_HASH: "hash-a"},
        "llama-b": {"gpufleet.io/model-deployment": "llama", LABEL_REVISION_HASH: "hash-b"},
    }
    assert all(s["metadata"]["ownerReferences"][0]["uid"] == "uid-1" for s in plan.services)


def _pod(slot: str, revision: str, ready: bool = True, terminating: bool = False) -> ObservedPod:
    return ObservedPod(
        name=f"p-{slot}-{revision}-{ready}-{terminating}",
        zone="z",
        capacity_type="on-demand",
        node="n",
        ready=ready,
        terminating=terminating,
        slot=slot,  # type: ignore[arg-type]
        revision_hash=revision,
    )


def test_only_ready_pods_of_the_slots_revision_count_as_its_endpoints() -> None:
    pods = [
        _pod("a", "h1"),
        _pod("a", "h1", ready=False),
        _pod("a", "h1", terminating=True),
        _pod("a", ""),  # from before the label
        _pod("b", "h1"),
    ]
    assert ready_in_slot(pods, "a", "h1") == 1


# --- through whole reconciles ---------------------------------------------------------------------


@dataclass
class RoutedWorld(World):
    """World plus the user's HTTPRoute, patched as the API server would (a stale version refused)."""

    route: dict[str, Any] = field(default_factory=lambda: route(rule("llama-3-70b"), version="1"))
    others: dict[str, dict[str, Any]] = field(default_factory=dict)  # more routes, by name
    refused: int = 0
    unreadable: bool = False  # the GET of the route fails (403, API error)
    read: list[str] = field(default_factory=list)  # the route names read, pass by pass

    def named(self, name: str) -> dict[str, Any] | None:
        return self.route if name == "chat" else self.others.get(name)

    def route_lookup(self, body: dict[str, Any]) -> RouteLookup | None:
        name = route_name(body, self.status)  # as the runtime picks it
        if not name:
            return None
        self.read.append(name)
        if self.unreadable:
            return RouteLookup(name, None, error="403 forbidden")
        return RouteLookup(name, copy.deepcopy(self.named(name)))

    def carry_out(self, plan: ReconcilePlan, body: dict[str, Any]) -> None:
        super().carry_out(plan, body)
        if plan.route is None:
            return
        target = self.named(plan.route.name)
        assert target is not None, f"a patch of HTTPRoute {plan.route.name}, which does not exist"
        if plan.route.patch["metadata"]["resourceVersion"] != target["metadata"]["resourceVersion"]:
            self.refused += 1
            return
        target["spec"]["rules"] = copy.deepcopy(plan.route.patch["spec"]["rules"])
        target["metadata"]["resourceVersion"] = str(int(target["metadata"]["resourceVersion"]) + 1)

    def weights(self, name: str = "chat") -> dict[str, int]:
        routed = self.named(name)
        assert routed is not None
        return {ref["name"]: ref.get("weight", 1) for ref in routed["spec"]["rules"][0]["backendRefs"]}


def routed_body(weight: int = 10) -> dict[str, Any]:
    return sample(rollout={"steps": [{"weight": weight, "pauseSeconds": 600}], "httpRoute": {"name": "chat"}})


def step(world: World, body: dict[str, Any], after: timedelta = timedelta()) -> ReconcilePlan:
    plan = world.plan(body, now=NOW + after)
    world.carry_out(plan, body)
    return plan


def conditions(body: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in body["status"]["conditions"]}


def test_a_canary_at_10_percent_gets_exactly_10_percent_of_the_routes_traffic() -> None:
    body = routed_body(10)
    world = RoutedWorld()
    world.converge(body)
    # Every pod carries its revision from the start, so each slot's Service has endpoints.
    assert all(
        LABEL_REVISION_HASH in d["spec"]["template"]["metadata"]["labels"] for d in world.deployments.values()
    )
    assert conditions(body)["TrafficRouted"] == ("False", "WaitingForLabelledPods")
    assert world.weights() == {"llama-3-70b": 1}  # as the user wrote it: no pod behind llama-3-70b-a yet
    settle(world)
    world.converge(body)
    assert world.weights() == {"llama-3-70b-a": 100, "llama-3-70b-b": 0}
    assert conditions(body)["TrafficRouted"] == ("True", "BackendWeights")

    body["spec"]["engine"]["image"] = NEW_IMAGE
    step(world, body)
    assert world.weights() == {"llama-3-70b-a": 100, "llama-3-70b-b": 0}  # no ready canary: no traffic to it
    settle(world)
    step(world, body)
    settle(world)
    step(world, body, after=timedelta(seconds=10))
    # Two replicas: one canary beside one stable is 50 % by replica ratio; the route makes it 10 %.
    assert world.weights() == {"llama-3-70b-a": 90, "llama-3-70b-b": 10}
    rollout = body["status"]["rollout"]
    assert (rollout["weight"], rollout["canaryReplicas"], rollout["stableReplicas"]) == (10, 1, 1)
    images = {d["spec"]["template"]["spec"]["containers"][0]["image"] for d in world.deployments.values()}
    assert images == {OLD_IMAGE, NEW_IMAGE}

    # Promotion: slot b becomes stable and takes every request, with no Service changing its pods.
    for after in (600, 700, 800):
        settle(world)
        step(world, body, after=timedelta(seconds=after))
    assert body["status"]["revisions"]["stableSlot"] == "b"
    assert world.weights() == {"llama-3-70b-a": 0, "llama-3-70b-b": 100}
    assert world.refused == 0


def test_a_rolled_back_canary_loses_its_weight_in_the_same_pass() -> None:
    body = routed_body(10)
    world = RoutedWorld()
    world.converge(body)
    settle(world)
    world.converge(body)
    body["spec"]["engine"]["image"] = NEW_IMAGE
    step(world, body)
    settle(world)
    step(world, body)
    assert world.weights()["llama-3-70b-b"] == 10
    body["spec"]["engine"]["image"] = OLD_IMAGE  # gpufleet rollback
    step(world, body)
    assert world.weights() == {"llama-3-70b-a": 100, "llama-3-70b-b": 0}


def test_a_route_edited_since_it_was_read_is_not_overwritten_and_is_written_on_the_next_pass() -> None:
    body = routed_body(10)
    world = RoutedWorld()
    world.converge(body)
    settle(world)
    plan = world.plan(body)
    world.route["metadata"]["resourceVersion"] = "99"  # a GitOps sync wrote it in between
    world.carry_out(plan, body)
    assert world.refused == 1
    assert world.weights() == {"llama-3-70b": 1}
    step(world, body)
    assert world.weights() == {"llama-3-70b-a": 100, "llama-3-70b-b": 0}


def test_unsetting_the_route_points_it_back_at_the_models_service_before_the_slot_services_go() -> None:
    body = routed_body(10)
    world = RoutedWorld()
    world.converge(body)
    settle(world)
    world.converge(body)
    assert world.weights() == {"llama-3-70b-a": 100, "llama-3-70b-b": 0}
    assert body["status"]["httpRoute"] == "chat"
    del body["spec"]["rollout"]["httpRoute"]

    # A route that cannot be read is not known to be released: the slot Services stay.
    unreadable = RoutedWorld(**{**world.__dict__, "route": world.route})
    unreadable.unreadable = True
    held = unreadable.plan(body)
    assert not [r for r in held.removals if r.kind == "Service"]
    assert held.status.status.http_route == "chat"

    first = step(world, body)
    # The rule goes back to the model's Service; the Services it named stay until that has landed.
    assert world.weights() == {"llama-3-70b": 1}
    assert not [r for r in first.removals if r.kind == "Service"]
    assert conditions(body)["TrafficRouted"] == ("False", "ReleasingHTTPRoute")
    second = step(world, body)
    assert {(r.kind, r.name) for r in second.removals} == {
        ("Service", "llama-3-70b-a"),
        ("Service", "llama-3-70b-b"),
    }
    assert "httpRoute" not in body["status"]
    assert "TrafficRouted" not in conditions(body)
    world.converge(body)
    assert world.weights() == {"llama-3-70b": 1}


def test_renaming_the_route_points_the_old_one_back_before_the_new_one_gets_any_weight() -> None:
    body = routed_body(10)
    world = RoutedWorld(others={"chat-v2": route(rule("llama-3-70b"), version="40")})
    world.converge(body)
    settle(world)
    world.converge(body)
    body["spec"]["engine"]["image"] = NEW_IMAGE
    for after in (0, 0, 10):
        settle(world)
        step(world, body, after=timedelta(seconds=after))
    assert world.weights() == {"llama-3-70b-a": 90, "llama-3-70b-b": 10}

    body["spec"]["rollout"]["httpRoute"]["name"] = "chat-v2"  # one edit, mid-canary
    first = step(world, body, after=timedelta(seconds=20))
    # Both routes split by weight at once would send the canary its share twice; the old one goes first.
    assert world.weights("chat") == {"llama-3-70b": 1}
    assert world.weights("chat-v2") == {"llama-3-70b": 1}
    assert conditions(body)["TrafficRouted"] == ("False", "ReleasingHTTPRoute")
    assert "now names chat-v2" in next(
        c["message"] for c in body["status"]["conditions"] if c["type"] == "TrafficRouted"
    )
    assert body["status"]["httpRoute"] == "chat"
    assert not [r for r in first.removals if r.kind == "Service"]
    assert body["status"]["rollout"]["weight"] == 50  # by replica ratio while no route carries it

    released = step(world, body, after=timedelta(seconds=21))
    assert not [r for r in released.removals if r.kind == "Service"]  # the new route needs them
    assert released.requeue_after == 0.0
    step(world, body, after=timedelta(seconds=22))
    step(world, body, after=timedelta(seconds=23))
    assert world.weights("chat-v2") == {"llama-3-70b-a": 90, "llama-3-70b-b": 10}
    assert world.weights("chat") == {"llama-3-70b": 1}
    assert body["status"]["httpRoute"] == "chat-v2"
    assert conditions(body)["TrafficRouted"] == ("True", "BackendWeights")
    assert world.read[-1] == "chat-v2"
    assert world.refused == 0


def test_the_route_left_is_read_by_what_this_operator_wrote_not_by_a_body_behind_it() -> None:
    body = {"spec": {"rollout": {"httpRoute": {"name": "chat-v2"}}}, "status": {"httpRoute": "chat-v2"}}
    assert route_name(body) == "chat-v2"
    assert route_name(body, {"httpRoute": "chat"}) == "chat"  # written since: chat is still to release
    assert route_name(body, {}) == "chat-v2"  # released: the new one
    assert route_name({"spec": {}, "status": {"httpRoute": "chat"}}) == "chat"
    assert route_name({"spec": {}}) == ""
