"""One autoscaler evaluation of one ModelDeployment: observe → decide (planning.scaling) → scale → status.

It writes spec.replicas through the scale subresource, as kubectl scale and
an HPA do, so the reconciler turns it into Deployments like any other
change. Its state lives in status.autoscaler, so a restarted operator carries
on with the same recommendation history.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Executor
from datetime import datetime, time
from typing import Any, TypeVar

from pydantic import ValidationError

from gpufleet.adapters.kube import KubeApi, as_stored, with_deletions
from gpufleet.adapters.metrics import MetricsReader, ModelMetrics
from gpufleet.api.v1alpha1 import API_VERSION, KIND, WEEKDAYS, ModelDeploymentSpec
from gpufleet.handlers.reconcile import observe_pod
from gpufleet.planning.scaling import Decision, ScalingPolicy, ScalingState, Schedule, Signals, decide
from gpufleet.planning.timestamps import kube_time
from gpufleet.planning.workloads import selector_string

log = logging.getLogger("gpufleet.autoscale")

NO_PROMETHEUS = "no Prometheus configured (set GPUFLEET_PROMETHEUS_URL); holding replicas"

K = TypeVar("K", bound=Hashable)


def policy_for(spec: ModelDeploymentSpec, timings: Mapping[str, int] | None = None) -> ScalingPolicy:
    """The spec's policy; `timings` overrides the planner's windows (operator settings)."""
    auto = spec.autoscaling
    return ScalingPolicy(
        **(timings or {}),
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


class Autoscaler:
    def __init__(
        self,
        kube: KubeApi,
        metrics: MetricsReader | None,
        clock: Callable[[], datetime],
        timings: Mapping[str, int] | None = None,
    ) -> None:
        self.kube = kube
        self.metrics = metrics
        self.clock = clock
        self.timings = dict(timings or {})

    def evaluate(self, body: Mapping[str, Any]) -> Decision | None:
        """Evaluate once; None when autoscaling is off or the spec is not usable."""
        meta = body["metadata"]
        try:
            spec = ModelDeploymentSpec.model_validate(body["spec"])
        except ValidationError:
            return None  # the reconciler reports Valid=False; never scale on a spec we cannot read
        if not spec.autoscaling.enabled:
            return None
        namespace, name = meta["namespace"], meta["name"]
        now = self.clock()
        # The reconciler's reading of a pod, so both count ready and terminating pods alike.
        pods = [
            observed
            for observed in map(observe_pod, self.kube.list("v1", "Pod", namespace, selector_string(name)))
            if not observed.terminating
        ]
        ready = [p for p in pods if p.ready]
        if self.metrics is None:
            observed = ModelMetrics(now, None, None, None, None, error=NO_PROMETHEUS)
        else:
            observed = self.metrics.read(
                namespace,
                spec.model.served_name or name,
                [p.name for p in ready],
                mig=spec.accelerator.mig_profile is not None,
                now=now,
            )
        signals = Signals(
            sampled_at=observed.sampled_at,
            waiting=observed.waiting,
            running=observed.running,
            kv_cache_usage=observed.kv_cache_usage,
            gpu_utilization=observed.gpu_utilization,
            activation=observed.activation,
            ready_replicas=len(ready),
            starting_replicas=len(pods) - len(ready),
            error=observed.error,
        )
        previous = (body.get("status") or {}).get("autoscaler") or {}
        state = ScalingState.from_json(previous.get("state"))
        decision = decide(policy_for(spec, self.timings), spec.replicas, signals, state, now)
        last_scale = previous.get("lastScaleTime")
        if decision.replicas != spec.replicas:
            self.kube.patch_scale(API_VERSION, KIND, namespace, name, decision.replicas)
            last_scale = kube_time(now)
            self._event(body, decision, spec.replicas, now)
        block = {
            "active": decision.active,
            "reason": decision.reason,
            "message": decision.message[:1024],
            "limited": decision.limited,
            "desiredReplicas": decision.replicas,
            "lastScaleTime": last_scale,
            "metrics": {
                "waiting": signals.waiting,
                "running": signals.running,
                "kvCacheUsage": signals.kv_cache_usage,
                "gpuUtilization": signals.gpu_utilization,
                "readyReplicas": signals.ready_replicas,
                "startingReplicas": signals.starting_replicas,
            },
            "state": decision.state.to_json(),
        }
        # Written only when something changed: an idle fleet costs no writes. A merge patch drops
        # null members, so the stored block never has them; compare like with like, or a model
        # without GPU metrics or a first scale would be written at every evaluation. Members the
        # new block lacks (an ended panic's panicUntil) are deleted, or they would differ for ever.
        if as_stored(block) != as_stored(previous):
            self.kube.patch_status(
                API_VERSION, KIND, namespace, name, {"autoscaler": with_deletions(block, previous)}
            )
        return decision

    def _event(self, body: Mapping[str, Any], decision: Decision, before: int, now: datetime) -> None:
        text = f"Scaled from {before} to {decision.replicas} replicas ({decision.reason}): {decision.message}"
        try:
            self.kube.create_event(dict(body), "Normal", "Autoscaled", text, now)
        except Exception:  # an event lost is not worth failing the evaluation
            log.warning("could not post the scale event of %s", body["metadata"]["name"], exc_info=True)


async def evaluate_all(
    bodies: Mapping[K, Mapping[str, Any]],
    evaluate: Callable[[Mapping[str, Any]], Decision | None],
    executor: Executor,
) -> dict[K, Decision | Exception | None]:
    """One sweep: every body evaluated in `executor`'s threads, as many at once as it has workers.

    Evaluations wait on the API server and Prometheus, not the CPU, so a sweep of many models takes
    about (models / workers) evaluations instead of one after another. A failed evaluation is that
    model's result, not the sweep's.
    """
    loop = asyncio.get_running_loop()

    async def one(body: Mapping[str, Any]) -> Decision | Exception | None:
        try:
            return await loop.run_in_executor(executor, evaluate, body)
        except Exception as error:
            return error

    results = await asyncio.gather(*(one(body) for body in bodies.values()))
    return dict(zip(bodies, results, strict=True))
