"""Executes canary judgements: due? → list pods → read their figures → judge → write status.analysis.

It runs in the serving-metrics sweep beside the autoscaler, for ModelDeployments whose canary is at
its step's weight and has `spec.rollout.analysis`. It writes only `status.analysis` (a merge patch the
reconcile leaves alone); the reconcile reads it to end a step or roll the canary back, so a judgement
survives a restart and is level-triggered like every other input. Prometheus failing or answering
nothing is a NoData judgement with the reason: the step holds, nothing is rolled back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from gpufleet.adapters.kube import KubeApi
from gpufleet.adapters.serving_metrics import PodFigures, PrometheusMetrics, canary_pod_figures
from gpufleet.api.v1alpha1 import API_VERSION, KIND, AnalysisStatus
from gpufleet.planning.analysis import (
    AnalysisRequest,
    Judgement,
    PodCounts,
    add_pods,
    analysis_due,
    judge,
    judgement_status,
)
from gpufleet.planning.observe import ObservedPod, observe_pod
from gpufleet.planning.workloads import selector_string

NO_PROMETHEUS = "no Prometheus configured (set GPUFLEET_PROMETHEUS_URL): the canary cannot be judged"

PodFiguresReader = Callable[[str, list[str], float], dict[str, PodFigures]]


def _counts(figures: PodFigures) -> PodCounts:
    return PodCounts(figures.requests, figures.errors, figures.ttft or {}, figures.itl or {})


def prometheus_reader(metrics: PrometheusMetrics | None) -> PodFiguresReader | None:
    if metrics is None:
        return None
    return lambda namespace, pods, window: canary_pod_figures(metrics, namespace, pods, window)


class CanaryAnalyst:
    def __init__(self, kube: KubeApi, read: PodFiguresReader | None, clock: Callable[[], datetime]) -> None:
        self.kube = kube
        self.clock = clock
        self.read = read

    def evaluate(self, body: Mapping[str, Any]) -> AnalysisStatus | None:
        """Judge the canary if a judgement is due; the status written, or None."""
        now = self.clock()
        request = analysis_due(body, now)
        if request is None:
            return None
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        pods = [observe_pod(p) for p in self.kube.list("v1", "Pod", namespace, selector_string(name))]
        live = [p for p in pods if not p.terminating]
        judgement = self._judge(request, namespace, live)
        status = judgement_status(request, judgement, now)
        self.kube.patch_status(API_VERSION, KIND, namespace, name, {"analysis": status.to_json()})
        return status

    def _judge(self, request: AnalysisRequest, namespace: str, pods: list[ObservedPod]) -> Judgement:
        if self.read is None:
            return Judgement("NoData", NO_PROMETHEUS, None, None)
        try:
            figures = self.read(namespace, [p.name for p in pods], request.window_seconds)
        except Exception as error:  # any failure to read is missing data: hold, never roll back
            return Judgement("NoData", f"Prometheus: {type(error).__name__}: {error}"[:500], None, None)

        def counts_of(chosen: list[ObservedPod]) -> list[PodCounts]:
            return [_counts(figures[p.name]) for p in chosen if p.name in figures]

        canary = counts_of([p for p in pods if request.is_canary(p.slot, p.revision_hash)])
        stable = counts_of([p for p in pods if p.slot == request.stable_slot])
        return judge(request.settings, add_pods(canary), add_pods(stable))
