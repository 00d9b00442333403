"""Executes autoscaler evaluations: list pods → read metrics → plan (gpufleet.planning.autoscale) → write.

It writes spec.replicas through the scale subresource, as kubectl scale and
an HPA do, so the reconciler turns it into Deployments like any other
change. Its state lives in status.autoscaler, so a restarted operator carries
on with the same recommendation history, and it keeps nothing per
ModelDeployment in memory: a deleted one leaves nothing here to forget. Its
Events go through the KubeApi it is given (runtime.events.QueuedEvents in the
operator), so posting them never delays an evaluation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Executor
from datetime import datetime
from typing import Any, Protocol, TypeVar, runtime_checkable

from gpufleet.adapters.kube import KubeApi
from gpufleet.adapters.serving_metrics import MetricsReader, ModelMetrics
from gpufleet.api.v1alpha1 import API_VERSION, KIND
from gpufleet.planning.autoscale import AutoscalePlan, autoscale_target, autoscaled_spec, plan_autoscale
from gpufleet.planning.scaling import Decision, ScalingTimings
from gpufleet.planning.workloads import selector_string
from gpufleet.runtime.events import post_event

NO_PROMETHEUS = "no Prometheus configured (set GPUFLEET_PROMETHEUS_URL); holding replicas"

K = TypeVar("K", bound=Hashable)


@runtime_checkable
class SweepSource(Protocol):
    def sweep(self) -> MetricsReader: ...


class Autoscaler:
    def __init__(
        self,
        kube: KubeApi,
        metrics: MetricsReader | None,
        clock: Callable[[], datetime],
        timings: ScalingTimings,
    ) -> None:
        self.kube = kube
        self.metrics = metrics
        self.clock = clock
        self.timings = timings

    def sweep_reader(self) -> MetricsReader | None:
        """The reader for one sweep: fleet-wide queries are asked once and shared by its evaluations."""
        if self.metrics is None:
            return None
        return self.metrics.sweep() if isinstance(self.metrics, SweepSource) else self.metrics

    def evaluate(self, body: Mapping[str, Any], metrics: MetricsReader | None = None) -> Decision | None:
        """Evaluate once (with this sweep's `metrics`, or a reading of its own); None when autoscaling
        is off or the spec is not usable."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        spec = autoscaled_spec(body)
        if spec is None:
            return None
        now = self.clock()
        target = autoscale_target(body, spec, self.kube.list("v1", "Pod", namespace, selector_string(name)))
        reader = metrics or self.metrics
        if reader is None:
            readings = ModelMetrics(now, None, None, None, None, error=NO_PROMETHEUS)
        else:
            readings = reader.read(namespace, target.model_name, target.ready_pods, mig=target.mig, now=now)
        plan = plan_autoscale(target, readings, self.timings, now)
        self.execute(body, plan, now)
        return plan.decision

    def execute(self, body: Mapping[str, Any], plan: AutoscalePlan, now: datetime) -> None:
        """Status, then spec.replicas, then the Event. The status holds lastScaleTime, which spaces the
        scale-down steps: a process killed between the writes finds the step recorded and not taken,
        and takes it one interval later; in the other order it would take a second step at once."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        if plan.status_patch is not None:
            self.kube.patch_status(API_VERSION, KIND, namespace, name, plan.status_patch)
        if plan.scale_to is not None:
            self.kube.patch_scale(API_VERSION, KIND, namespace, name, plan.scale_to)
        if plan.event is not None:
            post_event(self.kube, body, plan.event, now)


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
