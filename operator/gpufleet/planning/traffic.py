"""Exact canary weights through a Gateway API HTTPRoute (spec.rollout.httpRoute).

Each slot gets a Service of its own, `<model>-a` and `<model>-b`, selecting the pods of the revision
the slot runs by their `gpufleet.io/revision-hash` label (a slot's revision changes only when a new
canary starts in it, while its weight is 0, so a Service never switches pods under traffic). The
user's HTTPRoute stays theirs: only the backendRefs of the rules that point at the model's Service, or
at a slot Service, are rewritten, to the two slot Services with the stable and canary weights; matches,
filters, hostnames and parents are left alone. Read first and written with its resourceVersion, so a
concurrent edit is refused (409) rather than lost, and the next pass writes again.

Never a weight on a Service without a ready pod: a gateway answers 503 for the share it routes to an
empty backend. While the stable slot has no ready pod carrying its revision label (pods from before
this label are being replaced), the rules point at the model's Service, which selects every pod, and
the weight is the replica ratio, as without a route.

Pure: no I/O.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpufleet.api.v1alpha1 import Slot
from gpufleet.planning.observe import ObservedPod
from gpufleet.planning.report import ConditionView
from gpufleet.planning.rollout import other_slot
from gpufleet.planning.workloads import (
    LABEL_REVISION_HASH,
    PORT_NAME,
    Owner,
    owned_metadata,
    selector_labels,
)

ROUTE_API_VERSION = "gateway.networking.k8s.io/v1"
ROUTE_KIND = "HTTPRoute"
TRAFFIC_ROUTED = "TrafficRouted"
SLOTS: tuple[Slot, Slot] = ("a", "b")
# A backendRef's fields the operator writes; the rest (filters) are carried over from the user's.
_REF_KEYS = ("group", "kind", "name", "namespace", "port", "weight")


def slot_service_name(model: str, slot: Slot) -> str:
    return f"{model}-{slot}"


@dataclass(frozen=True)
class RouteLookup:
    """spec.rollout.httpRoute as read: the object, None when it does not exist, or why it was not read."""

    name: str
    route: Mapping[str, Any] | None
    error: str = ""


@dataclass(frozen=True)
class TrafficPlan:
    services: tuple[dict[str, Any], ...]  # the slot Services to apply
    patch: dict[str, Any] | None  # merge patch of the HTTPRoute (with its resourceVersion); None: as wanted
    condition: ConditionView
    routed: bool  # the route carries the slot weights (else the rules point at the model's Service)


def slot_services(owner: Owner, port: int, hashes: Mapping[Slot, str]) -> tuple[dict[str, Any], ...]:
    """One Service per slot, selecting the model's pods of the revision the slot runs."""
    return tuple(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": owned_metadata(
                owner, slot_service_name(owner.name, slot), selector_labels(owner.name)
            ),
            "spec": {
                "type": "ClusterIP",
                "selector": {**selector_labels(owner.name), LABEL_REVISION_HASH: hashes[slot]},
                "ports": [{"name": PORT_NAME, "port": port, "targetPort": PORT_NAME}],
            },
        }
        for slot in SLOTS
    )


def ready_in_slot(pods: Sequence[ObservedPod], slot: Slot, revision_hash: str) -> int:
    """Ready pods the slot's Service selects: the slot's, carrying its revision's label."""
    return sum(
        1
        for p in pods
        if p.slot == slot and p.revision_hash == revision_hash and p.ready and not p.terminating
    )


def _backend(name: str, port: int, weight: int, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **copy.deepcopy(dict(extra)),
        "group": "",
        "kind": "Service",
        "name": name,
        "port": port,
        "weight": weight,
    }


def _ours(ref: Mapping[str, Any], names: set[str]) -> bool:
    return ref.get("group", "") == "" and ref.get("kind", "Service") == "Service" and ref.get("name") in names


def _rewrite(
    route: Mapping[str, Any], names: set[str], model: str, port: int, backends: Sequence[tuple[str, int]]
) -> dict[str, Any] | None:
    """Merge patch putting `backends` (Service name, weight) in place of the backendRefs in `names` of
    every rule that has one; None when the route is so already. A rule at the model's Service alone,
    as the user wrote it, counts as so when that is where it should point."""
    rules = list((route.get("spec") or {}).get("rules") or [])
    at_model = [(model, 1)] == list(backends)
    new_rules = []
    for rule in rules:
        refs = rule.get("backendRefs") or []
        mine = [ref for ref in refs if _ours(ref, names)]
        if not mine or (at_model and all(ref.get("name") == model for ref in mine)):
            new_rules.append(rule)
            continue
        extra = {k: v for k, v in mine[0].items() if k not in _REF_KEYS}
        others = [ref for ref in refs if not _ours(ref, names)]
        written = [_backend(name, port, weight, extra) for name, weight in backends]
        new_rules.append({**rule, "backendRefs": [*others, *written]})
    if new_rules == rules:
        return None
    version = (route.get("metadata") or {}).get("resourceVersion", "")
    return {"metadata": {"resourceVersion": version}, "spec": {"rules": new_rules}}


def _unrouted(services: tuple[dict[str, Any], ...], reason: str, message: str) -> TrafficPlan:
    """The route left as it is: the weight is the replica ratio, and the condition says why."""
    return TrafficPlan(services, None, ConditionView(TRAFFIC_ROUTED, False, reason, message), False)


def plan_traffic(
    owner: Owner,
    port: int,
    lookup: RouteLookup,
    hashes: Mapping[Slot, str],
    stable_slot: Slot,
    canary_weight: int,
    stable_ready: int,
) -> TrafficPlan:
    """The slot Services, and the route's backendRefs for `canary_weight` percent on the slot beside
    `stable_slot` (stable_ready: ready pods the stable slot's Service selects)."""
    services = slot_services(owner, port, hashes)
    where = f"HTTPRoute {owner.namespace}/{lookup.name}"
    model = owner.name
    if lookup.error:
        return _unrouted(services, "HTTPRouteUnreadable", f"{where} could not be read: {lookup.error}")
    if lookup.route is None:
        return _unrouted(
            services,
            "HTTPRouteNotFound",
            f"{where} does not exist (or the Gateway API CRDs are not installed): create it with a rule "
            f"whose backendRef is Service {model}, or unset spec.rollout.httpRoute; until then the "
            "weight is the share of ready replicas",
        )
    names = {model, *(slot_service_name(model, s) for s in SLOTS)}
    if not routable(lookup, model):
        return _unrouted(
            services,
            "NoBackendRef",
            f"{where} has no rule with a backendRef to Service {model} (or {model}-a, {model}-b): point "
            f"the rule that serves the model at Service {model}; until then the weight is the share of "
            "ready replicas",
        )
    routed = stable_ready > 0
    canary = other_slot(stable_slot)
    weights = {stable_slot: 100 - canary_weight, canary: canary_weight}
    slots = [(slot_service_name(model, s), weights[s]) for s in SLOTS] if routed else [(model, 1)]
    patch = _rewrite(lookup.route, names, model, port, slots)
    if routed:
        message = (
            f"{where}: {slot_service_name(model, stable_slot)} (stable) {100 - canary_weight}, "
            f"{slot_service_name(model, other_slot(stable_slot))} (canary) {canary_weight}"
        )
        condition = ConditionView(TRAFFIC_ROUTED, True, "BackendWeights", message)
    else:
        condition = ConditionView(
            TRAFFIC_ROUTED,
            False,
            "WaitingForLabelledPods",
            f"{where} points at Service {model} (every pod): no ready pod of the stable slot carries its "
            f"revision label yet, so {slot_service_name(model, stable_slot)} would have no endpoint",
        )
    return TrafficPlan(services, patch, condition, routed)


def routable(lookup: RouteLookup | None, model: str) -> bool:
    """Whether the route was read and has a rule whose backendRefs are the model's to write."""
    if lookup is None or lookup.error or lookup.route is None:
        return False
    names = {model, *(slot_service_name(model, s) for s in SLOTS)}
    rules = (lookup.route.get("spec") or {}).get("rules") or []
    return any(_ours(ref, names) for rule in rules for ref in rule.get("backendRefs") or [])


@dataclass(frozen=True)
class RouteRelease:
    patch: dict[str, Any] | None  # the rules back at the model's Service; None: nothing to write
    done: bool  # the route no longer names a slot Service (or is gone): the slot Services may go
    condition: ConditionView


def release_route(model: str, port: int, lookup: RouteLookup, successor: str | None = None) -> RouteRelease:
    """spec.rollout.httpRoute was unset, or renamed to `successor`: the route's rules go back to the
    model's Service before the slot Services are deleted (a gateway answers 500 for a rule left at a
    deleted Service) and before the successor gets any weight (two routes would split the traffic twice).
    A route that could not be read keeps the slot Services (unknown is not done)."""
    where = f"HTTPRoute {lookup.name}"
    why = (
        f"spec.rollout.httpRoute now names {successor}: {where} goes back to Service {model} before "
        f"{successor} gets the weights"
        if successor
        else f"spec.rollout.httpRoute is unset: {where} goes back to Service {model} before the slot "
        "Services are deleted"
    )
    if lookup.error:
        return RouteRelease(
            None,
            False,
            ConditionView(
                TRAFFIC_ROUTED,
                False,
                "HTTPRouteUnreadable",
                f"{where} could not be read to point it back at Service {model}: {lookup.error}",
            ),
        )
    slots = {slot_service_name(model, s) for s in SLOTS}
    rules = list(((lookup.route or {}).get("spec") or {}).get("rules") or [])
    if not any(_ours(ref, slots) for rule in rules for ref in rule.get("backendRefs") or []):
        return RouteRelease(None, True, ConditionView(TRAFFIC_ROUTED, False, "Released", where))
    return RouteRelease(
        _rewrite(lookup.route or {}, {model, *slots}, model, port, [(model, 1)]),
        False,
        ConditionView(
            TRAFFIC_ROUTED,
            False,
            "ReleasingHTTPRoute",
            why,
        ),
    )
