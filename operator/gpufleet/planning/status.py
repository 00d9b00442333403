"""Observed pods and Deployments → the ModelDeployment's status and conditions.

Conditions follow metav1.Condition: a condition's lastTransitionTime only
moves when its status flips, so `kubectl describe` tells how long a state has
lasted. `now` is passed in; nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from gpufleet.api.v1alpha1 import (
    AutoscalerStatus,
    Condition,
    CostStatus,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    PlacementStatus,
    RevisionsStatus,
    RolloutStatus,
    SpotStatus,
)
from gpufleet.planning.credentials import CREDENTIALS_READY, CredentialsVerdict
from gpufleet.planning.observe import ObservedDeployment, ObservedPod
from gpufleet.planning.placement import CAPACITY_TYPES, CapacityType, PlacementGroup
from gpufleet.planning.report import ConditionView

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
VALID = "Valid"
SCALING_LIMITED = "ScalingLimited"
SCALING_ACTIVE = "ScalingActive"


@dataclass(frozen=True)
class ReplicaDecision:
    """spec.replicas clamped to [minReplicas, maxReplicas], with why."""

    requested: int
    desired: int
    reason: str
    message: str

    @property
    def clamped(self) -> bool:
        return self.requested != self.desired


def decide_replicas(spec: ModelDeploymentSpec) -> ReplicaDecision:
    low, high = spec.min_replicas, spec.max_replicas
    if spec.replicas < low:
        return ReplicaDecision(
            spec.replicas,
            low,
            "TooFewReplicas",
            f"spec.replicas {spec.replicas} is below minReplicas {low}; running {low}",
        )
    if high is not None and spec.replicas > high:
        return ReplicaDecision(
            spec.replicas,
            high,
            "TooManyReplicas",
            f"spec.replicas {spec.replicas} is above maxReplicas {high}; running {high}",
        )
    return ReplicaDecision(
        spec.replicas, spec.replicas, "DesiredWithinRange", "spec.replicas is within range"
    )


@dataclass(frozen=True)
class StatusInput:
    generation: int
    desired: ReplicaDecision | None  # None when the spec is invalid: nothing was planned
    groups: Sequence[PlacementGroup]
    pods: Sequence[ObservedPod]
    deployments: Sequence[ObservedDeployment]
    selector: str
    problems: Sequence[str] = ()
    previous: ModelDeploymentStatus = field(default_factory=ModelDeploymentStatus)
    unschedulable_after: timedelta = timedelta(minutes=5)
    # status.autoscaler as the autoscaler last wrote it; None when autoscaling is off.
    autoscaler: AutoscalerStatus | None = None
    # From the failover planner: its condition verdicts, status.spot and status.cost.
    capacity_conditions: Sequence[ConditionView] = ()
    spot: SpotStatus | None = None
    cost: CostStatus | None = None
    # Objects of the model's names that belong to someone else (not applied over).
    conflicts: Sequence[str] = ()
    # CredentialsReady, when the pods reference a credentials Secret.
    credentials: CredentialsVerdict | None = None
    # status.revisions from the revision planner; None when the spec is invalid (left as stored).
    revisions: RevisionsStatus | None = None
    # status.rollout from the rollout planner: a canary in progress, else None.
    rollout: RolloutStatus | None = None
    # status.httpRoute: the HTTPRoute the operator writes, or is releasing (planning.traffic).
    http_route: str | None = None


def _condition(
    kind: str,
    ok: bool | None,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
    previous: Mapping[str, Condition],
) -> Condition:
    status: Literal["True", "False", "Unknown"] = "Unknown" if ok is None else "True" if ok else "False"
    old = previous.get(kind)
    since = old.last_transition_time if old and old.status == status else None
    return Condition(
        type=kind,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since or now.replace(microsecond=0),
        observed_generation=generation,
    )


def _placement(groups: Iterable[PlacementGroup], pods: Sequence[ObservedPod]) -> list[PlacementStatus]:
    keys: dict[tuple[str, CapacityType], None] = {g.key: None for g in groups}
    for pod in pods:
        keys.setdefault((pod.zone, pod.capacity_type), None)
    rows = []
    for zone, capacity_type in sorted(keys, key=lambda k: (k[0], CAPACITY_TYPES.index(k[1]))):
        members = [p for p in pods if (p.zone, p.capacity_type) == (zone, capacity_type)]
        rows.append(
            PlacementStatus(
                zone=zone,
                capacity_type=capacity_type,
                replicas=len(members),
                ready_replicas=sum(p.ready for p in members),
            )
        )
    return rows


def unschedulable_pods(pods: Sequence[ObservedPod], now: datetime, after: timedelta) -> list[ObservedPod]:
    """Live pods the scheduler has refused for at least `after`."""
    return [
        p
        for p in pods
        if p.unschedulable_since is not None and not p.terminating and now - p.unschedulable_since >= after
    ]


def compute_status(inp: StatusInput, now: datetime) -> ModelDeploymentStatus:
    """The status the reconciler writes (status.autoscaler is the autoscaler's and stays unset)."""
    previous = {c.type: c for c in inp.previous.conditions}
    live = [p for p in inp.pods if not p.terminating]
    ready = sum(p.ready for p in live)

    def cond(kind: str, ok: bool | None, reason: str, message: str) -> Condition:
        return _condition(kind, ok, reason, message, inp.generation, now, previous)

    conditions: list[Condition] = []
    if inp.desired is None:
        conditions.append(cond(VALID, False, "InvalidSpec", "; ".join(inp.problems)))
        desired = (
            inp.previous.desired_replicas
            if "desired_replicas" in inp.previous.model_fields_set
            else len(live)
        )
    else:
        conditions.append(cond(VALID, True, "Valid", "spec is valid"))
        desired = inp.desired.desired
        auto = inp.autoscaler
        if not inp.desired.clamped and auto is not None and auto.limited:
            conditions.append(cond(SCALING_LIMITED, True, auto.reason, auto.message))
        else:
            conditions.append(
                cond(SCALING_LIMITED, inp.desired.clamped, inp.desired.reason, inp.desired.message)
            )
        if auto is not None:
            reason = "ValidMetrics" if auto.active else (auto.reason or "MetricsMissing")
            conditions.append(cond(SCALING_ACTIVE, auto.active, reason, auto.message))

    if desired == 0:
        reason = "ScaledToZero" if not live else "ScalingToZero"
        conditions.append(cond(READY, True, reason, f"no replicas desired, {len(live)} pods left"))
    elif ready >= desired:
        conditions.append(cond(READY, True, "AllReplicasReady", f"{ready}/{desired} replicas ready"))
    elif ready > 0:
        conditions.append(cond(READY, False, "PartiallyReady", f"{ready}/{desired} replicas ready"))
    else:
        conditions.append(cond(READY, False, "NoReplicasReady", f"0/{desired} replicas ready"))

    rolling = [
        d for d in inp.deployments if d.observed_generation < d.generation or d.updated_replicas < d.replicas
    ]
    overdue = sorted(d.name for d in inp.deployments if d.deadline_exceeded)
    if inp.desired is None:
        conditions.append(cond(PROGRESSING, False, "InvalidSpec", "workloads are left as they are"))
    elif overdue:
        # The Deployment controller's own verdict (progressDeadlineSeconds); the serving replicas stay.
        message = (
            f"{', '.join(overdue)} made no progress within its deadline; the ready replicas keep serving"
        )
        conditions.append(cond(PROGRESSING, False, "ProgressDeadlineExceeded", message))
    elif inp.rollout is not None and inp.rollout.phase == "Aborted":
        r = inp.rollout
        message = f"canary revision {r.revision} rolled back at step {r.step}: {r.message}"
        conditions.append(cond(PROGRESSING, False, "CanaryFailed", message))
    elif inp.rollout is not None:
        r = inp.rollout
        message = (
            f"canary revision {r.revision}, step {r.step}/{r.steps} ({r.phase}): {r.weight}% of ready "
            f"replicas, step weight {r.target_weight}%; {r.message}"
        )
        conditions.append(cond(PROGRESSING, True, "CanaryRollout", message))
    elif rolling:
        names = ", ".join(sorted(d.name for d in rolling))
        conditions.append(cond(PROGRESSING, True, "RollingOut", f"rolling out {names}"))
    elif len(live) != desired or ready < desired:
        conditions.append(
            cond(PROGRESSING, True, "Scaling", f"{len(live)} pods for {desired} desired, {ready} ready")
        )
    else:
        conditions.append(cond(PROGRESSING, False, "Converged", f"{desired} replicas converged"))

    stuck = unschedulable_pods(live, now, inp.unschedulable_after)
    failing = [p for p in live if p.failing]
    if inp.conflicts:
        message = (
            f"{'; '.join(inp.conflicts)}: gpufleet leaves it untouched; rename the ModelDeployment "
            "or remove that object"
        )
        conditions.append(cond(DEGRADED, True, "ObjectConflict", message))
    elif stuck:
        minutes = int(inp.unschedulable_after.total_seconds() // 60)
        conditions.append(
            cond(
                DEGRADED,
                True,
                "Unschedulable",
                f"{len(stuck)} pod(s) unschedulable for over {minutes}m: {stuck[0].unschedulable_message}",
            )
        )
    elif failing:
        message = f"{len(failing)} pod(s) not starting: {failing[0].name}: {failing[0].failing}"
        conditions.append(cond(DEGRADED, True, "ReplicasFailing", message))
    elif overdue and inp.desired is not None:
        conditions.append(
            cond(
                DEGRADED,
                True,
                "ProgressDeadlineExceeded",
                f"{', '.join(overdue)} exceeded its progress deadline",
            )
        )
    else:
        conditions.append(cond(DEGRADED, False, "AsExpected", "no pod is stuck"))
    conditions.extend(cond(c.type, c.ok, c.reason, c.message) for c in inp.capacity_conditions)
    if inp.credentials is not None:
        verdict = inp.credentials
        conditions.append(cond(CREDENTIALS_READY, verdict.ok, verdict.reason, verdict.message))
    return ModelDeploymentStatus(
        observed_generation=inp.generation,
        replicas=len(live),
        ready_replicas=ready,
        desired_replicas=desired,
        selector=inp.selector,
        placement=_placement(inp.groups, live),
        conditions=conditions,
        spot=inp.spot,
        cost=inp.cost,
        revisions=inp.revisions,
        rollout=inp.rollout,
        http_route=inp.http_route,
    )
