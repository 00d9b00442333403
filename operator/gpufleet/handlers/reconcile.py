"""One reconcile of one ModelDeployment: parse → observe → plan → apply → status.

Level-triggered: every call computes the whole desired state from the spec and
what it sees, so calling it twice, or after a restart, changes nothing more.
It writes only when something differs: a Deployment whose template hash and
generation match what gpufleet last applied is left alone, and status is
patched only when it changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from gpufleet.adapters.kube import KubeApi, with_deletions
from gpufleet.api.catalog import MIG_PROFILES
from gpufleet.api.v1alpha1 import API_VERSION, KIND, ModelDeploymentSpec
from gpufleet.api.validation import validate_manifest
from gpufleet.handlers.capacity import CapacityStore
from gpufleet.planning.cost import CostEstimate, ProductPrices, estimate, product_for
from gpufleet.planning.failover import (
    FailoverPlan,
    FailoverPolicy,
    FailoverState,
    PodView,
    plan_failover,
)
from gpufleet.planning.placement import CapacityType, PlacementGroup, plan_placement
from gpufleet.planning.status import (
    DEGRADED,
    SCALING_LIMITED,
    VALID,
    ObservedDeployment,
    ObservedPod,
    ReplicaDecision,
    StatusInput,
    compute_status,
    decide_replicas,
    unschedulable_pods,
)
from gpufleet.planning.timestamps import parse_kube_time
from gpufleet.planning.workloads import (
    ANNOTATION_TEMPLATE_HASH,
    LABEL_CAPACITY_TYPE,
    LABEL_ZONE,
    Owner,
    WorkloadOptions,
    desired_workloads,
    selector_string,
    template_hash,
)

log = logging.getLogger("gpufleet.reconcile")

Key = tuple[str, str]  # (namespace, name)


@dataclass
class Outcome:
    """What one reconcile did, for logs, metrics and tests."""

    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    drained: list[tuple[str, str]] = field(default_factory=list)  # (pod, why) deleted on a doomed node
    status_written: bool = False
    valid: bool = True
    requeue_after: float | None = None  # seconds until a drain deadline needs another look
    status: dict[str, Any] = field(default_factory=dict)  # the status computed (for metrics)
    unschedulable: int = 0


@dataclass(frozen=True)
class FailoverOptions:
    """Operator-wide knobs of the failover planner (GPUFLEET_* settings)."""

    max_surge: int = 4
    drain: timedelta = timedelta(seconds=60)
    unavailable_after: timedelta = timedelta(seconds=300)
    return_after: timedelta = timedelta(seconds=900)
    rebalance: bool = True  # a rebalance recommendation starts replacements (else only a warning does)


@dataclass
class AppliedCache:
    """What gpufleet last wrote per object: (hash, generation or resourceVersion).

    A live object whose hash matches but whose generation moved was changed by
    someone else, so it is applied again. Lost on restart, which costs one
    no-op apply per object.
    """

    objects: MutableMapping[Key, dict[tuple[str, str], tuple[str, str]]] = field(default_factory=dict)
    statuses: MutableMapping[Key, dict[str, Any]] = field(default_factory=dict)

    def of(self, key: Key) -> dict[tuple[str, str], tuple[str, str]]:
        return self.objects.setdefault(key, {})


def version_of(obj: Mapping[str, Any]) -> str:
    """What changes when someone changes the object: its generation, else its resourceVersion."""
    meta = obj.get("metadata", {})
    generation = meta.get("generation")
    return f"g{generation}" if generation is not None else f"rv{meta.get('resourceVersion', '')}"


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences", []))


def _autoscaling(body: Mapping[str, Any]) -> bool:
    return bool((body.get("spec") or {}).get("autoscaling", {}).get("enabled"))


def observe_pod(pod: Mapping[str, Any]) -> ObservedPod:
    meta, status = pod.get("metadata", {}), pod.get("status", {})
    labels = meta.get("labels", {})
    conditions = {c.get("type"): c for c in status.get("conditions", [])}
    ready = conditions.get("Ready", {}).get("status") == "True"
    scheduled = conditions.get("PodScheduled", {})
    unschedulable = scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
    capacity: CapacityType = "spot" if labels.get(LABEL_CAPACITY_TYPE) == "spot" else "on-demand"
    return ObservedPod(
        name=meta.get("name", ""),
        zone=labels.get(LABEL_ZONE, ""),
        capacity_type=capacity,
        ready=ready,
        terminating=meta.get("deletionTimestamp") is not None
        or status.get("phase") in ("Succeeded", "Failed"),
        unschedulable_since=_unschedulable_since(scheduled) if unschedulable else None,
        unschedulable_message=scheduled.get("message", "") if unschedulable else "",
        node=(pod.get("spec") or {}).get("nodeName") or "",
    )


def _unschedulable_since(scheduled: Mapping[str, Any]) -> datetime | None:
    since = scheduled.get("lastTransitionTime")
    return parse_kube_time(since) if since else None


def observe_deployment(deployment: Mapping[str, Any]) -> ObservedDeployment:
    meta, spec, status = deployment["metadata"], deployment.get("spec", {}), deployment.get("status", {})
    return ObservedDeployment(
        name=meta["name"],
        replicas=int(spec.get("replicas", 0)),
        updated_replicas=int(status.get("updatedReplicas", 0)),
        ready_replicas=int(status.get("readyReplicas", 0)),
        generation=int(meta.get("generation", 0)),
        observed_generation=int(status.get("observedGeneration", 0)),
    )


class Reconciler:
    """Reconciles ModelDeployments through a KubeApi; holds only caches that are safe to lose."""

    def __init__(
        self,
        kube: KubeApi,
        options: WorkloadOptions,
        clock: Callable[[], datetime],
        unschedulable_after: timedelta = timedelta(minutes=5),
        capacity: CapacityStore | None = None,
        failover: FailoverOptions = FailoverOptions(),
        prices: Mapping[str, ProductPrices] | None = None,
    ) -> None:
        self.kube = kube
        self.options = options
        self.clock = clock
        self.unschedulable_after = unschedulable_after
        self.capacity = capacity
        self.failover = failover
        # Read on every reconcile, so a price refresh (a new mapping assigned here) takes effect.
        self.prices: Mapping[str, ProductPrices] = prices or {}
        self.cache = AppliedCache()

    def event(self, body: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        try:
            self.kube.create_event(dict(body), kind, reason, message, self.clock())
        except Exception:  # an event lost is not worth failing a reconcile
            log.warning("could not post event %s for %s", reason, body["metadata"]["name"], exc_info=True)

    def reconcile(self, body: Mapping[str, Any]) -> Outcome:
        meta = body["metadata"]
        name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
        selector = selector_string(name)
        outcome = Outcome()

        # spec.replicas out of range is not an error here: the scale subresource can set
        # it past the bounds, and decide_replicas clamps it (reported as ScalingLimited).
        problems = [
            str(p)
            for p in validate_manifest({k: v for k, v in body.items() if k != "status"})
            if p.path != "spec.replicas"
        ]
        spec: ModelDeploymentSpec | None = None
        if not problems:
            try:
                spec = ModelDeploymentSpec.model_validate(body["spec"])
            except ValidationError as error:  # validate_manifest should have caught it; never act on it
                problems = [str(error)]

        owned_deployments = [
            d for d in self.kube.list("apps/v1", "Deployment", namespace, selector) if _owned_by(d, uid)
        ]
        if spec is None:
            # Never shrink or delete serving capacity because of input we cannot understand.
            outcome.valid = False
            self._observe_and_report(body, None, [], owned_deployments, problems, outcome)
            return outcome

        decision = decide_replicas(spec)
        observed = [observe_pod(p) for p in self.kube.list("v1", "Pod", namespace, selector)]
        plan = self._plan_capacity(body, spec, decision.desired, observed)
        # Drain before applying counts: a Deployment lowered first could remove a healthy pod instead.
        for pod_name, why in zip(plan.retire, plan.retire_reasons, strict=True):
            self.kube.delete("v1", "Pod", namespace, pod_name)
            outcome.drained.append((pod_name, why))
        for event in plan.events:
            self.event(body, event.type, event.reason, event.message)
        outcome.requeue_after = plan.requeue_after
        drained = set(plan.retire)
        observed = [replace(p, terminating=True) if p.name in drained else p for p in observed]
        groups = list(plan.groups)
        desired = desired_workloads(Owner(name, namespace, uid), spec, groups, self.options)
        live_by_name = {d["metadata"]["name"]: d for d in owned_deployments}

        applied = self.cache.of((namespace, name))
        for deployment in desired.deployments:
            self._ensure(body, applied, deployment, live_by_name.get(deployment["metadata"]["name"]), outcome)
        for obj in (desired.service, desired.pod_disruption_budget):
            self._ensure(body, applied, obj, None, outcome)

        wanted = {d["metadata"]["name"] for d in desired.deployments}
        for live_name, live in sorted(live_by_name.items()):
            if live_name in wanted:
                continue
            self.kube.delete("apps/v1", "Deployment", namespace, live_name)
            applied.pop(("Deployment", live_name), None)
            outcome.deleted.append(live_name)
            replicas = live.get("spec", {}).get("replicas", 0)
            self.event(
                body,
                "Normal",
                "RemovedGroup",
                f"Deleted Deployment {live_name} ({replicas} replicas): no longer in the placement plan",
            )

        current = [d for d in owned_deployments if d["metadata"]["name"] in wanted]
        cost = self._cost(spec, [p for p in observed if not p.terminating])
        self._report(body, decision, groups, current, [], outcome, observed, plan, cost)
        return outcome

    def _plan_capacity(
        self,
        body: Mapping[str, Any],
        spec: ModelDeploymentSpec,
        desired: int,
        observed: Sequence[ObservedPod],
    ) -> FailoverPlan:
        meta = body["metadata"]
        now = self.clock()
        if self.capacity is None:
            # Spot failover off (GPUFLEET_SPOT_FAILOVER=false): plain placement, no drains, no state.
            groups = tuple(plan_placement(desired, spec.capacity))
            return FailoverPlan(groups, groups, (), (), (), FailoverState(), (), (), None)
        # The status this operator last wrote is newer than a body the watch has not caught up with.
        written = self.cache.statuses.get((meta["namespace"], meta["name"]), {})
        state = FailoverState.from_json(written.get("spot", (body.get("status") or {}).get("spot")))
        live = [p for p in observed if not p.terminating]
        views = [
            PodView(p.name, p.zone, p.capacity_type, p.node, p.ready, p.unschedulable_since) for p in live
        ]
        cloud, node = self.capacity.dooms({p.node for p in live if p.node}, spec.capacity.zones)
        if not self.failover.rebalance:
            cloud = [d for d in cloud if d.kind != "rebalance"]
            node = [d for d in node if d.kind != "rebalance"]
        lost = self.capacity.lost_zones(now)
        _, book = product_for(spec.accelerator.gpu_product, self.prices)
        policy = FailoverPolicy(
            capacity=spec.capacity,
            max_surge=self.failover.max_surge,
            drain=self.failover.drain,
            unavailable_after=self.failover.unavailable_after,
            return_after=self.failover.return_after,
            spot_prices=book.spot_per_gpu_by_zone() if book else {},
        )
        return plan_failover(
            policy, desired, views, state, now, cloud_dooms=cloud, node_dooms=node, lost_zones=lost
        )

    def _cost(self, spec: ModelDeploymentSpec, live: Sequence[ObservedPod]) -> CostEstimate:
        product, book = product_for(spec.accelerator.gpu_product, self.prices)
        gpus: float = spec.accelerator.tensor_parallel_size
        profile = spec.accelerator.mig_profile
        if profile:
            slices = MIG_PROFILES.get(product or "", {}).get(profile)
            gpus = 1 / slices if slices else 1.0
        return estimate([(p.zone, p.capacity_type) for p in live], gpus, product, book)

    def _observe_and_report(
        self,
        body: Mapping[str, Any],
        decision: ReplicaDecision | None,
        groups: Sequence[PlacementGroup],
        deployments: Sequence[Mapping[str, Any]],
        problems: Sequence[str],
        outcome: Outcome,
    ) -> None:
        """Status for a spec that cannot be acted on: workloads, spot state and cost are left alone."""
        meta = body["metadata"]
        pods = self.kube.list("v1", "Pod", meta["namespace"], selector_string(meta["name"]))
        self._report(body, decision, groups, deployments, problems, outcome, [observe_pod(p) for p in pods])

    def _report(
        self,
        body: Mapping[str, Any],
        decision: ReplicaDecision | None,
        groups: Sequence[PlacementGroup],
        deployments: Sequence[Mapping[str, Any]],
        problems: Sequence[str],
        outcome: Outcome,
        pods: Sequence[ObservedPod],
        plan: FailoverPlan | None = None,
        cost: CostEstimate | None = None,
    ) -> None:
        meta = body["metadata"]
        selector = selector_string(meta["name"])
        previous = body.get("status") or {}
        now = self.clock()
        outcome.unschedulable = len(unschedulable_pods(pods, now, self.unschedulable_after))
        inp = StatusInput(
            generation=int(meta.get("generation", 0)),
            desired=decision,
            groups=groups,
            pods=pods,
            deployments=[observe_deployment(d) for d in deployments],
            selector=selector,
            problems=problems,
            previous_conditions=previous.get("conditions", []),
            unschedulable_after=self.unschedulable_after,
            previous_status=previous,
            autoscaler=previous.get("autoscaler") if decision is not None and _autoscaling(body) else None,
            capacity_conditions=[(c.type, c.ok, c.reason, c.message) for c in plan.conditions]
            if plan
            else (),
            spot=plan.state.to_json() if plan else None,
            cost=cost.to_json() if cost else None,
        )
        self._write_status(body, inp, outcome)

    def _ensure(
        self,
        owner_body: Mapping[str, Any],
        applied: dict[tuple[str, str], tuple[str, str]],
        desired: dict[str, Any],
        live: Mapping[str, Any] | None,
        outcome: Outcome,
    ) -> None:
        """Apply `desired` unless the live object is exactly what gpufleet last applied."""
        meta = desired["metadata"]
        annotations = meta.setdefault("annotations", {})
        if ANNOTATION_TEMPLATE_HASH not in annotations:
            annotations[ANNOTATION_TEMPLATE_HASH] = template_hash(desired)
        digest = annotations[ANNOTATION_TEMPLATE_HASH]
        key = (desired["kind"], meta["name"])
        remembered = applied.get(key)
        live_digest = (live or {}).get("metadata", {}).get("annotations", {}).get(ANNOTATION_TEMPLATE_HASH)
        if live is not None and remembered is not None:
            if live_digest == digest and remembered == (digest, version_of(live)):
                return
        elif (
            live is None
            and remembered is not None
            and desired["kind"] != "Deployment"
            and remembered[0] == digest
        ):
            # Services and PDBs are not listed on every reconcile: their watch events
            # invalidate this cache (see invalidate), which makes the next pass re-apply.
            return
        result = self.kube.apply(desired)
        applied[key] = (digest, version_of(result))
        outcome.applied.append(f"{desired['kind']}/{meta['name']}")
        if desired["kind"] != "Deployment":
            return
        replicas = desired["spec"]["replicas"]
        if live is None:
            if remembered is None or remembered[0] != digest:
                reason, text = "CreatedGroup", f"Applied Deployment {meta['name']} with {replicas} replicas"
            else:
                reason, text = (
                    "RestoredGroup",
                    f"Recreated Deployment {meta['name']}: it was deleted outside gpufleet",
                )
        elif live_digest == digest:
            if remembered is None:
                return  # first look after a restart: re-applied quietly, nothing is known to have drifted
            reason, text = (
                "RevertedDrift",
                f"Restored Deployment {meta['name']}: it was changed outside gpufleet",
            )
        elif live.get("spec", {}).get("replicas") != replicas:
            reason, text = (
                "ScaledGroup",
                f"Scaled Deployment {meta['name']} from {live.get('spec', {}).get('replicas')} to {replicas}",
            )
        else:
            reason, text = "UpdatedGroup", f"Updated Deployment {meta['name']} (pod template changed)"
        self.event(owner_body, "Normal", reason, text)

    def forget(self, key: Key) -> None:
        """Drop everything cached about a deleted ModelDeployment."""
        self.cache.statuses.pop(key, None)
        self.cache.objects.pop(key, None)

    def invalidate(self, key: Key, kind: str, name: str) -> None:
        """An owned object changed outside a reconcile: re-apply it on the next pass."""
        self.cache.of(key).pop((kind, name), None)

    def _write_status(self, body: Mapping[str, Any], inp: StatusInput, outcome: Outcome) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        status = compute_status(inp, self.clock())
        outcome.status = status

        # status.autoscaler is the autoscaler's to write; a merge patch without it leaves it alone,
        # as it leaves spot and cost alone when they were not computed (an invalid spec).
        def ours(stored: Mapping[str, Any] | None) -> dict[str, Any]:
            return {
                k: v
                for k, v in (stored or {}).items()
                if k != "autoscaler" and (k in status or k not in ("spot", "cost"))
            }

        current, cached = ours(body.get("status")), self.cache.statuses.get(key)
        if status in (current, cached):
            return
        # Members that went away (spot.fallbackSince once the fallback ends) are deleted, from what
        # the watch shows and from what this operator last wrote, which the watch may not show yet.
        patch = with_deletions(status, current, ours(cached))
        self.kube.patch_status(API_VERSION, KIND, meta["namespace"], meta["name"], patch)
        self.cache.statuses[key] = status
        outcome.status_written = True
        self._condition_events(body, current, status)

    def _condition_events(
        self, body: Mapping[str, Any], old: Mapping[str, Any], new: Mapping[str, Any]
    ) -> None:
        before = {c["type"]: c for c in old.get("conditions", [])}
        for condition in new["conditions"]:
            previous = before.get(condition["type"], {})
            if (
                previous.get("status") == condition["status"]
                and previous.get("reason") == condition["reason"]
            ):
                continue
            if condition["type"] == VALID and condition["status"] == "False":
                self.event(
                    body, "Warning", "InvalidSpec", f"Workloads left unchanged: {condition['message']}"
                )
            elif condition["type"] in (SCALING_LIMITED, DEGRADED) and condition["status"] == "True":
                self.event(body, "Warning", condition["reason"], condition["message"])
