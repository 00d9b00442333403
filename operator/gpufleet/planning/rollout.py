"""A canary rollout by replica ratio: how many replicas of each group run the new revision, step by step.

Each placement group (zone × capacity type) has two Deployment slots, `a` (`<group>`) and `b`
(`<group>-b`). The stable revision runs in one, the canary in the other, both behind the model's one
Service, so the share of replicas is the share of traffic. A step's weight is reached with the smallest
canary that reaches it, at least one replica and, before the last step, at least one stable replica
(1 of 3 replicas at 10 % is 33 %; with one replica the canary is a surge replica beside it, 50 %).

Stable capacity is never given up for a canary replica that is not ready: a group's stable count drops
only by its ready canary replicas, so a canary whose pods never start costs GPUs, never serving
capacity. `maxSurgeGPUs` bounds the canary replicas starting at once. The autoscaler and the spot
failover plan the total per group; this splits it, so both keep working during a rollout. The step's
pause counts from when its weight is reached; a step without a pause waits for `gpufleet promote`
(annotation `gpufleet.io/promote: <revision>/<step>`). Spot or zone failover under way, or
spec.rollout.paused, holds the step: counts follow the total, no step starts or ends.

After the last step the canary takes every replica; once they are all ready it is promoted: it becomes
the stable revision, its slot the stable slot, and the other slot's Deployments are removed. No pod
restarts on promotion. A spec set back to the stable revision (`gpufleet rollback`) ends the canary at
once: the stable slot takes every replica again and the canary's Deployments are removed.

Pure: no I/O; time is an argument.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from gpufleet.api.v1alpha1 import (
    Analysis,
    AnalysisStatus,
    KeepPrevious,
    RolloutPhase,
    RolloutStatus,
    RolloutStep,
    Slot,
)
from gpufleet.planning.observe import ObservedPod
from gpufleet.planning.placement import CapacityType, PlacementGroup
from gpufleet.planning.report import EventView

ANNOTATION_PROMOTE = "gpufleet.io/promote"

GroupKey = tuple[str, CapacityType]


def other_slot(slot: Slot) -> Slot:
    return "b" if slot == "a" else "a"


def split(weight: int, total: int) -> tuple[int, int]:
    """(canary, stable) replicas for a weight in percent: the smallest canary that reaches it, at least
    one; before 100 % at least one stable replica, so one replica gets a canary beside it."""
    if total <= 0:
        return 0, 0
    if weight >= 100:
        return total, 0
    if total == 1:
        return 1, 1
    canary = min(max(1, math.floor(weight * total / 100)), total - 1)
    return canary, total - canary


def reached_weight(canary_ready: int, stable_ready: int) -> int:
    serving = canary_ready + stable_ready
    return round(100 * canary_ready / serving) if serving else 0


def distribute(count: int, groups: Sequence[PlacementGroup]) -> dict[GroupKey, int]:
    """`count` replicas over the groups in proportion to their sizes (largest remainder, ties to the
    group listed first), never more than a group has."""
    total = sum(g.replicas for g in groups)
    count = min(count, total)
    if total == 0 or count == 0:
        return {g.key: 0 for g in groups}
    exact = [(g, count * g.replicas / total) for g in groups]
    shares = {g.key: math.floor(x) for g, x in exact}
    left = count - sum(shares.values())
    by_remainder = sorted(range(len(exact)), key=lambda i: -(exact[i][1] - math.floor(exact[i][1])))
    for i in by_remainder:
        if left == 0:
            break
        group = exact[i][0]
        if shares[group.key] < group.replicas:
            shares[group.key] += 1
            left -= 1
    return shares


@dataclass(frozen=True)
class SlotGroup:
    """One Deployment to run: a group's replicas of one revision in one slot."""

    zone: str
    capacity_type: CapacityType
    slot: Slot
    replicas: int
    canary: bool  # runs the canary revision (spec); else the stable one
    standby: bool = False  # runs the previous revision, kept warm after a promotion

    @property
    def group(self) -> PlacementGroup:
        return PlacementGroup(self.zone, self.capacity_type, self.replicas)


@dataclass(frozen=True)
class Standby:
    """The previous revision kept warm in the other slot after a promotion (status.revisions.standby)."""

    revision: int
    name: str  # its ControllerRevision
    replicas: int
    until: datetime


@dataclass(frozen=True)
class RolloutInput:
    steps: Sequence[RolloutStep]  # spec.rollout.steps; empty: all at once
    paused: bool
    surge_replicas: int | None  # spec.rollout.maxSurgeGPUs in whole canary replicas; None: unbounded
    groups: Sequence[PlacementGroup]  # the total to run per group (placement and failover)
    pods: Sequence[ObservedPod]
    current: int  # revision number spec asks for
    stable: int | None  # stable revision number, None when there is none to run (a new model)
    stable_slot: Slot
    state: RolloutStatus | None  # as last written
    promote: str = ""  # the promote annotation's value
    hold: str = ""  # why failover holds the rollout ("" when it does not)
    analysis: Analysis | None = None  # spec.rollout.analysis; None: steps end on their pauses alone
    current_hash: str = ""  # the canary revision's pod label: only its own pods count ("" : any)
    keep_previous: KeepPrevious | None = None  # spec.rollout.keepPrevious
    standby: Standby | None = None  # as last written
    stable_name: str = ""  # the stable revision's ControllerRevision (what a standby of it is)
    current_name: str = ""  # spec's revision's ControllerRevision: a rollback renumbers, the name stays
    routed: bool = False  # an HTTPRoute carries the weights: status reports the route's, not the ratio

    def is_standby(self, standby: Standby) -> bool:
        """Whether spec asks for the revision kept warm (by name: going back renumbers it)."""
        return standby.name == self.current_name if self.current_name else standby.revision == self.current

    judgement: AnalysisStatus | None = None  # status.analysis: the analysis loop's last judgement


@dataclass(frozen=True)
class RolloutPlan:
    slots: tuple[SlotGroup, ...]
    stable_slot: Slot  # after this plan
    canary: bool  # a canary runs (the canary slot holds spec's revision)
    promoted: bool  # spec's revision became stable in this plan
    status: RolloutStatus | None
    events: tuple[EventView, ...] = ()
    requeue_after: float | None = None  # seconds until a pause ends, or a standby goes
    standby: Standby | None = None  # after this plan
    # The canary slot's backend weight in an HTTPRoute, percent (the stable slot's is the rest): the
    # step's weight once its canary replicas are ready, never more than the ready ones' share before.
    route_weight: int = 0


def _whole(groups: Sequence[PlacementGroup], slot: Slot, canary: bool) -> tuple[SlotGroup, ...]:
    return tuple(SlotGroup(g.zone, g.capacity_type, slot, g.replicas, canary) for g in groups)


def _ready_by_group(pods: Sequence[ObservedPod], slot: Slot, revision_hash: str = "") -> dict[GroupKey, int]:
    """Ready pods of a slot by group; with `revision_hash`, only that revision's (a canary slot still
    holds a replaced canary's pods until its Deployment has rolled them)."""
    ready: dict[GroupKey, int] = {}
    for pod in pods:
        if revision_hash and pod.revision_hash != revision_hash:
            continue
        if pod.slot == slot and pod.ready and not pod.terminating:
            key = (pod.zone, pod.capacity_type)
            ready[key] = ready.get(key, 0) + 1
    return ready


def plan_rollout(inp: RolloutInput, now: datetime) -> RolloutPlan:
    stable_slot = inp.stable_slot
    running = inp.state is not None
    standby = inp.standby
    if standby is not None and inp.is_standby(standby) and inp.stable not in (None, inp.current):
        return _restore(inp, now)
    if not inp.steps or inp.stable is None or inp.stable == inp.current:
        if standby is not None and inp.stable == inp.current and inp.steps:
            return _kept(inp, standby, now)
        events: tuple[EventView, ...] = ()
        if running and inp.stable == inp.current and inp.state is not None and inp.state.phase != "Aborted":
            events = (
                EventView(
                    "Normal",
                    "RolloutAborted",
                    f"spec is back at stable revision {inp.current}: the canary's replicas are removed and "
                    "the stable revision takes every replica",
                ),
            )
        # Spec's revision runs in the stable slot, as a rolling update of every group at once.
        return RolloutPlan(_whole(inp.groups, stable_slot, False), stable_slot, False, False, None, events)
    return _plan_canary(inp, now)


def _plan_canary(inp: RolloutInput, now: datetime) -> RolloutPlan:
    canary_slot = other_slot(inp.stable_slot)
    state = inp.state if inp.state is not None and inp.state.revision == inp.current else None
    if state is not None and state.phase == "Aborted":
        return _aborted(inp, state, ())
    judged = inp.judgement if inp.judgement is not None and inp.judgement.revision == inp.current else None
    if inp.analysis is not None and state is not None and judged is not None and judged.verdict == "Failed":
        failed = RolloutStatus(
            revision=inp.current,
            step=state.step,
            steps=len(inp.steps),
            phase="Aborted",
            target_weight=0,
            step_started_at=state.step_started_at,
            message=f"analysis failed: {judged.message}",
        )
        event = EventView(
            "Warning",
            "CanaryFailed",
            f"revision {inp.current} rolled back at step {state.step}: {judged.message}; revision "
            f"{inp.stable} takes every replica. Fix the spec, or `gpufleet rollback` to stop this alert",
        )
        return _aborted(inp, failed, (event,))
    events: list[EventView] = []
    if state is None:
        step, started, reached = 1, now, None
        events.append(
            EventView(
                "Normal",
                "RolloutStarted",
                f"canary of revision {inp.current} beside stable revision {inp.stable}, "
                f"{len(inp.steps)} step(s)",
            )
        )
    else:
        step, started, reached = state.step, state.step_started_at or now, state.weight_reached_at
    steps = len(inp.steps)
    total = sum(g.replicas for g in inp.groups)
    canary_ready = _ready_by_group(inp.pods, canary_slot, inp.current_hash)
    stable_ready = _ready_by_group(inp.pods, inp.stable_slot)
    ready = sum(canary_ready.values())
    hold = "spec.rollout.paused is set" if inp.paused else inp.hold

    def target_of(step: int) -> tuple[int, int]:
        return split(inp.steps[step - 1].weight if step <= steps else 100, total)

    phase: RolloutPhase = "Progressing"
    requeue: float | None = None
    canary_target, _ = target_of(step)
    if ready >= canary_target and reached is None:
        reached = now
        if step <= steps:
            events.append(
                EventView(
                    "Normal",
                    "CanaryWeightReached",
                    f"step {step}/{steps}: {ready} of {total} replicas on revision {inp.current}",
                )
            )
    if step > steps:
        phase = "Promoting"
        if ready >= canary_target:
            return _promoted(inp, canary_slot, ready, now)
    elif hold:
        phase = "Held"
    elif reached is not None:
        pause = inp.steps[step - 1].pause_seconds
        promoted_by_hand = inp.promote == f"{inp.current}/{step}"
        paused_out = pause is not None and now >= reached + timedelta(seconds=pause)
        verdict = _analysis_gate(inp.analysis, judged, step, reached)
        if promoted_by_hand or (paused_out and verdict is None):
            step, started, reached = step + 1, now, None
            canary_target, _ = target_of(step)
            phase = "Promoting" if step > steps else "Progressing"
        elif paused_out:
            phase, hold = "Held", verdict or ""
        elif pause is None:
            phase = "WaitingForPromotion"
        else:
            phase = "Paused"
            requeue = (reached + timedelta(seconds=pause) - now).total_seconds()

    # Canary replicas starting beyond the ready ones are the surge; the budget bounds them.
    allowed = canary_target if inp.surge_replicas is None else min(canary_target, ready + inp.surge_replicas)
    canary_counts = distribute(allowed, inp.groups)
    one_beside = total == 1 and step <= steps  # one replica: the canary is a surge replica beside it
    # While the canary takes every replica, the ones a promotion keeps warm stay: no cold standby.
    warm = _standby_counts(inp) if step > steps else {}
    slots: list[SlotGroup] = []
    for group in inp.groups:
        canary = canary_counts[group.key]
        stable = (
            group.replicas if one_beside else group.replicas - min(canary, canary_ready.get(group.key, 0))
        )
        stable = max(stable, warm.get(group.key, 0))
        slots.append(SlotGroup(group.zone, group.capacity_type, inp.stable_slot, stable, False))
        slots.append(SlotGroup(group.zone, group.capacity_type, canary_slot, canary, True))
    weight_now = reached_weight(ready, sum(stable_ready.values()))
    target_weight = inp.steps[step - 1].weight if step <= steps else 100
    # A canary that has not all started gets no more traffic than its ready replicas' share, so a
    # router never sends a step's weight to fewer replicas than the step planned for it.
    route_weight = (
        0 if ready == 0 else target_weight if ready >= canary_target else min(target_weight, weight_now)
    )
    status = RolloutStatus(
        revision=inp.current,
        step=step,
        steps=steps,
        phase=phase,
        target_weight=target_weight,
        weight=route_weight if inp.routed else weight_now,
        canary_replicas=ready,
        stable_replicas=sum(stable_ready.values()),
        step_started_at=started,
        weight_reached_at=reached,
        message=_message(phase, hold, ready, canary_target, inp.current, step),
    )
    return RolloutPlan(
        tuple(slots), inp.stable_slot, True, False, status, tuple(events), requeue, route_weight=route_weight
    )


def _analysis_gate(
    analysis: Analysis | None, judged: AnalysisStatus | None, step: int, reached: datetime
) -> str | None:
    """Why the analysis keeps a step whose pause is over from ending; None when it may end. Only a
    Passed judgement of this step at its weight lets it: no data never promotes."""
    if analysis is None:
        return None
    if judged is None or judged.step != step or judged.checked_at < reached:
        return "analysis: no judgement of this step yet"
    if judged.verdict != "Passed":
        return f"analysis {judged.verdict}: {judged.message}"
    return None


def _aborted(inp: RolloutInput, status: RolloutStatus, events: tuple[EventView, ...]) -> RolloutPlan:
    """Analysis failed: the stable revision takes every replica in its slot, the canary slot is emptied,
    and it stays so while spec asks for the failed revision."""
    slots = tuple(
        SlotGroup(g.zone, g.capacity_type, slot, g.replicas if slot == inp.stable_slot else 0, canary)
        for g in inp.groups
        for slot, canary in ((inp.stable_slot, False), (other_slot(inp.stable_slot), True))
    )
    return RolloutPlan(slots, inp.stable_slot, True, False, status, events)


def _standby_counts(inp: RolloutInput) -> dict[GroupKey, int]:
    """Per group, the previous revision's replicas a promotion keeps warm (none without keepPrevious)."""
    if inp.keep_previous is None:
        return {g.key: 0 for g in inp.groups}
    return distribute(inp.keep_previous.replicas, inp.groups)


def _promoted(inp: RolloutInput, canary_slot: Slot, ready: int, now: datetime) -> RolloutPlan:
    slots = _whole(inp.groups, canary_slot, False)
    keep = inp.keep_previous
    standby = None
    if keep is not None and inp.stable is not None and inp.stable_name:
        kept = _standby_counts(inp)
        standby = Standby(
            inp.stable, inp.stable_name, sum(kept.values()), now + timedelta(seconds=keep.seconds)
        )
        slots += tuple(
            SlotGroup(g.zone, g.capacity_type, inp.stable_slot, kept[g.key], False, standby=True)
            for g in inp.groups
        )
        gone = f"{standby.replicas} of revision {inp.stable}'s stay warm until {standby.until:%H:%M:%S}Z"
    else:
        gone = f"revision {inp.stable}'s are removed"
    event = EventView(
        "Normal", "RolloutPromoted", f"revision {inp.current} is stable: {ready} ready replicas; {gone}"
    )
    requeue = keep.seconds if standby is not None and keep is not None else None
    return RolloutPlan(slots, canary_slot, False, True, None, (event,), requeue, standby)


def _kept(inp: RolloutInput, standby: Standby, now: datetime) -> RolloutPlan:
    """Spec's revision is stable; the previous one stays warm in the other slot until its time is up."""
    slots = _whole(inp.groups, inp.stable_slot, False)
    if now >= standby.until:
        event = EventView(
            "Normal",
            "StandbyReleased",
            f"revision {standby.revision}'s warm replicas are removed: their time is up",
        )
        return RolloutPlan(slots, inp.stable_slot, False, False, None, (event,))
    kept = distribute(standby.replicas, inp.groups)
    slots += tuple(
        SlotGroup(g.zone, g.capacity_type, other_slot(inp.stable_slot), kept[g.key], False, standby=True)
        for g in inp.groups
    )
    requeue = (standby.until - now).total_seconds()
    return RolloutPlan(slots, inp.stable_slot, False, False, None, (), requeue, standby)


def _restore(inp: RolloutInput, now: datetime) -> RolloutPlan:
    """Spec is back at the revision kept warm: it takes every replica from its slot, its warm replicas
    serving at once, and the rejected revision's replicas go only as its own get ready."""
    state = inp.state
    if state is None or state.revision != inp.current:
        state = RolloutStatus(
            revision=inp.current,
            step=len(inp.steps) + 1,
            steps=len(inp.steps),
            phase="Promoting",
            target_weight=100,
            step_started_at=now,
        )
        event = EventView(
            "Normal",
            "RestoringFromStandby",
            f"spec is back at revision {inp.current}: its {inp.standby.replicas if inp.standby else 0} warm "
            f"replica(s) serve now, revision {inp.stable}'s go as more of revision {inp.current}'s get ready",
        )
        plan = _plan_canary(replace(inp, state=state, standby=None), now)
        return replace(plan, events=(event, *(e for e in plan.events if e.reason != "RolloutStarted")))
    return _plan_canary(replace(inp, standby=None), now)


def _message(phase: RolloutPhase, hold: str, ready: int, target: int, revision: int, step: int) -> str:
    if phase == "Held":
        return f"held: {hold}"
    if phase == "WaitingForPromotion":
        return (
            f"step {step} holds until `gpufleet promote` (annotation {ANNOTATION_PROMOTE}: {revision}/{step})"
        )
    if phase == "Paused":
        return f"step {step}: weight reached, pausing"
    return f"{ready} of {target} canary replicas ready"


def surge_replicas(max_surge_gpus: int | None, gpus_per_replica: int) -> int | None:
    """spec.rollout.maxSurgeGPUs in whole canary replicas (validation keeps it at one replica or more)."""
    if max_surge_gpus is None:
        return None
    return max(1, max_surge_gpus // max(1, gpus_per_replica))


def promote_value(annotations: Mapping[str, str] | None) -> str:
    return str((annotations or {}).get(ANNOTATION_PROMOTE, ""))


class PromoteError(Exception):
    """Nothing to promote; the message says why and what to do."""


def promote_patch(body: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The merge patch that ends the current step's pause (`gpufleet promote`), and what it does.

    It names the revision and the step, so it promotes that step only: written twice, or read by an
    operator after the step moved on, it does nothing more. It carries the resourceVersion read, so
    the API server refuses it (409) when the object changed in between."""
    meta = body["metadata"]
    rollout = (body.get("status") or {}).get("rollout")
    if not rollout:
        raise PromoteError(f"{meta['name']} has no canary rollout in progress (status.rollout is empty)")
    revision, step, steps = rollout["revision"], rollout["step"], rollout["steps"]
    if step > steps:
        raise PromoteError(f"revision {revision} is past its last step and already taking every replica")
    patch = {
        "metadata": {
            "resourceVersion": meta["resourceVersion"],
            "annotations": {ANNOTATION_PROMOTE: f"{revision}/{step}"},
        }
    }
    what = "the last step: the canary takes every replica" if step == steps else f"step {step + 1}/{steps}"
    return patch, f"revision {revision}: step {step}/{steps} ends now; next is {what}"
