"""Metrics faults against the real Prometheus: partial, stale and missing signals scale nothing down.

An autoscaled model is taken to 3 replicas by load; the load stops, so every evaluation that trusts what it
reads asks for 1. While the fault lasts (longer than scaleDownDelaySeconds plus a step) replicas must stay
at 3; when it ends, the same model scales down, which shows the hold was the fault's doing.

- partial: a third of the pods fail their scrapes (503 on /metrics): Prometheus marks their series stale,
  so the sums cover 2 of 3 ready replicas and read low;
- stale: Prometheus crashes (SIGKILL) and restarts while no pod can be scraped: without staleness markers
  it answers from its TSDB with the samples of before the crash for its 5-minute lookback;
- missing: Prometheus down, every query refused.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from fleetsim.background import BackgroundSimulation
from tests.conftest import OperatorProcess, record_fault_figure, wait_until
from tests.e2e.conftest import HERE, NAMESPACE
from tests.e2e.pods import apply_sample, constant_load, model_deployment, model_pods, serving
from tests.e2e.scrape import metric

MODEL = "llama-3-8b-metrics-faults"
REPLICAS = 3
HOLD_SECONDS = 20  # scaleDownDelaySeconds (10) plus a scale-down step and two evaluations


def _md(sim: BackgroundSimulation) -> dict[str, Any]:
    return model_deployment(sim, NAMESPACE, MODEL)


def _condition(md: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in md.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def _ready(sim: BackgroundSimulation) -> int:
    return sum(1 for pod in model_pods(sim, MODEL) if serving(pod))


def _refuse_scrapes(sim: BackgroundSimulation, pod_names: set[str], refuse: bool) -> None:
    def switch() -> None:
        for pod in sim.simulation.kubelet.pods.values():
            if pod.namespace == NAMESPACE and pod.name in pod_names and pod.server is not None:
                pod.server.refuse_scrapes = refuse

    sim.loop.call_soon_threadsafe(switch)


class LowestReplicas:
    """The lowest spec.replicas seen while a fault lasts, sampled every half second."""

    def __init__(self, sim: BackgroundSimulation) -> None:
        self.sim = sim
        self.lowest = REPLICAS
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.lowest = min(self.lowest, int(_md(self.sim)["spec"]["replicas"]))

    def __enter__(self) -> LowestReplicas:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _hold(sim: BackgroundSimulation, fault: str, reason_seen: Callable[[dict[str, Any]], bool]) -> int:
    """Wait until the autoscaler reports the fault, then HOLD_SECONDS; the scale-downs seen meanwhile."""
    with LowestReplicas(sim) as lowest:
        wait_until(
            lambda: reason_seen(_md(sim).get("status", {}).get("autoscaler", {})),
            timeout=60,
            what=f"the autoscaler reporting {fault}",
        )
        held_since = datetime.now(UTC)
        wait_until(
            lambda: (datetime.now(UTC) - held_since).total_seconds() > HOLD_SECONDS,
            timeout=HOLD_SECONDS + 5,
            what=f"{HOLD_SECONDS} s under {fault}",
        )
    return REPLICAS - lowest.lowest


@pytest.fixture(scope="module")
def loaded_model(sim: BackgroundSimulation, operator: OperatorProcess) -> Iterator[str]:
    """The model at 3 ready replicas, scaled there by load, and the load stopped."""
    apply_sample(operator, HERE / "llama-3-8b-autoscaled.yaml", MODEL, NAMESPACE)
    load = constant_load(sim, NAMESPACE, MODEL, prompt_tokens=128, max_tokens=64, max_in_flight=64)
    wait_until(lambda: _ready(sim) >= 1, timeout=90, what="the first replica ready")
    running = asyncio.run_coroutine_threadsafe(load.run(100_000), sim.loop)
    try:
        wait_until(lambda: _ready(sim) == REPLICAS, timeout=120, what=f"{REPLICAS} ready replicas under load")
    finally:
        running.cancel()
    yield MODEL
    operator.cluster.kubectl("delete", "md", MODEL, "-n", NAMESPACE, "--wait=true", check=False)
    wait_until(lambda: not model_pods(sim, MODEL), timeout=120, what="the model's pods gone")


def test_partial_stale_and_missing_metrics_scale_nothing_down(
    sim: BackgroundSimulation, operator: OperatorProcess, loaded_model: str
) -> None:
    prometheus = sim.simulation.prometheus
    pods = sorted(pod["metadata"]["name"] for pod in model_pods(sim, MODEL) if serving(pod))
    assert len(pods) == REPLICAS
    scale_downs: dict[str, int] = {}

    # Partial: one pod of three unscraped.
    _refuse_scrapes(sim, {pods[0]}, refuse=True)
    scale_downs["partial"] = _hold(sim, "partial metrics", lambda a: a.get("reason") == "PartialMetrics")

    # Stale: a crash of Prometheus while nothing can be scraped; it restarts serving the old samples.
    _refuse_scrapes(sim, set(pods), refuse=True)
    prometheus.stop(crash=True)
    prometheus.start()
    scale_downs["stale"] = _hold(
        sim,
        "stale metrics",
        lambda a: a.get("reason") == "MetricsMissing" and "old (stale after" in a.get("message", ""),
    )

    # Missing: Prometheus down.
    prometheus.stop()
    try:
        scale_downs["missing"] = _hold(
            sim,
            "missing metrics",
            lambda a: a.get("reason") == "MetricsMissing" and "could not be read" in a.get("message", ""),
        )
        scaling_active = _condition(_md(sim), "ScalingActive")
        assert (scaling_active["status"], scaling_active["reason"]) == ("False", "MetricsMissing")
        # The age the AutoscalerMetricsStale alert reads has grown over the time held.
        assert (
            metric(operator.metrics_port, "gpufleet_autoscaler_signal_age_seconds", name=MODEL)
            >= HOLD_SECONDS
        )
    finally:
        prometheus.start()
        _refuse_scrapes(sim, set(pods), refuse=False)

    # The fault over, the idle model scales down: the hold above was the fault's, not a slow autoscaler.
    wait_until(
        lambda: _md(sim)["spec"]["replicas"] < REPLICAS, timeout=90, what="a scale-down once metrics are back"
    )
    record_fault_figure(
        "metrics",
        "partial (1 of 3 pods unscraped), stale (Prometheus crash-restarted, old samples), missing "
        f"(Prometheus down), {HOLD_SECONDS} s each, idle load: scale-downs "
        + ", ".join(f"{fault} {count}" for fault, count in scale_downs.items())
        + " (must be 0); after: scaled down",
    )
    assert scale_downs == {"partial": 0, "stale": 0, "missing": 0}
