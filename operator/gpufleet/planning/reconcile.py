"""One reconcile of one ModelDeployment as a plan: what is observed → everything to do, in order.

`plan_reconcile()` is pure and is the specification of the reconcile; the
runtime lists the model's pods and Deployments, calls it with the clock read
once, and executes the plan in this order:

1. **Drain** the pods on doomed nodes that the failover planner retires
   (before any count is lowered: a lowered Deployment could remove a healthy
   pod instead), then post the failover Events. A serving pod is evicted, so
   the model's PDB holds; when the PDB refuses, its Deployment is not applied
   in this pass (its lowered count would remove another pod instead) and the
   drain is retried, except at the deadline, when the pod is deleted anyway
   because the cloud takes the node.
2. **Apply** the desired Deployments (one per zone × capacity type), the
   Service and the PDB, each only when the live object is not exactly what
   gpufleet last applied. A Service or PDB of the model's name that exists and
   is not owned by it is never applied over: Degraded=True (ObjectConflict)
   names it. The Event says why: CreatedGroup, RestoredGroup
   (deleted outside gpufleet), RevertedDrift (changed outside gpufleet),
   ScaledGroup or UpdatedGroup; none for the first look after a restart,
   when nothing is known to have drifted.
3. **Remove** owned Deployments no longer in the placement (RemovedGroup).
   Deployments that carry our label but another owner are never touched.
4. **Write status** when it differs from what is stored and from what this
   operator last wrote (the watch may lag), deleting members that went away;
   then post Warnings for conditions that turned bad (InvalidSpec,
   ScalingLimited, Degraded, CredentialsReady=False: SecretNotFound or
   SecretKeyMissing, from the credentials Secret the runtime looked up).

A spec that does not validate is never acted on: no apply, no delete, no
drain; only status says why (Valid=False), and spot state and cost are left as
they were. Level-triggered: a plan computed again after a restart, or twice,
asks for nothing more than the first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from gpufleet.api.v1alpha1 import (
    CostStatus,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    RevisionsStatus,
    RolloutStatus,
    Slot,
    SpotStatus,
    StandbyStatus,
)
from gpufleet.api.validation import validate_manifest
from gpufleet.planning.cost import ProductPrices, estimate_for, product_for
from gpufleet.planning.credentials import (
    CREDENTIALS_READY,
    CredentialsVerdict,
    SecretLookup,
    credentials_condition,
)
from gpufleet.planning.failover import (
    SPOT_INTERRUPTED,
    ZONE_DEGRADED,
    Doom,
    FailoverPlan,
    FailoverPolicy,
    FailoverSettings,
    FailoverState,
    PodView,
    plan_failover,
)
from gpufleet.planning.merge_patch import with_deletions
from gpufleet.planning.observe import (
    Key,
    ObservedPod,
    observe_deployment,
    observe_pod,
    owned_by,
    stored_status,
    version_of,
)
from gpufleet.planning.placement import plan_placement
from gpufleet.planning.report import ConditionView, EventView
from gpufleet.planning.revisions import (
    ObservedRevision,
    RevisionPlan,
    RevisionWrite,
    observe_revisions,
    plan_revisions,
    pod_label_hash,
    rolled_out,
    serving_template,
    spec_of_revision,
    summary_of,
)
from gpufleet.planning.rollout import (
    RolloutInput,
    RolloutPlan,
    Standby,
    other_slot,
    plan_rollout,
    promote_value,
    surge_replicas,
)
from gpufleet.planning.status import (
    DEGRADED,
    SCALING_LIMITED,
    VALID,
    ReplicaDecision,
    StatusInput,
    compute_status,
    decide_replicas,
    unschedulable_pods,
)
from gpufleet.planning.traffic import (
    SLOTS,
    TRAFFIC_ROUTED,
    RouteLookup,
    RouteRelease,
    TrafficPlan,
    plan_traffic,
    ready_in_slot,
    release_route,
    routable,
    slot_service_name,
)
from gpufleet.planning.workloads import (
    ANNOTATION_TEMPLATE_HASH,
    LABEL_REVISION_HASH,
    LABEL_SLOT,
    Owner,
    SlotWorkload,
    WorkloadOptions,
    deployment_name,
    desired_workloads,
    selector_string,
    source_uris,
    template_hash,
)
from gpufleet.planning.zone_loss import NodeLoss, lost_zones

# A named HTTPRoute is read again this often: its weights are set back if someone changed them.
ROUTE_RECHECK_SECONDS = 15.0
# An object of our name that belongs to someone else is looked at again this often, until it is gone.
CONFLICT_RECHECK_SECONDS = 10.0

# status members other loops write (runtime.autoscaler, runtime.analysis)
_OTHER_WRITERS = ("autoscaler", "analysis", "tokenCost")
# status members that only a valid spec's plan computes; an invalid spec leaves them as stored.
_COMPUTED_ONLY = ("spot", "cost", "revisions", "rollout", "httpRoute")

# (kind, name) of an applied object → (template hash, generation or resourceVersion) after the apply
AppliedVersions = Mapping[tuple[str, str], tuple[str, str]]


@dataclass(frozen=True)
class ReconcilePolicy:
    """Operator-wide settings of the reconcile (built by gpufleet.config, where the defaults are)."""

    workloads: WorkloadOptions
    unschedulable_after: timedelta  # pending this long → Degraded
    failover: FailoverSettings | None  # None: spot failover off, plain placement, no drains


@dataclass(frozen=True)
class CapacitySnapshot:
    """What the operator knows of nodes and cloud events, for all models (the runtime's store)."""

    cloud_dooms: tuple[Doom, ...] = ()  # from the interruption queue, by node
    node_dooms: tuple[Doom, ...] = ()  # from node taints and readiness, as read now
    losses: tuple[NodeLoss, ...] = ()  # nodes gone NotReady or away, recently
    ready_zones: frozenset[str] = frozenset()  # zones with a Ready node
    instance_types: Mapping[str, str] = field(default_factory=dict)  # node → instance type, when labelled


@dataclass(frozen=True)
class Remembered:
    """What this operator wrote last for the model; safe to lose (a restart costs a no-op apply)."""

    applied: AppliedVersions = field(default_factory=dict)
    status: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ObjectRef:
    api_version: str
    kind: str
    name: str


def names_to_look_up(
    body: Mapping[str, Any], applied: AppliedVersions, foreign: Iterable[ObjectRef] = ()
) -> tuple[ObjectRef, ...]:
    """Objects the plan would write under the ModelDeployment's own name (its Service and PDB) that this
    operator does not remember writing: someone else may already have one of that name (a Service
    `postgres` in the namespace of a ModelDeployment `postgres`), and applying over it would take it,
    and the garbage collector would delete it with the ModelDeployment. Looked up once; none in steady
    state. Plus `foreign`: objects found to belong to someone else when this operator was about to
    create them (Deployments, see Apply.check_owner), looked up on every pass until they are gone."""
    name = body["metadata"]["name"]
    wanted: tuple[ObjectRef, ...] = (
        ObjectRef("v1", "Service", name),
        ObjectRef("policy/v1", "PodDisruptionBudget", name),
    )
    if route_name(body):
        wanted += tuple(ObjectRef("v1", "Service", slot_service_name(name, slot)) for slot in SLOTS)
    first = tuple(ref for ref in wanted if (ref.kind, ref.name) not in applied)
    return first + tuple(ref for ref in foreign if ref not in first)


@dataclass(frozen=True)
class Observed:
    body: Mapping[str, Any]  # the ModelDeployment as the watch delivered it
    pods: Sequence[Mapping[str, Any]]  # listed by the model's selector
    deployments: Sequence[Mapping[str, Any]]  # listed by the model's selector; only owned ones count
    revisions: Sequence[Mapping[str, Any]] = ()  # ControllerRevisions listed by the model's selector
    capacity: CapacitySnapshot = field(default_factory=CapacitySnapshot)
    prices: Mapping[str, ProductPrices] = field(default_factory=dict)
    remembered: Remembered = field(default_factory=Remembered)
    # names_to_look_up's objects as the API server has them: (kind, name) → object, None when absent.
    looked_up: Mapping[tuple[str, str], Mapping[str, Any] | None] = field(default_factory=dict)
    # spec.model.credentialsSecret as read (key names only); None when there is none or it was not read.
    secret: SecretLookup | None = None
    # spec.rollout.httpRoute as read; None when there is none.
    route: RouteLookup | None = None


def route_name(body: Mapping[str, Any], written_status: Mapping[str, Any] | None = None) -> str:
    """The HTTPRoute for the runtime to read ("" when none): status.httpRoute while it names a route that
    spec.rollout.httpRoute no longer names (unset, or renamed), so that route is pointed back at the
    model's Service first; else spec.rollout.httpRoute.name. `written_status`: the status this operator
    wrote last, newer than a body the watch has not caught up with."""
    wanted = _spec_route(body)
    status = written_status if written_status is not None else body.get("status") or {}
    held = status.get("httpRoute")
    if isinstance(held, str) and held and held != wanted:
        return held
    return wanted


def _spec_route(body: Mapping[str, Any]) -> str:
    rollout = (body.get("spec") or {}).get("rollout") or {}
    ref = rollout.get("httpRoute") if isinstance(rollout, Mapping) else None
    name = ref.get("name") if isinstance(ref, Mapping) else None
    return name if isinstance(name, str) else ""


@dataclass(frozen=True)
class Drain:
    pod: str
    reason: str  # replaced, not-ready or deadline (gpufleet_replacements_total)
    evict: bool  # it serves: through the eviction API, so the PDB holds; else deleted
    deployment: str  # the Deployment it belongs to, whose count this plan lowers


@dataclass(frozen=True)
class Apply:
    obj: dict[str, Any]
    template_hash: str
    event: EventView | None  # posted once applied
    # No object of ours by that name is known: the runtime looks it up first and applies only when
    # there is none or it is ours (a user's Deployment of that name is never taken over).
    check_owner: bool = False


@dataclass(frozen=True)
class Removal:
    api_version: str
    kind: str
    name: str
    event: EventView | None


@dataclass(frozen=True)
class StatusWrite:
    status: ModelDeploymentStatus  # computed, written or not (for the operator's metrics)
    stored_form: dict[str, Any]  # the same as the API server stores it; remembered once written
    patch: dict[str, Any] | None  # merge patch of .status; None: already stored
    events: tuple[EventView, ...]  # posted once the status is written
    unschedulable: int  # pods stuck past unschedulableAfter


@dataclass(frozen=True)
class RouteWrite:
    name: str  # the HTTPRoute
    patch: dict[str, Any]  # merge patch carrying the resourceVersion read: refused (409) if stale


@dataclass(frozen=True)
class ReconcilePlan:
    key: Key
    valid: bool
    status: StatusWrite
    drains: tuple[Drain, ...] = ()
    events: tuple[EventView, ...] = ()  # posted after the drains
    applies: tuple[Apply, ...] = ()
    removals: tuple[Removal, ...] = ()
    requeue_after: float | None = None  # seconds until a kept doomed pod must be drained
    refused_drains: tuple[Drain, ...] = ()  # set by the runtime: evictions the PDB refused this pass
    route: RouteWrite | None = None  # backend weights for spec.rollout.httpRoute, before the applies
    slo_ttft_seconds: float | None = None  # spec.slo.ttftP95Seconds, for the operator's metrics


def spec_problems(body: Mapping[str, Any]) -> tuple[ModelDeploymentSpec | None, list[str]]:
    """The spec, or why it cannot be acted on.

    spec.replicas out of range is not a problem here: the scale subresource can set it past the
    bounds, and decide_replicas clamps it (reported as ScalingLimited).
    """
    problems = [
        str(p)
        for p in validate_manifest({k: v for k, v in body.items() if k != "status"})
        if p.path != "spec.replicas"
    ]
    if problems:
        return None, problems
    try:
        return ModelDeploymentSpec.model_validate(body["spec"]), []
    except ValidationError as error:  # validate_manifest should have caught it; never act on it
        return None, [str(error)]


def plan_reconcile(observed: Observed, policy: ReconcilePolicy, now: datetime) -> ReconcilePlan:
    body = observed.body
    meta = body["metadata"]
    name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
    owned = [d for d in observed.deployments if owned_by(d, uid)]
    pods = [observe_pod(p) for p in observed.pods]
    previous = stored_status(body.get("status"))
    spec, problems = spec_problems(body)
    if spec is None:
        # Never shrink or delete serving capacity because of input we cannot understand.
        inp = _status_input(body, previous, policy, pods, owned, problems=problems)
        return ReconcilePlan((namespace, name), False, _status_write(inp, observed, now))

    decision = decide_replicas(spec)
    capacity = _plan_capacity(observed, spec, decision.desired, pods, previous.spot, policy.failover, now)
    drained = set(capacity.retire)
    group_of = {p.name: (p.zone, p.capacity_type, p.slot) for p in pods}
    pods = [replace(p, terminating=True) if p.name in drained else p for p in pods]
    owner = Owner(name, namespace, uid)
    live_by_name = {d["metadata"]["name"]: d for d in owned}
    history = _revision_history(observed, owner, spec, previous)
    leaving = _route_left(observed)
    routed_before = (
        spec.rollout.http_route is not None
        and not leaving
        and _route_carries(
            _route_read(observed, spec.rollout.http_route.name), observed, history, pods, owned
        )
    )
    rollout = _plan_rollout(observed, spec, previous, history, capacity, pods, owned, now, routed_before)
    label_all = spec.rollout.http_route is not None
    desired = desired_workloads(
        owner,
        spec,
        capacity.groups,
        policy.workloads,
        _slot_workloads(spec, history, rollout, owned, label_all),
    )
    # A route left (unset or renamed) is pointed back at the model's Service before any other is written.
    traffic = None if leaving else _plan_traffic(observed, spec, owner, policy, history, rollout, pods)
    release = _route_to_release(observed, spec, leaving, policy.workloads.port)
    releasing = release is not None and not release.done
    route_patch = traffic.patch if traffic else release.patch if release else None
    route_condition = traffic.condition if traffic else release.condition if releasing and release else None
    applied = observed.remembered.applied
    applies: list[Apply | None] = []
    conflicts = []
    for obj in desired.deployments:
        deployment = obj["metadata"]["name"]
        existing = observed.looked_up.get(("Deployment", deployment))
        if existing is not None and not owned_by(existing, uid):
            conflicts.append(_conflict("Deployment", namespace, deployment, existing))
            continue
        applies.append(_apply(obj, live_by_name.get(deployment), applied.get(("Deployment", deployment))))
    for obj in (desired.service, desired.pod_disruption_budget, *(traffic.services if traffic else ())):
        existing = observed.looked_up.get((obj["kind"], obj["metadata"]["name"]))
        if existing is not None and not owned_by(existing, uid):
            # Never taken over: not applied, not deleted, reported until it is renamed or removed.
            conflicts.append(_conflict(obj["kind"], namespace, obj["metadata"]["name"], existing))
            continue
        applies.append(_apply(obj, None, applied.get((obj["kind"], obj["metadata"]["name"]))))
    wanted = {d["metadata"]["name"] for d in desired.deployments}
    removals = [
        Removal(
            "apps/v1",
            "Deployment",
            live_name,
            EventView(
                "Normal",
                "RemovedGroup",
                f"Deleted Deployment {live_name} ({live.get('spec', {}).get('replicas', 0)} replicas): "
                "no longer in the placement plan",
            ),
        )
        for live_name, live in sorted(live_by_name.items())
        if live_name not in wanted
    ]
    if spec.rollout.http_route is None and not releasing:
        # No route, or one released: the slot Services go (those this operator remembers applying, or
        # both once a route recorded in status is released). A renamed route keeps them for the next.
        removals += [
            Removal("v1", "Service", slot_service_name(name, slot), None)
            for slot in SLOTS
            if release is not None or ("Service", slot_service_name(name, slot)) in applied
        ]
    revisions = _revisions_status(history, rollout, desired.deployments, live_by_name, spec, observed.prices)
    revision_writes = [_revision_apply(write, revisions) for write in revisions.plan.writes]
    removals += [Removal("apps/v1", "ControllerRevision", gone, None) for gone in revisions.plan.deletions]
    live_pods = [p for p in pods if not p.terminating]
    cost = estimate_for(spec, [(p.zone, p.capacity_type) for p in live_pods], observed.prices)
    inp = _status_input(
        body,
        previous,
        policy,
        pods,
        [d for d in owned if d["metadata"]["name"] in wanted],
        decision=decision,
        autoscaled=spec.autoscaling.enabled,
        capacity=capacity,
        cost=cost.to_status(),
        conflicts=conflicts,
        extra_conditions=(route_condition,) if route_condition else (),
        credentials=credentials_condition(spec.model.credentials_secret, source_uris(spec), observed.secret),
        revisions=revisions.status,
        rollout=rollout.status,
        http_route=_spec_route(body) if traffic is not None else leaving if releasing else None,
    )
    requeue_after = _earliest(
        capacity.requeue_after,
        rollout.requeue_after,
        # The route is the user's and not watched: a GitOps sync that sets its weights back is seen here.
        ROUTE_RECHECK_SECONDS if traffic is not None or releasing else None,
        # The route left is released: the one spec.rollout.httpRoute names now is taken at once.
        0.0 if leaving and not releasing and spec.rollout.http_route is not None else None,
    )
    return ReconcilePlan(
        (namespace, name),
        True,
        _status_write(inp, observed, now, rollout.events),
        drains=tuple(
            Drain(pod, why, evict, deployment_name(name, *group_of[pod]))
            for pod, why, evict in zip(capacity.retire, capacity.retire_reasons, capacity.evict, strict=True)
        ),
        events=capacity.events,
        # The history first: it names the template before any pod of it starts.
        applies=(*revision_writes, *(a for a in applies if a is not None)),
        removals=tuple(removals),
        route=RouteWrite(leaving or _spec_route(body), route_patch) if route_patch else None,
        slo_ttft_seconds=spec.slo.ttft_p95_seconds if spec.slo else None,
        # Nothing of ours signals that a foreign object went away: look again soon, not at the resync.
        requeue_after=min(requeue_after or CONFLICT_RECHECK_SECONDS, CONFLICT_RECHECK_SECONDS)
        if conflicts
        else requeue_after,
    )


def _earliest(*delays: float | None) -> float | None:
    return min((d for d in delays if d is not None), default=None)


def _plan_capacity(
    observed: Observed,
    spec: ModelDeploymentSpec,
    desired: int,
    pods: Sequence[ObservedPod],
    stored: SpotStatus | None,
    settings: FailoverSettings | None,
    now: datetime,
) -> FailoverPlan:
    if settings is None:
        groups = tuple(plan_placement(desired, spec.capacity))
        return FailoverPlan(groups, groups, (), (), (), (), FailoverState(), (), (), None)
    # The status this operator last wrote is newer than a body the watch has not caught up with.
    written = observed.remembered.status or {}
    state = (
        FailoverState.from_json(written["spot"]) if "spot" in written else FailoverState.from_status(stored)
    )
    live = [p for p in pods if not p.terminating]
    views = [PodView(p.name, p.zone, p.capacity_type, p.node, p.ready, p.unschedulable_since) for p in live]
    snapshot = observed.capacity
    ours = {p.node for p in live if p.node}
    cloud, node = dooms_for(snapshot, ours, spec.capacity.zones)
    pools = frozenset(snapshot.instance_types[n] for n in ours if snapshot.instance_types.get(n))
    lost = lost_zones(snapshot.losses, snapshot.ready_zones, now, settings.zone_loss_window)
    _, book = product_for(spec.accelerator.gpu_product, observed.prices)
    policy = FailoverPolicy(
        capacity=spec.capacity,
        settings=settings,
        spot_prices=book.spot_per_gpu_by_zone() if book else {},
    )
    return plan_failover(
        policy, desired, views, state, now, cloud_dooms=cloud, node_dooms=node, lost_zones=lost, pools=pools
    )


def dooms_for(
    snapshot: CapacitySnapshot, nodes: Iterable[str], zones: Iterable[str]
) -> tuple[list[Doom], list[Doom]]:
    """(cloud, node) dooms that concern a model: its own nodes' signals move its replicas, and signals
    elsewhere in its zones may cool its pools down (the failover planner decides which do)."""
    on, within = set(nodes), set(zones)
    cloud = [d for d in snapshot.cloud_dooms if d.node in on or d.zone in within]
    node = [d for d in snapshot.node_dooms if d.node in on or d.zone in within]
    return cloud, node


def _status_input(
    body: Mapping[str, Any],
    previous: ModelDeploymentStatus,
    policy: ReconcilePolicy,
    pods: Sequence[ObservedPod],
    deployments: Sequence[Mapping[str, Any]],
    *,
    problems: Sequence[str] = (),
    decision: ReplicaDecision | None = None,
    autoscaled: bool = False,
    capacity: FailoverPlan | None = None,
    cost: CostStatus | None = None,
    conflicts: Sequence[str] = (),
    credentials: CredentialsVerdict | None = None,
    revisions: RevisionsStatus | None = None,
    rollout: RolloutStatus | None = None,
    extra_conditions: Sequence[ConditionView] = (),
    http_route: str | None = None,
) -> StatusInput:
    meta = body["metadata"]
    return StatusInput(
        generation=int(meta.get("generation", 0)),
        desired=decision,
        groups=capacity.groups if capacity else (),
        pods=pods,
        deployments=[observe_deployment(d) for d in deployments],
        selector=selector_string(meta["name"]),
        problems=problems,
        previous=previous,
        unschedulable_after=policy.unschedulable_after,
        autoscaler=previous.autoscaler if autoscaled else None,
        capacity_conditions=(*(capacity.conditions if capacity else ()), *extra_conditions),
        spot=capacity.state.to_status() if capacity else None,
        cost=cost,
        conflicts=conflicts,
        credentials=credentials,
        revisions=revisions,
        rollout=rollout,
        http_route=http_route,
    )


def _status_write(
    inp: StatusInput, observed: Observed, now: datetime, transitions: Sequence[EventView] = ()
) -> StatusWrite:
    """`transitions`: Events of state that only status records (the rollout's steps), posted with the
    status write that records them, so a plan computed again before it lands does not post them twice."""
    status = compute_status(inp, now)
    new = status.to_json()
    unschedulable = len(unschedulable_pods(inp.pods, now, inp.unschedulable_after))

    # status.autoscaler and status.analysis are the autoscaler's and the analysis loop's to write; a
    # merge patch without them leaves them alone,
    # as it leaves spot, cost, revisions and the rollout alone when they were not computed (an invalid
    # spec). A valid spec's plan without a rollout ends it: status.rollout is then deleted.
    computed_only = ("spot", "cost", "revisions") if inp.desired is not None else _COMPUTED_ONLY

    def ours(stored: Mapping[str, Any] | None) -> dict[str, Any]:
        return {
            k: v
            for k, v in (stored or {}).items()
            if k not in _OTHER_WRITERS and (k in new or k not in computed_only)
        }

    stored = observed.body.get("status") or {}
    current, cached = ours(stored), observed.remembered.status
    patch: dict[str, Any] | None = None
    events: tuple[EventView, ...] = ()
    if new not in (current, cached):
        # Members that went away (spot.fallbackSince once the fallback ends) are deleted, from what
        # the watch shows and from what this operator last wrote, which the watch may not show yet.
        patch = with_deletions(new, current, ours(cached))
        events = (*transitions, *_condition_events(inp.previous, status))
    # What the API server holds once the patch lands: with an invalid spec, the members it leaves
    # alone too, so the next valid plan resumes a rollout (or spot state) instead of starting over.
    kept = {
        k: (cached if cached and k in cached else stored)[k]
        for k in computed_only
        if k not in new and (k in stored or (cached and k in cached))
    }
    return StatusWrite(status, {**new, **kept}, patch, events, unschedulable)


def _condition_events(old: ModelDeploymentStatus, new: ModelDeploymentStatus) -> tuple[EventView, ...]:
    """Warnings for conditions that turned bad or changed their reason while bad."""
    before = {c.type: c for c in old.conditions}
    events = []
    for condition in new.conditions:
        previous = before.get(condition.type)
        if previous is not None and (previous.status, previous.reason) == (
            condition.status,
            condition.reason,
        ):
            continue
        if condition.type == VALID and condition.status == "False":
            events.append(
                EventView("Warning", "InvalidSpec", f"Workloads left unchanged: {condition.message}")
            )
        elif condition.status == ("True" if condition.type in (SCALING_LIMITED, DEGRADED) else "False") and (
            condition.type in (SCALING_LIMITED, DEGRADED, TRAFFIC_ROUTED)
        ):
            events.append(EventView("Warning", condition.reason, condition.message))
        elif condition.type == CREDENTIALS_READY and condition.status == "False":
            # Posted when the Secret or key goes missing, before the pods' start fails on it.
            events.append(EventView("Warning", condition.reason, condition.message))
    return tuple(events)


def _conflict(kind: str, namespace: str, name: str, existing: Mapping[str, Any]) -> str:
    owners = ", ".join(
        f"{ref.get('kind', '?')} {ref.get('name', '?')}"
        for ref in existing.get("metadata", {}).get("ownerReferences") or []
    )
    return f"{kind} {namespace}/{name} exists and belongs to {owners or 'no ModelDeployment'}"


def _apply(
    desired: dict[str, Any], live: Mapping[str, Any] | None, remembered: tuple[str, str] | None
) -> Apply | None:
    """Apply `desired` unless the live object is exactly what gpufleet last applied."""
    meta = desired["metadata"]
    annotations = meta.setdefault("annotations", {})
    if ANNOTATION_TEMPLATE_HASH not in annotations:
        annotations[ANNOTATION_TEMPLATE_HASH] = template_hash(desired)
    digest = annotations[ANNOTATION_TEMPLATE_HASH]
    live_digest = (live or {}).get("metadata", {}).get("annotations", {}).get(ANNOTATION_TEMPLATE_HASH)
    if live is not None and remembered is not None:
        if live_digest == digest and remembered == (digest, version_of(live)):
            return None
    elif (
        live is None
        and remembered is not None
        and desired["kind"] != "Deployment"
        and remembered[0] == digest
    ):
        # Services and PDBs are not listed on every reconcile: their watch events make the runtime
        # forget what it applied, which makes the next plan apply them again.
        return None
    deployment = desired["kind"] == "Deployment"
    event = _apply_event(desired, live, live_digest, digest, remembered) if deployment else None
    return Apply(desired, digest, event, check_owner=deployment and live is None)


def _apply_event(
    desired: Mapping[str, Any],
    live: Mapping[str, Any] | None,
    live_digest: str | None,
    digest: str,
    remembered: tuple[str, str] | None,
) -> EventView | None:
    name, replicas = desired["metadata"]["name"], desired["spec"]["replicas"]
    if live is None:
        if remembered is None or remembered[0] != digest:
            return EventView("Normal", "CreatedGroup", f"Applied Deployment {name} with {replicas} replicas")
        return EventView(
            "Normal", "RestoredGroup", f"Recreated Deployment {name}: it was deleted outside gpufleet"
        )
    if live_digest == digest:
        if remembered is None:
            return None  # first look after a restart: re-applied quietly, nothing is known to have drifted
        return EventView(
            "Normal", "RevertedDrift", f"Restored Deployment {name}: it was changed outside gpufleet"
        )
    live_replicas = live.get("spec", {}).get("replicas")
    if live_replicas != replicas:
        return EventView(
            "Normal", "ScaledGroup", f"Scaled Deployment {name} from {live_replicas} to {replicas}"
        )
    return EventView("Normal", "UpdatedGroup", f"Updated Deployment {name} (pod template changed)")


@dataclass(frozen=True)
class _History:
    plan: RevisionPlan
    stored: RevisionsStatus | None  # as this operator last wrote it
    stable: ObservedRevision | None  # the stored stable revision, if still in the history


@dataclass(frozen=True)
class _Revisions:
    plan: RevisionPlan
    status: RevisionsStatus


def _revision_history(
    observed: Observed, owner: Owner, spec: ModelDeploymentSpec, previous: ModelDeploymentStatus
) -> _History:
    history = observe_revisions(observed.revisions, owner.uid)
    # What this operator wrote last is newer than a body the watch has not caught up with.
    written = (observed.remembered.status or {}).get("revisions")
    stored = previous.revisions if written is None else RevisionsStatus.model_validate(written)
    stable_before = stored.stable.name if stored and stored.stable else None
    # A name taken by someone else's ControllerRevision is not ours to write: the plan picks another.
    foreign = [
        ref_name
        for (kind, ref_name), obj in observed.looked_up.items()
        if kind == "ControllerRevision" and obj is not None and not owned_by(obj, owner.uid)
    ]
    plan = plan_revisions(
        owner,
        serving_template(spec),
        history,
        spec.revision_history_limit,
        keep=[
            name
            for name in (stable_before, stored.standby.name if stored and stored.standby else None)
            if name
        ],
        taken=foreign,
    )
    return _History(plan, stored, next((r for r in plan.history if r.name == stable_before), None))


def _stable_slot(stored: RevisionsStatus | None, owned: Sequence[Mapping[str, Any]]) -> Slot:
    """The slot status records; without status (lost, or never written), slot b when only slot b's
    Deployments exist."""
    if stored is not None:
        return stored.stable_slot
    slots = {_slot_of(d) for d in owned}
    return "b" if slots == {"b"} else "a"


def _plan_rollout(
    observed: Observed,
    spec: ModelDeploymentSpec,
    previous: ModelDeploymentStatus,
    history: _History,
    capacity: FailoverPlan,
    pods: Sequence[ObservedPod],
    owned: Sequence[Mapping[str, Any]],
    now: datetime,
    routed: bool = False,
) -> RolloutPlan:
    # What this operator wrote last is newer than a body the watch has not caught up with, and a
    # rollout it ended is absent from it: the body's stale one must not come back.
    remembered = observed.remembered.status
    if remembered is not None:
        written = remembered.get("rollout")
        state = RolloutStatus.model_validate(written) if written else None
    else:
        state = previous.rollout
    # A canary needs the stable revision's template to keep running beside it; without one (a new
    # model, or a history that lost it) spec's revision rolls out to every group at once.
    stable_spec = spec_of_revision(spec, history.stable) if history.stable else None
    busy = [c.type for c in capacity.conditions if c.ok and c.type in (SPOT_INTERRUPTED, ZONE_DEGRADED)]
    hold = (
        f"{' and '.join(busy)} handling under way"
        if busy
        else "replacing replicas on nodes being reclaimed"
        if capacity.retire or capacity.kept
        else ""
    )
    stored = history.stored.standby if history.stored else None
    standby = Standby(stored.revision, stored.name, stored.replicas, stored.until) if stored else None
    stable_slot = _stable_slot(history.stored, owned)
    current = history.plan.current
    # Back to the revision kept warm in a slot whose pods carry no revision label: they are its own.
    restoring = standby is not None and standby.name == current.name
    unlabelled = restoring and not _labelled(owned, other_slot(stable_slot))
    return plan_rollout(
        RolloutInput(
            steps=spec.rollout.steps if stable_spec is not None else (),
            paused=spec.rollout.paused,
            surge_replicas=surge_replicas(spec.rollout.max_surge_gpus, spec.accelerator.tensor_parallel_size),
            groups=capacity.groups,
            pods=[p for p in pods if not p.terminating],
            current=current.revision,
            stable=history.stable.revision if history.stable else None,
            stable_slot=stable_slot,
            state=state,
            promote=promote_value(observed.body["metadata"].get("annotations")),
            hold=hold,
            analysis=spec.rollout.analysis,
            judgement=previous.analysis,
            current_hash="" if unlabelled else pod_label_hash(current.template),
            keep_previous=spec.rollout.keep_previous,
            standby=standby,
            stable_name=history.stable.name if history.stable else "",
            current_name=current.name,
            routed=routed,
        ),
        now,
    )


def _slot_workloads(
    spec: ModelDeploymentSpec,
    history: _History,
    rollout: RolloutPlan,
    owned: Sequence[Mapping[str, Any]],
    label_all: bool = False,
) -> list[SlotWorkload]:
    """What each slot runs. A slot's pods carry their revision's hash when the slot starts a new
    revision (a canary), or when its live Deployments already do, or when an HTTPRoute needs a
    Service per slot (`label_all`: unlabelled running pods are replaced once for it)."""
    current = pod_label_hash(history.plan.current.template)
    stable_slot, other = rollout.stable_slot, other_slot(rollout.stable_slot)
    workloads: list[SlotWorkload] = []
    if not rollout.canary or history.stable is None:
        label = current if label_all or _labelled(owned, stable_slot) else None
        workloads.append(
            SlotWorkload(spec, [s.group for s in rollout.slots if not s.standby], stable_slot, label)
        )
    else:
        stable_spec = spec_of_revision(spec, history.stable) or spec
        labelled = label_all or _labelled(owned, stable_slot)
        stable_label = pod_label_hash(history.stable.template) if labelled else None
        canary_runs_spec_already = _runs(owned, other, history)
        keep_unlabelled = canary_runs_spec_already and not label_all and not _labelled(owned, other)
        canary_label = None if keep_unlabelled else current
        workloads += [
            SlotWorkload(
                stable_spec,
                [s.group for s in rollout.slots if not s.canary and not s.standby],
                stable_slot,
                stable_label,
            ),
            SlotWorkload(spec, [s.group for s in rollout.slots if s.canary], other, canary_label),
        ]
    kept = [s.group for s in rollout.slots if s.standby]
    revision = next(
        (r for r in history.plan.history if rollout.standby and r.name == rollout.standby.name), None
    )
    kept_spec = spec_of_revision(spec, revision) if revision is not None else None
    if kept and revision is not None and kept_spec is not None:
        # The standby slot is the old stable slot: its pods keep the template (and label) they had.
        label = pod_label_hash(revision.template) if _labelled(owned, other) else None
        workloads.append(SlotWorkload(kept_spec, kept, other, label))
    return workloads


def _runs(owned: Sequence[Mapping[str, Any]], slot: Slot, history: _History) -> bool:
    """Whether the slot's live Deployments run spec's revision already (a warm standby of it)."""
    standby = history.stored.standby if history.stored else None
    return (
        standby is not None
        and standby.name == history.plan.current.name
        and any(_slot_of(d) == slot for d in owned)
    )


def _slot_hashes(history: _History, rollout: RolloutPlan) -> dict[Slot, str]:
    """The revision label each slot's pods carry after this plan (as _slot_workloads runs them); a
    slot that runs nothing gets spec's revision, at weight 0."""
    current = pod_label_hash(history.plan.current.template)
    stable_slot, other = rollout.stable_slot, other_slot(rollout.stable_slot)
    if rollout.canary and history.stable is not None:
        return {stable_slot: pod_label_hash(history.stable.template), other: current}
    kept = next((r for r in history.plan.history if rollout.standby and r.name == rollout.standby.name), None)
    return {stable_slot: current, other: pod_label_hash(kept.template) if kept else current}


def _route_carries(
    route: RouteLookup,
    observed: Observed,
    history: _History,
    pods: Sequence[ObservedPod],
    owned: Sequence[Mapping[str, Any]],
) -> bool:
    """Whether the HTTPRoute carries the weights as this pass starts: readable, with a rule of the
    model's, and a ready pod behind the stable slot's Service (see planning.traffic)."""
    name = observed.body["metadata"]["name"]
    if not routable(route, name):
        return False
    stable = history.stable or history.plan.current
    stable_slot = _stable_slot(history.stored, owned)
    live = [p for p in pods if not p.terminating]
    return ready_in_slot(live, stable_slot, pod_label_hash(stable.template)) > 0


def _plan_traffic(
    observed: Observed,
    spec: ModelDeploymentSpec,
    owner: Owner,
    policy: ReconcilePolicy,
    history: _History,
    rollout: RolloutPlan,
    pods: Sequence[ObservedPod],
) -> TrafficPlan | None:
    if spec.rollout.http_route is None:
        return None
    hashes = _slot_hashes(history, rollout)
    lookup = _route_read(observed, spec.rollout.http_route.name)
    live = [p for p in pods if not p.terminating]
    stable_ready = ready_in_slot(live, rollout.stable_slot, hashes[rollout.stable_slot])
    canary_weight = rollout.route_weight if rollout.canary else 0
    return plan_traffic(
        owner, policy.workloads.port, lookup, hashes, rollout.stable_slot, canary_weight, stable_ready
    )


def _route_left(observed: Observed) -> str:
    """The route status.httpRoute says was written last, when spec.rollout.httpRoute no longer names it
    (unset, or renamed); "" when there is none. The same choice the runtime made when it read the route."""
    name = route_name(observed.body, observed.remembered.status)
    return name if name != _spec_route(observed.body) else ""


def _route_read(observed: Observed, name: str) -> RouteLookup:
    """The route of that name as the runtime read it; another name read (a body behind this operator's
    own status write) is not this one."""
    if observed.route is not None and observed.route.name == name:
        return observed.route
    return RouteLookup(name, None, error="not read")


def _route_to_release(
    observed: Observed, spec: ModelDeploymentSpec, leaving: str, port: int
) -> RouteRelease | None:
    """The route left to point back at the model's Service: None when there is none (see
    planning.traffic.release_route)."""
    if not leaving:
        return None
    model = observed.body["metadata"]["name"]
    successor = spec.rollout.http_route.name if spec.rollout.http_route else None
    return release_route(model, port, _route_read(observed, leaving), successor)


def _slot_of(deployment: Mapping[str, Any]) -> Slot:
    labels = (deployment.get("spec") or {}).get("selector", {}).get("matchLabels") or {}
    return "b" if labels.get(LABEL_SLOT) == "b" else "a"


def _labelled(owned: Sequence[Mapping[str, Any]], slot: Slot) -> bool:
    return any(
        LABEL_REVISION_HASH in (d["spec"]["template"]["metadata"].get("labels") or {})
        for d in owned
        if _slot_of(d) == slot and "template" in (d.get("spec") or {})
    )


def _revisions_status(
    history: _History,
    rollout: RolloutPlan,
    desired: Sequence[Mapping[str, Any]],
    live_by_name: Mapping[str, Mapping[str, Any]],
    spec: ModelDeploymentSpec,
    prices: Mapping[str, ProductPrices],
) -> _Revisions:
    plan, kept = history.plan, history.plan.history
    standby = None
    if rollout.standby is not None:
        warm = [(s.zone, s.capacity_type) for s in rollout.slots if s.standby for _ in range(s.replicas)]
        standby = StandbyStatus(
            revision=rollout.standby.revision,
            name=rollout.standby.name,
            replicas=rollout.standby.replicas,
            until=rollout.standby.until,
            hash=next((pod_label_hash(r.template) for r in kept if r.name == rollout.standby.name), ""),
            cost_per_hour=estimate_for(spec, warm, prices).to_status().per_hour,
        )
    if rollout.promoted or (not rollout.canary and rolled_out(desired, live_by_name)):
        stable: ObservedRevision | None = plan.current
    else:
        stable = history.stable
    return _Revisions(
        plan,
        RevisionsStatus(
            current=summary_of(plan.current, kept),
            stable=summary_of(stable, kept) if stable else None,
            canary=summary_of(plan.current, kept) if rollout.canary else None,
            standby=standby,
            history=len(kept),
            stable_slot=rollout.stable_slot,
        ),
    )


def _revision_apply(write: RevisionWrite, revisions: _Revisions) -> Apply:
    current, obj = revisions.status.current, write.manifest
    if write.new:
        what = f": {current.changes}" if current.changes else ""
        event = EventView("Normal", "NewRevision", f"Serving template is revision {current.revision}{what}")
    else:
        event = EventView(
            "Normal",
            "RevisionRestored",
            f"Serving template is {obj['metadata']['name']} again, renumbered revision {current.revision}"
            + (f": {current.changes}" if current.changes else ""),
        )
    return Apply(obj, template_hash(obj), event, check_owner=write.new)
