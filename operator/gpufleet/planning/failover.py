"""Capacity signals + the model's pods → where replicas go, what to keep, what to drain.

`plan_failover()` is pure: SQS messages and node state become `Doom`s
(gpufleet.planning.capacity_signals, .nodes); the reconcile plan
(gpufleet.planning.reconcile) passes them and the clock in, persists
`FailoverPlan.state` in status.spot and applies `FailoverPlan.groups`.

Rules, in order:

1. Cooldowns. A spot signal puts the zone's spot capacity in cooldown for
   `capacity.zoneCooldownSeconds` from the signal when it concerns this
   model's capacity pool: the node hosts the model's pods, or it is a market
   signal (interruption, rebalance, stopping, terminated) for an instance type
   the model's pods run on. A rebalance recommendation for an unrelated CPU
   node, or a NotReady node with none of the model's pods, cools nothing
   (Karpenter marks the offering, instance type × zone, unavailable for
   3 minutes; SkyServe marks the location PREEMPTED, REFERENCE.md).
   A group whose pods stay unschedulable for `unavailable_after` makes its
   capacity unavailable: spot → that zone's spot, on-demand → the whole zone
   (reason SpotUnavailable / ZoneLost) for `return_after` × 2^(strikes − 1),
   at most 4×: each time it is found unavailable again right after a retry,
   the wait doubles, so a zone without capacity is not retried in a tight
   create/delete loop. A zone the node index reports lost (all its nodes
   gone or NotReady) is out for every capacity type.
2. Placement. gpufleet.planning.placement with those cooldowns as
   constraints: spot replicas go to the other zones' spot, cheaper first on
   ties; with no spot zone left they run on on-demand when
   `capacity.fallbackToOnDemand` (condition OnDemandFallback) and return to
   spot once a cooldown ends. A cooldown steers new replicas only: a group
   it excludes keeps the slots of its ready pods on healthy nodes (up to what
   it would hold without the cooldown), so a signal never moves serving
   replicas that are not going.
3. Make before break. `filled` counts the target slots held by ready pods on
   healthy nodes; `shortfall = desired − filled`. Until the replacements are
   ready, up to `shortfall` pods that are leaving but still serve are kept:
   first healthy pods in groups above their new target (a planned move, e.g.
   on-demand fallback replicas while spot returns), then ready pods on doomed
   nodes, latest deadline first. A kept doomed pod is counted on top of its
   group's target, so its Deployment also starts a replacement when its own
   group still wants one. `max_surge` bounds the extra pods a planned move
   runs at once (at least 1); replacements of pods on doomed nodes are never
   held back by it, since those pods are going anyway.
4. Drain. A pod on a doomed node leaves as soon as it is not kept: its
   replacement is ready, it is not ready itself, or the deadline is less than
   `drain` away. A ready pod leaves through the eviction API, so the PDB holds
   (gpufleet.runtime.reconciler); one that is not ready is deleted. Pods on a
   NotReady node stay `not_ready_grace` (Kubernetes waits 300 s before it
   evicts them, REFERENCE.md) while their replacement starts: a kubelet
   restart or a network blip does not cost a warm replica.

Never fewer ready replicas because of a signal: nothing serving is removed
before its replacement is ready, unless the cloud's deadline forces it.
Never a loop: pods are only deleted when their node is going; moves between
healthy groups happen through Deployment counts after the replacements are
ready, and an unavailable capacity is retried after an increasing wait.

Signals come in two kinds. Cloud events (SQS) happen once: they are kept in
the state until no pod of the model is left on the node. Node state (taints,
NotReady) is re-read every time: a node that recovers clears its doom.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from gpufleet.api.timestamps import kube_time
from gpufleet.api.v1alpha1 import Capacity, CapacityCooldown, DoomedNode, SpotStatus
from gpufleet.planning.placement import CapacityType, Constraints, PlacementGroup, plan_placement, spot_count
from gpufleet.planning.report import ConditionView, EventView

SPOT_INTERRUPTED = "SpotInterrupted"
ON_DEMAND_FALLBACK = "OnDemandFallback"
ZONE_DEGRADED = "ZoneDegraded"

# Signals that say the zone's spot market is taking capacity back. A disruption
# (Karpenter consolidation or drift) and a scheduled change are the cluster's or
# AWS's plans, not a shortage, so they move replicas without a cooldown.
_SPOT_PRESSURE = {"interruption", "rebalance", "stopping", "terminated", "not-ready"}
# Of those, the ones that speak for the instance type's market in the zone (its capacity pool), not only
# for one node: a node NotReady is that node's trouble.
_MARKET = {"interruption", "rebalance", "stopping", "terminated"}
_EVENT_REASONS = {
    "interruption": "SpotInterruption",
    "rebalance": "RebalanceRecommendation",
    "stopping": "InstanceStopping",
    "terminated": "InstanceTerminated",
    "scheduled-change": "ScheduledChange",
    "disruption": "NodeDisruption",
    "not-ready": "NodeNotReady",
}
_COOLDOWN_REASONS = {
    "interruption": "Interruption",
    "rebalance": "Rebalance",
    "stopping": "Interruption",
    "terminated": "NodeLost",
    "not-ready": "NodeLost",
}
MAX_BACKOFF_FACTOR = 4
Scope = Literal["spot", "on-demand", "zone"]


@dataclass(frozen=True)
class Doom:
    """A node that is going (or may go), with the replicas' deadline."""

    node: str
    zone: str
    capacity_type: CapacityType
    kind: str  # a gpufleet.planning.capacity_signals SignalKind
    since: datetime
    deadline: datetime | None = None
    instance_id: str = ""
    detail: str = ""
    source: Literal["sqs", "node"] = "sqs"
    instance_type: str = ""  # the node's node.kubernetes.io/instance-type; "" when unknown

    def supersedes(self, old: Doom | None) -> bool:
        """New for its node, or a sooner deadline (a rebalance recommendation followed by the warning)."""
        if old is None:
            return True
        return self.deadline is not None and (old.deadline is None or self.deadline < old.deadline)

    def to_status(self) -> DoomedNode:
        return DoomedNode(
            node=self.node,
            zone=self.zone,
            capacity_type=self.capacity_type,
            kind=self.kind,
            since=self.since,
            deadline=self.deadline,
            instance_id=self.instance_id,
            detail=self.detail[:256],
            source=self.source,
            instance_type=self.instance_type,
        )

    @classmethod
    def from_status(cls, stored: DoomedNode) -> Doom:
        return cls(
            node=stored.node,
            zone=stored.zone,
            capacity_type=stored.capacity_type,
            kind=stored.kind,
            since=stored.since,
            deadline=stored.deadline,
            instance_id=stored.instance_id,
            detail=stored.detail,
            source=stored.source,
            instance_type=stored.instance_type,
        )


def keep_first_sightings(before: Sequence[Doom], now_read: Sequence[Doom]) -> list[Doom]:
    """A node's dooms as read now, each kind keeping the time and deadline of its first sighting.

    A NoSchedule taint has no timeAdded, so its deadline reads "now + notice" at every look: without
    this the deadline would move away for ever and the replicas would never be drained.
    """
    first = {d.kind: d for d in before}
    return [
        replace(d, since=first[d.kind].since, deadline=first[d.kind].deadline) if d.kind in first else d
        for d in now_read
    ]


@dataclass(frozen=True)
class Cooldown:
    zone: str
    scope: Scope
    until: datetime
    reason: str
    strikes: int = 1

    def active(self, now: datetime) -> bool:
        return self.until > now

    def to_status(self) -> CapacityCooldown:
        return CapacityCooldown(
            zone=self.zone, scope=self.scope, until=self.until, reason=self.reason, strikes=self.strikes
        )

    @classmethod
    def from_status(cls, stored: CapacityCooldown) -> Cooldown:
        return cls(stored.zone, stored.scope, stored.until, stored.reason, stored.strikes)


@dataclass(frozen=True)
class FailoverState:
    """What survives a restart, in status.spot."""

    doomed: tuple[Doom, ...] = ()  # cloud events, and node state as last read (to tell what is new)
    cooldowns: tuple[Cooldown, ...] = ()  # active ones, and expired ones remembered for their strikes
    interruptions_handled: int = 0
    last_interruption: datetime | None = None
    fallback_since: datetime | None = None

    def to_status(self) -> SpotStatus:
        return SpotStatus(
            interruptions_handled=self.interruptions_handled,
            doomed_nodes=[d.to_status() for d in self.doomed],
            cooldowns=[c.to_status() for c in self.cooldowns],
            last_interruption_time=self.last_interruption,
            fallback_since=self.fallback_since,
        )

    @classmethod
    def from_status(cls, stored: SpotStatus | None) -> FailoverState:
        """status.spot as written; None (absent or unreadable: see observe.stored_status) → empty.

        Empty loses cooldowns and pending drains, never replicas: the next
        signals rebuild them, and nothing is deleted without a signal.
        """
        if stored is None:
            return cls()
        return cls(
            doomed=tuple(Doom.from_status(d) for d in stored.doomed_nodes),
            cooldowns=tuple(Cooldown.from_status(c) for c in stored.cooldowns),
            interruptions_handled=stored.interruptions_handled,
            last_interruption=stored.last_interruption_time,
            fallback_since=stored.fallback_since,
        )

    def to_json(self) -> dict[str, Any]:
        return self.to_status().to_json()

    @classmethod
    def from_json(cls, data: Any) -> FailoverState:
        """status.spot as stored; anything that does not read as SpotStatus → an empty state."""
        try:
            return cls.from_status(SpotStatus.model_validate(data))
        except ValidationError:
            return cls()


@dataclass(frozen=True)
class PodView:
    """One live (not terminating) pod of the model."""

    name: str
    zone: str  # the group's zone label ("" without zones)
    capacity_type: CapacityType
    node: str  # "" while unscheduled
    ready: bool
    unschedulable_since: datetime | None = None

    @property
    def group(self) -> tuple[str, CapacityType]:
        return (self.zone, self.capacity_type)


@dataclass(frozen=True)
class FailoverSettings:
    """The operator-wide knobs (GPUFLEET_* settings); their defaults live in gpufleet.config only."""

    max_surge: int  # extra pods a planned move runs at once (at least 1 is used)
    drain: timedelta  # retire a doomed replica this long before its deadline
    unavailable_after: timedelta  # pending this long → that capacity is unavailable
    return_after: timedelta  # first wait before unavailable capacity is retried
    rebalance_starts_replacements: bool  # off: rebalance recommendations are ignored; warnings still act
    zone_loss_window: timedelta  # node losses counted together by the zone-loss rule
    not_ready_grace: (
        timedelta  # pods on a NotReady node are removed after this (its replacement starts at once)
    )


@dataclass(frozen=True)
class FailoverPolicy:
    """One model's failover policy: its capacity spec, the operator's settings and the spot prices."""

    capacity: Capacity
    settings: FailoverSettings
    spot_prices: Mapping[str, float] = field(default_factory=dict)  # zone → price, cheaper first

    @property
    def cooldown(self) -> timedelta:
        return timedelta(seconds=self.capacity.zone_cooldown_seconds)


@dataclass(frozen=True)
class FailoverPlan:
    groups: tuple[PlacementGroup, ...]  # Deployment counts to apply: targets plus kept pods
    targets: tuple[PlacementGroup, ...]  # where the desired replicas go
    retire: tuple[str, ...]  # pods to delete now
    retire_reasons: tuple[str, ...]  # per retired pod: replaced, not-ready or deadline
    evict: tuple[bool, ...]  # per retired pod: leave through the eviction API (it serves) or delete
    kept: tuple[str, ...]  # leaving pods kept serving until their replacements are ready
    state: FailoverState
    conditions: tuple[ConditionView, ...]
    events: tuple[EventView, ...]
    requeue_after: float | None  # seconds until a kept pod must be drained


def _merge_cooldown(cooldowns: dict[tuple[str, Scope], Cooldown], new: Cooldown) -> None:
    key = (new.zone, new.scope)
    old = cooldowns.get(key)
    if old is None or new.until > old.until:
        cooldowns[key] = new if old is None else replace(new, strikes=max(new.strikes, old.strikes))


def _unavailable(
    policy: FailoverPolicy,
    pods: Sequence[PodView],
    cooldowns: Mapping[tuple[str, Scope], Cooldown],
    now: datetime,
) -> list[Cooldown]:
    """Groups pending past `unavailable_after` → cooldowns that grow with each repeat."""
    found = []
    stuck = {
        p.group
        for p in pods
        if p.unschedulable_since is not None
        and now - p.unschedulable_since >= policy.settings.unavailable_after
    }
    for zone, capacity_type in sorted(stuck):
        if not zone:
            continue  # no zone constraint: nowhere else to send them
        # Pending pods say that capacity type is short there, not that the zone is gone.
        scope: Scope = capacity_type
        old = cooldowns.get((zone, scope))
        if old is not None and old.active(now):
            continue
        # Found unavailable again within a wait of its last cooldown: wait longer this time.
        recent = old is not None and now - old.until <= policy.settings.return_after
        strikes = old.strikes + 1 if recent and old is not None else 1
        factor = min(2 ** (strikes - 1), MAX_BACKOFF_FACTOR)
        reason = "SpotUnavailable" if scope == "spot" else "OnDemandUnavailable"
        found.append(Cooldown(zone, scope, now + policy.settings.return_after * factor, reason, strikes))
    return found


def _groups(groups: Iterable[PlacementGroup]) -> dict[tuple[str, CapacityType], int]:
    return {g.key: g.replicas for g in groups}


def plan_failover(
    policy: FailoverPolicy,
    desired: int,
    pods: Sequence[PodView],
    state: FailoverState,
    now: datetime,
    *,
    cloud_dooms: Sequence[Doom] = (),
    node_dooms: Sequence[Doom] = (),
    lost_zones: Mapping[str, datetime] = {},
    pools: frozenset[str] = frozenset(),
) -> FailoverPlan:
    """The placement, the pods to keep and drain, and the state to persist.

    `pools`: the instance types of the nodes the model's pods run on (its capacity pools with the zones).
    """
    if now.tzinfo is None:
        raise ValueError("plan_failover() needs a timezone-aware now")
    if not policy.settings.rebalance_starts_replacements:
        cloud_dooms = [d for d in cloud_dooms if d.kind != "rebalance"]
        node_dooms = [d for d in node_dooms if d.kind != "rebalance"]
    capacity = policy.capacity
    zones = list(capacity.zones)
    events: list[EventView] = []
    pods_on: dict[str, list[PodView]] = {}
    for pod in pods:
        if pod.node:
            pods_on.setdefault(pod.node, []).append(pod)

    # 1. Dooms: cloud events persist until the node holds none of our pods; node state is as read now.
    known = {d.node: d for d in state.doomed if d.source == "sqs"}
    previous_nodes = {d.node for d in state.doomed}
    handled, last = state.interruptions_handled, state.last_interruption
    fresh: list[Doom] = []
    for doom in cloud_dooms:
        old = known.get(doom.node)
        if doom.supersedes(old):
            known[doom.node] = doom if old is None else replace(doom, since=old.since)
            if old is None:
                fresh.append(doom)
            elif pods_on.get(doom.node):
                events.append(_doom_event(doom, pods_on[doom.node], policy, "escalated"))
    linger = max(policy.cooldown, timedelta(minutes=10))
    # Only dooms of nodes with our pods are ours to persist; the others can only cool their pool down.
    cloud = {
        node: d
        for node, d in known.items()
        if pods_on.get(node) or (node in previous_nodes and now - (d.deadline or d.since) < linger)
    }
    node_level = {d.node: d for d in node_dooms if d.node not in cloud and pods_on.get(d.node)}
    dooms = {**cloud, **node_level}
    for doom in fresh + [d for d in node_level.values() if d.node not in previous_nodes]:
        hit = pods_on.get(doom.node, [])
        if hit:
            handled += 1
            last = doom.since if last is None else max(last, doom.since)
            events.append(_doom_event(doom, hit, policy, "new"))

    def presses(doom: Doom) -> bool:
        """Whether a signal says this model's spot capacity in its zone is short."""
        if doom.capacity_type != "spot" or doom.kind not in _SPOT_PRESSURE or doom.zone not in zones:
            return False
        if pods_on.get(doom.node) or doom.node in previous_nodes:
            return True
        return doom.kind in _MARKET and bool(doom.instance_type) and doom.instance_type in pools

    # 2. Cooldowns: spot pressure on the model's pools, unavailable groups, lost zones.
    cooldowns = {
        (c.zone, c.scope): c for c in state.cooldowns if now - c.until < policy.settings.return_after * 4
    }
    before_active = {key for key, c in cooldowns.items() if c.active(now)}
    if zones:
        for doom in [*cloud_dooms, *node_dooms, *cloud.values()]:
            if presses(doom):
                until = doom.since + policy.cooldown
                if until > now:
                    _merge_cooldown(
                        cooldowns, Cooldown(doom.zone, "spot", until, _COOLDOWN_REASONS[doom.kind])
                    )
        for zone, since in lost_zones.items():
            if zone in zones:
                _merge_cooldown(
                    cooldowns, Cooldown(zone, "zone", max(since, now) + policy.cooldown, "ZoneLost")
                )
        for cooldown in _unavailable(policy, pods, cooldowns, now):
            _merge_cooldown(cooldowns, cooldown)
    active = [c for c in cooldowns.values() if c.active(now)]
    for cooldown in sorted(active, key=lambda c: (c.zone, c.scope)):
        if (cooldown.zone, cooldown.scope) not in before_active and cooldown.reason in (
            "ZoneLost",
            "SpotUnavailable",
            "OnDemandUnavailable",
        ):
            what = "zone" if cooldown.scope == "zone" else f"{cooldown.scope} capacity in zone"
            events.append(
                EventView(
                    "Warning",
                    cooldown.reason,
                    f"{what} {cooldown.zone} unavailable ({cooldown.reason}); new replicas avoid it until "
                    f"{kube_time(cooldown.until)}",
                )
            )

    # 3. Placement with the constraints; serving pods keep their slots.
    doomed_nodes = set(dooms)
    healthy: Counter[tuple[str, CapacityType]] = Counter()
    healthy_ready: Counter[tuple[str, CapacityType]] = Counter()
    for pod in pods:
        if pod.node not in doomed_nodes:
            healthy[pod.group] += 1
            healthy_ready[pod.group] += pod.ready
    constraints = Constraints(
        lost_zones=frozenset(c.zone for c in active if c.scope == "zone"),
        spot_excluded_zones=frozenset(c.zone for c in active if c.scope == "spot"),
        on_demand_excluded_zones=frozenset(c.zone for c in active if c.scope == "on-demand"),
        fallback=capacity.fallback_to_on_demand,
        spot_prices=policy.spot_prices,
    )
    unconstrained = _groups(
        plan_placement(
            desired,
            capacity,
            Constraints(fallback=capacity.fallback_to_on_demand, spot_prices=policy.spot_prices),
        )
    )
    # A lost zone holds nothing: its pods only look ready until the node controller catches up.
    serving = {k: n for k, n in healthy_ready.items() if k[0] not in constraints.lost_zones}
    target = _hold_serving(_groups(plan_placement(desired, capacity, constraints)), unconstrained, serving)
    # Whether the spec puts any replica on spot at all (placement rule 2), cooldowns aside.
    wants_spot = spot_count(max(0, desired - capacity.on_demand_replicas), capacity.spot_percent) > 0
    fallback = wants_spot and _spot_total(target) < _spot_total(unconstrained)
    fallback_since = state.fallback_since
    if fallback and fallback_since is None:
        fallback_since = now
        events.append(
            EventView(
                "Warning",
                "OnDemandFallback",
                "no zone has spot capacity to use; spot replicas run on on-demand until a spot cooldown ends",
            )
        )
    elif not fallback and fallback_since is not None:
        fallback_since = None
        if wants_spot:
            events.append(
                EventView("Normal", "SpotRestored", "spot capacity is usable again; replicas return to spot")
            )

    # 4. Make before break.
    filled = sum(min(healthy_ready[key], target.get(key, 0)) for key in set(healthy_ready) | set(target))
    shortfall = max(0, desired - filled)
    budget = shortfall
    counts = dict(target)
    moving = 0
    for key in sorted(healthy):
        excess_ready = min(healthy_ready[key], max(0, healthy[key] - target.get(key, 0)))
        keep = min(budget, excess_ready)
        if keep:
            counts[key] = counts.get(key, 0) + keep
            budget -= keep
            moving += keep
    _bound_the_move(counts, target, healthy, moving - max(1, policy.settings.max_surge))
    doomed_pods = [p for p in pods if p.node in doomed_nodes]

    def time_left(pod: PodView) -> float:
        deadline = dooms[pod.node].deadline
        return float("inf") if deadline is None else (deadline - now).total_seconds()

    retire: list[str] = []
    reasons: list[str] = []
    evict: list[bool] = []
    kept_pods: list[str] = []
    waits: list[float] = []
    drain = policy.settings.drain.total_seconds()
    for pod in sorted(doomed_pods, key=lambda p: (-time_left(p), p.name)):
        left = time_left(pod)
        doom = dooms[pod.node]
        unreachable_for = (now - doom.since).total_seconds()
        grace = policy.settings.not_ready_grace.total_seconds()
        if doom.kind == "not-ready" and unreachable_for < grace and left > drain:
            # Not serving, but the node may come back: it stays while its replacement starts.
            counts[pod.group] = counts.get(pod.group, 0) + 1
            kept_pods.append(pod.name)
            waits.append(grace - unreachable_for)
            continue
        if pod.ready and budget > 0 and left > drain:
            budget -= 1
            counts[pod.group] = counts.get(pod.group, 0) + 1
            kept_pods.append(pod.name)
            if left != float("inf"):
                waits.append(left - drain)
            continue
        retire.append(pod.name)
        evict.append(pod.ready)
        if not pod.ready:
            reason, why = "not-ready", "it is not serving"
        elif left <= drain:
            reason, why = "deadline", f"the deadline is {max(0.0, left):.0f}s away"
        else:
            reason, why = "replaced", "its replacement is ready"
        reasons.append(reason)
        events.append(
            EventView("Normal", "DrainedReplica", f"Removing pod {pod.name} on node {pod.node}: {why}")
        )

    groups = tuple(
        PlacementGroup(zone, capacity_type, counts[(zone, capacity_type)])
        for zone, capacity_type in sorted(counts)
        if counts[(zone, capacity_type)] > 0
    )
    new_state = FailoverState(
        doomed=tuple(sorted(dooms.values(), key=lambda d: d.node)),
        cooldowns=tuple(sorted(cooldowns.values(), key=lambda c: (c.zone, c.scope))),
        interruptions_handled=handled,
        last_interruption=last,
        fallback_since=fallback_since,
    )
    conditions = _conditions(
        dooms, pods_on, kept_pods, retire, active, fallback, fallback_since, handled, last
    )
    return FailoverPlan(
        groups=groups,
        targets=tuple(
            PlacementGroup(zone, capacity_type, n) for (zone, capacity_type), n in sorted(target.items()) if n
        ),
        retire=tuple(retire),
        retire_reasons=tuple(reasons),
        evict=tuple(evict),
        kept=tuple(kept_pods),
        state=new_state,
        conditions=conditions,
        events=tuple(events),
        requeue_after=max(1.0, min(waits)) if waits else None,
    )


def _spot_total(groups: Mapping[tuple[str, CapacityType], int]) -> int:
    return sum(n for (_, capacity_type), n in groups.items() if capacity_type == "spot")


def _hold_serving(
    target: dict[tuple[str, CapacityType], int],
    unconstrained: Mapping[tuple[str, CapacityType], int],
    serving: Mapping[tuple[str, CapacityType], int],
) -> dict[tuple[str, CapacityType], int]:
    """Targets where no constraint takes the slot of a serving pod: a group that the cooldowns left with
    fewer replicas than it would have without them keeps as many as its ready pods on healthy nodes,
    taken back from the groups that gained most from the constraints. Totals are unchanged."""
    held = dict(target)
    for key in sorted(unconstrained):
        missing = min(serving.get(key, 0), unconstrained[key]) - held.get(key, 0)
        while missing > 0:
            gainers = [k for k in held if held[k] > unconstrained.get(k, 0)]
            donor = max(gainers, key=lambda k: (held[k] - unconstrained.get(k, 0), k))
            held[donor] -= 1
            held[key] = held.get(key, 0) + 1
            missing -= 1
    return {k: n for k, n in held.items() if n > 0}


def _bound_the_move(
    counts: dict[tuple[str, CapacityType], int],
    target: Mapping[tuple[str, CapacityType], int],
    healthy: Mapping[tuple[str, CapacityType], int],
    overflow: int,
) -> None:
    """Hold back `overflow` of the new pods the groups below their target would start, largest growth
    first: a planned move runs at most max_surge pods above the desired count (the kept ones)."""
    growth = {k: max(0, n - healthy.get(k, 0)) for k, n in target.items()}
    while overflow > 0 and any(growth.values()):
        key = max(growth, key=lambda k: (growth[k], k))
        growth[key] -= 1
        counts[key] -= 1
        overflow -= 1


def _doom_event(doom: Doom, hit: Sequence[PodView], policy: FailoverPolicy, what: str) -> EventView:
    where = f"node {doom.node}" + (f" ({doom.instance_id})" if doom.instance_id else "")
    where += f" in {doom.zone or 'an unknown zone'}, {doom.capacity_type}"
    names = ", ".join(sorted(p.name for p in hit))
    text = f"{doom.detail or doom.kind}: {where} hosts {len(hit)} replica(s) ({names})"
    if doom.deadline is not None:
        text += (
            f"; draining by {kube_time(doom.deadline - policy.settings.drain)}, "
            f"before the deadline {kube_time(doom.deadline)}"
        )
    text += "; replacements ordered in the other zones" if what == "new" else "; the deadline moved closer"
    return EventView("Warning", _EVENT_REASONS.get(doom.kind, "CapacitySignal"), text)


def _conditions(
    dooms: Mapping[str, Doom],
    pods_on: Mapping[str, Sequence[PodView]],
    kept: Sequence[str],
    retire: Sequence[str],
    active: Sequence[Cooldown],
    fallback: bool,
    fallback_since: datetime | None,
    handled: int,
    last: datetime | None,
) -> tuple[ConditionView, ...]:
    hit = [d for d in dooms.values() if pods_on.get(d.node)]
    if hit:
        first = min(hit, key=lambda d: (d.deadline or datetime.max.replace(tzinfo=UTC), d.node))
        reason = _EVENT_REASONS.get(first.kind, "CapacitySignal")
        message = (
            f"{len(hit)} node(s) going ({', '.join(sorted(d.node for d in hit))}); "
            f"{len(kept)} replica(s) kept serving until replaced, {len(retire)} draining now"
        )
        interrupted = ConditionView(SPOT_INTERRUPTED, True, reason, message)
    else:
        seen = f"; last at {kube_time(last)}" if last is not None else ""
        interrupted = ConditionView(
            SPOT_INTERRUPTED, False, "NoneInProgress", f"{handled} capacity signal(s) handled{seen}"
        )
    if fallback:
        cooling = ", ".join(sorted(f"{c.zone} ({c.reason})" for c in active)) or "all zones"
        since = kube_time(fallback_since) if fallback_since else "now"
        fallback_view = ConditionView(
            ON_DEMAND_FALLBACK,
            True,
            "SpotUnavailable",
            f"spot replicas on on-demand since {since}: {cooling}",
        )
    else:
        fallback_view = ConditionView(ON_DEMAND_FALLBACK, False, "SpotAvailable", "spot replicas run on spot")
    lost = sorted((c for c in active if c.scope == "zone"), key=lambda c: c.zone)
    spot = sorted((c for c in active if c.scope != "zone"), key=lambda c: (c.zone, c.scope))
    if lost or spot:
        parts = [f"{c.zone} until {kube_time(c.until)} ({c.reason})" for c in lost] + [
            f"{c.scope} in {c.zone} until {kube_time(c.until)} ({c.reason})" for c in spot
        ]
        degraded = ConditionView(
            ZONE_DEGRADED,
            True,
            "ZoneLost"
            if lost
            else ("SpotCoolingDown" if any(c.scope == "spot" for c in spot) else "OnDemandUnavailable"),
            "avoiding " + "; ".join(parts),
        )
    else:
        degraded = ConditionView(ZONE_DEGRADED, False, "AllZonesAvailable", "no zone is avoided")
    return (interrupted, fallback_view, degraded)
