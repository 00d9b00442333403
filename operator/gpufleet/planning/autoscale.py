"""One autoscaler evaluation as a plan: the ModelDeployment and its pods → what to read, then what to write.

Two steps, because the metric readings are I/O in between:

1. `autoscaled_spec(body)`: whether the model is autoscaled at all (a spec
   that does not read is never scaled: the reconciler reports it); then
   `autoscale_target(body, spec, pods)`: which ready pods, model name and GPU
   kind the metrics are read for.
2. `plan_autoscale(target, readings, timings, now)`: the decision of
   gpufleet.planning.scaling, the scale to write through the scale
   subresource, its Event, and status.autoscaler.

status.autoscaler is written at once when what it decides changes (the
decision, its reason and bounds, the recommendation history, the replica
counts, requests starting or stopping); readings that only move are written
at most every `status_refresh_seconds`, and an unchanged evaluation not at
all. Under load every reading moves, and writing each evaluation was most of
the operator's requests at 200 models (hack/bench/README.md, scale.py).
What a restart then loses is display: the history is always current, and
the idle clock of a model last recorded busy restarts at the restart (later
scale-to-zero, never earlier).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, time
from typing import Any

from pydantic import ValidationError

from gpufleet.api.timestamps import parse_kube_time
from gpufleet.api.v1alpha1 import WEEKDAYS, AutoscalerMetrics, AutoscalerStatus, ModelDeploymentSpec
from gpufleet.planning.merge_patch import as_stored, with_deletions
from gpufleet.planning.observe import Key, key_of, observe_pod, stored_status
from gpufleet.planning.report import EventView
from gpufleet.planning.scaling import (
    Decision,
    MetricReadings,
    Observation,
    ScalingPolicy,
    ScalingState,
    ScalingTimings,
    Schedule,
    decide,
)


def policy_for(spec: ModelDeploymentSpec, timings: ScalingTimings) -> ScalingPolicy:
    auto = spec.autoscaling
    return ScalingPolicy(
        timings=timings,
        min_replicas=spec.min_replicas,
        # Validation requires maxReplicas with autoscaling; without it nothing may grow.
        max_replicas=spec.max_replicas if spec.max_replicas is not None else spec.replicas,
        target_queue_depth=auto.target_queue_depth,
        target_kv_cache_usage=auto.target_kv_cache_usage,
        target_gpu_utilization=auto.target_gpu_utilization,
        scale_down_delay_seconds=auto.scale_down_delay_seconds,
        scale_to_zero_after_seconds=auto.scale_to_zero_after_seconds,
        schedules=tuple(
            Schedule(
                name=window.name,
                days=frozenset(WEEKDAYS.index(day) for day in (window.days or WEEKDAYS)),
                start=time.fromisoformat(window.start),
                end=time.fromisoformat(window.end),
                min_replicas=window.min_replicas,
                timezone=window.time_zone,
            )
            for window in auto.schedules
        ),
    )


@dataclass(frozen=True)
class AutoscaleTarget:
    """An autoscaled model, as the readings are taken for it."""

    key: Key
    spec: ModelDeploymentSpec
    model_name: str  # the served model name its vLLM metrics carry
    ready_pods: tuple[str, ...]
    starting_replicas: int
    mig: bool  # MIG slices report GPU use under another DCGM field
    previous: AutoscalerStatus | None  # status.autoscaler as last written, typed
    previous_stored: Mapping[str, Any] = field(default_factory=dict)  # the same, as stored (for the patch)


def autoscaled_spec(body: Mapping[str, Any]) -> ModelDeploymentSpec | None:
    """The spec when autoscaling is on; None when it is off or the spec cannot be read (the reconciler
    reports that; never scale on a spec we cannot read)."""
    try:
        spec = ModelDeploymentSpec.model_validate(body["spec"])
    except ValidationError:
        return None
    return spec if spec.autoscaling.enabled else None


def autoscale_target(
    body: Mapping[str, Any], spec: ModelDeploymentSpec, pods: Sequence[Mapping[str, Any]]
) -> AutoscaleTarget:
    key = key_of(body)
    live = [p for p in map(observe_pod, pods) if not p.terminating]
    ready = tuple(p.name for p in live if p.ready)
    raw_status = body.get("status") or {}
    stored = raw_status.get("autoscaler") if isinstance(raw_status, Mapping) else None
    return AutoscaleTarget(
        key=key,
        spec=spec,
        model_name=spec.model.served_name or key[1],
        ready_pods=ready,
        starting_replicas=len(live) - len(ready),
        mig=spec.accelerator.mig_profile is not None,
        previous=stored_status(raw_status).autoscaler,
        previous_stored=stored if isinstance(stored, Mapping) else {},
    )


@dataclass(frozen=True)
class AutoscalePlan:
    decision: Decision
    scale_to: int | None  # spec.replicas to write through /scale; None: unchanged
    event: EventView | None
    status: AutoscalerStatus
    status_patch: dict[str, Any] | None  # merge patch of status.autoscaler; None: already stored


def plan_autoscale(
    target: AutoscaleTarget, readings: MetricReadings, timings: ScalingTimings, now: datetime
) -> AutoscalePlan:
    spec, previous = target.spec, target.previous
    observed = Observation(readings, len(target.ready_pods), target.starting_replicas)
    state = ScalingState.from_json(previous.state if previous else None)
    if previous is not None and _busy(
        previous.metrics.waiting, previous.metrics.running, previous.metrics.activation
    ):
        # Recorded busy: its lastActiveTime is as old as the last write, not the last request. Unknown
        # is the safe side: the idle clock starts now.
        state = replace(state, last_active_time=None)
    decision = decide(policy_for(spec, timings), spec.replicas, observed, state, now)
    last_scale = previous.last_scale_time if previous else None
    scale_to, event = None, None
    if decision.replicas != spec.replicas:
        scale_to, last_scale = decision.replicas, now
        event = EventView(
            "Normal",
            "Autoscaled",
            f"Scaled from {spec.replicas} to {decision.replicas} replicas ({decision.reason}): "
            f"{decision.message}",
        )
    status = AutoscalerStatus(
        active=decision.active,
        reason=decision.reason,
        message=decision.message[:1024],
        limited=decision.limited,
        desired_replicas=decision.replicas,
        last_scale_time=last_scale,
        metrics=AutoscalerMetrics(
            waiting=readings.waiting,
            running=readings.running,
            kv_cache_usage=readings.kv_cache_usage,
            gpu_utilization=readings.gpu_utilization,
            activation=readings.activation,
            ready_replicas=observed.ready_replicas,
            starting_replicas=observed.starting_replicas,
            reporting_replicas=readings.reporting_replicas,
        ),
        state=decision.state.to_json(),
        last_evaluation_time=now,
    )
    # A merge patch drops null members, so the stored block never has them: compare like with like, or
    # a model without GPU metrics would be rewritten at every evaluation. Members the new block lacks
    # (an ended panic's panicUntil) are deleted, or they would differ for ever.
    block = status.to_json()
    patch = None
    if _needs_write(as_stored(block), as_stored(target.previous_stored), now, timings.status_refresh_seconds):
        patch = {"autoscaler": with_deletions(block, target.previous_stored)}
    return AutoscalePlan(decision, scale_to, event, status, patch)


def _busy(*signals: float | None) -> bool:
    return any((value or 0.0) > 0 for value in signals)


def _without(block: Mapping[str, Any], drop: frozenset[str], drop_state: frozenset[str]) -> dict[str, Any]:
    kept = {k: v for k, v in block.items() if k not in drop}
    if isinstance(kept.get("state"), Mapping):
        kept["state"] = {k: v for k, v in kept["state"].items() if k not in drop_state}
    return kept


# Timestamps every write changes: never a reason to write on their own.
_STAMPS = frozenset({"lastEvaluationTime"})
# Read on the next evaluation only as estimates, or never read back: new values wait for the refresh.
_READINGS = frozenset({"message", "metrics"})
_READING_STATE = frozenset({"lastActiveTime", "batchPerReplica"})
_COUNTS = ("readyReplicas", "startingReplicas", "reportingReplicas")


def _decisive(block: Mapping[str, Any]) -> dict[str, Any]:
    """What must be stored at once: the decision, the history the windows replay after a restart, the
    replica counts, and whether requests are seen (the idle clock's start)."""
    decisive = _without(block, _STAMPS | _READINGS, _READING_STATE)
    metrics = block.get("metrics") or {}
    decisive["counts"] = [metrics.get(name) for name in _COUNTS]
    decisive["busy"] = _busy(*(metrics.get(name) for name in ("waiting", "running", "activation")))
    return decisive


def _needs_write(
    new: Mapping[str, Any], stored: Mapping[str, Any], now: datetime, refresh_seconds: int
) -> bool:
    if _decisive(new) != _decisive(stored):
        return True
    if _without(new, _STAMPS, frozenset({"lastActiveTime"})) == _without(
        stored, _STAMPS, frozenset({"lastActiveTime"})
    ):
        return False  # nothing but the time moved (an idle or steady model): no write at all
    try:
        last = parse_kube_time(stored.get("lastEvaluationTime"))
    except ValueError:
        return True  # written before this field, or by hand
    return (now - last).total_seconds() >= refresh_seconds
