"""Autoscaling benchmark: gpufleet's autoscaler against an HPA-style and a KubeAI-style policy.

    python hack/bench/autoscale.py [--slo 2.0] [--time-scale 20] [--duration 2700] [--rounds 1]
                                   [--kubeconfig PATH]

One control plane; three trials in turn, each on a fresh simulated fleet
(fleetsim: nodes, vLLM pods, Prometheus, moto, a gpufleet operator) in a fresh
namespace, replaying the same load trace (a diurnal curve with two bursts,
Poisson arrivals with the same seed) against one ModelDeployment:

- ours:   the operator's autoscaler (spec.autoscaling.enabled: true);
- hpa:    autoscaling off; this process plays a Kubernetes HPA on the queue signal
          (15 s sync, tolerance 0.1, 300 s scale-down stabilisation, +100 % / +4 pods per step);
- kubeai: autoscaling off; this process plays KubeAI's autoscaler (10 s interval,
          10-minute moving average of in-flight requests, ceil(avg / target)).

The baselines read the trial's Prometheus and write spec.replicas through the
scale subresource, as an HPA does; the operator turns replicas into Deployments
in every trial. Every policy timer is divided by the time scale, ours included
(scaleDownDelaySeconds, GPUFLEET_AUTOSCALE_INTERVAL_SECONDS and the planner's
panic window, scale-down step and stale-after settings). Per policy it prints
GPU-hours, the share of requests over the TTFT SLO, p95 TTFT and scale
events; it never asserts: this is a benchmark, not a test. With --rounds N the
three trials run N times, interleaved, and the figures are means with their
range: one round is one sample of a noisy measurement. See hack/bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from benchkit import BenchError, fleet_in_namespace, log, or_failure, require_operator_alive, run_trials
from kubernetes import client

from fleetsim.loadgen import LoadGenerator, LoadReport, Trace, parse_trace, ready_endpoints
from fleetsim.local import ROOT, ControlPlane
from fleetsim.scenario import parse_scenario
from fleetsim.sim import Simulation
from gpufleet.api.v1alpha1 import GROUP, PLURAL, VERSION
from gpufleet.config import Settings as OperatorSettings
from gpufleet.planning.workloads import LABEL_MODEL_DEPLOYMENT

POLICIES = ("ours", "hpa", "kubeai")

# --- the workload -----------------------------------------------------------------------------------

MODEL = "llama-3-8b"
REGION = "us-east-1"
ZONE = "us-east-1a"
# Four sequences per replica and 256 + 256 tokens per request: one replica serves ~1.28 requests/s
# (fleetsim's engine: ~3.1 s per request at a batch of 4), so a few requests/s need several replicas
# while the real request rate (simulated rate × time scale) stays below ~90/s on 2 cores.
MAX_NUM_SEQS = 4
PROMPT_TOKENS = 256
MAX_TOKENS = 256
MIN_REPLICAS, MAX_REPLICAS = 1, 6
GPUS_PER_REPLICA = 1  # tensorParallelSize 1
# Waiting requests per replica, for ours and the HPA alike. A slot frees every ~0.8 s at a batch of 4,
# so two requests waiting per replica is ~1.6 s of queueing: about the 2 s SLO.
TARGET_QUEUE_DEPTH = 2
# KubeAI's targetRequests (in-flight per replica) at the same operating point: a full batch plus
# the target queue, so that ceil(in-flight / target) and ceil(waiting / TARGET_QUEUE_DEPTH) agree
# on a steadily loaded fleet.
KUBEAI_TARGET = MAX_NUM_SEQS + TARGET_QUEUE_DEPTH

# The trace, simulated seconds: one "day" over the run (lowest at the start and end, highest in the
# middle) plus two bursts, one on the rising and one on the falling side.
DIURNAL_MIN, DIURNAL_MAX = 0.4, 3.0  # requests/s
BURSTS = ((600.0, 180.0, 2.0), (1800.0, 240.0, 2.0))  # (at, duration, extra requests/s)

# --- the policies' timers, simulated seconds (REFERENCE.md "Autoscaling anchors") --------------------

OURS_INTERVAL_S = 15.0  # GPUFLEET_AUTOSCALE_INTERVAL_SECONDS' default
OURS_SCALE_DOWN_DELAY_S = 300.0  # spec.autoscaling.scaleDownDelaySeconds' default
HPA_SYNC_S = 15.0
HPA_TOLERANCE = 0.1
HPA_SCALE_DOWN_WINDOW_S = 300.0
HPA_SCALE_UP_PODS = 4
HPA_SCALE_UP_PERCENT = 100
KUBEAI_INTERVAL_S = 10.0
KUBEAI_WINDOW_S = 600.0
KUBEAI_SCALE_DOWN_DELAY_S = 30.0  # KubeAI's scaleDownDelaySeconds default

# The planner's windows, set through the operator's settings and divided by the time scale like
# every other timer: label → (ScalingTimings field, GPUFLEET_ setting).
PLANNER_WINDOWS = {
    "panic window": ("panic_window_seconds", "GPUFLEET_AUTOSCALE_PANIC_WINDOW_SECONDS"),
    "scale-down step": ("scale_down_step_seconds", "GPUFLEET_AUTOSCALE_SCALE_DOWN_STEP_SECONDS"),
    "stale after": ("stale_after_seconds", "GPUFLEET_AUTOSCALE_STALE_AFTER_SECONDS"),
}

ENDPOINT_REFRESH_S = 4.0  # simulated seconds between the load generator's endpoint lists
READY_METRICS_TIMEOUT = 90.0  # real seconds for Prometheus's first samples of the first pod
LAG_PROBE_S = 0.05  # real seconds
OBSERVE_S = 5.0  # simulated seconds between reads of spec.replicas (policies change it every >= 10 s)


def planner_default(field_name: str) -> float:
    """The operator's default of one of the planner's windows (the settings are where defaults live)."""
    value = getattr(OperatorSettings.defaults().scaling_timings(), field_name, None)
    if not isinstance(value, int | float):
        raise BenchError(f"ScalingTimings has no numeric field {field_name}")
    return float(value)


# --- the trace --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SumTrace:
    """The sum of several traces (fleetsim's trace kinds are one shape each)."""

    parts: tuple[Trace, ...]

    def __call__(self, t: float) -> float:
        return sum(part(t) for part in self.parts)

    @property
    def max_rate(self) -> float:
        return sum(part.max_rate for part in self.parts)


def diurnal_with_bursts(duration_s: float) -> SumTrace:
    parts = [parse_trace({"kind": "diurnal", "min": DIURNAL_MIN, "max": DIURNAL_MAX, "period": duration_s})]
    for at, length, extra in BURSTS:
        if at < duration_s:
            parts.append(
                parse_trace({"kind": "burst", "base": 0, "peak": extra, "at": at, "duration": length})
            )
    return SumTrace(tuple(parts))


# --- the baselines (pure: time and readings are passed in) ------------------------------------------


def clamp(value: int, low: int, high: int) -> int:
    return max(low, min(value, high))


@dataclass
class HpaPolicy:
    """Kubernetes' HPA (pkg/controller/podautoscaler) on one External metric with an AverageValue target.

    Metric replicas: usage ratio = metric / (target × current); within the tolerance → current, else
    ceil(metric / target) (GetExternalPerPodMetricReplicas). Behaviour (the defaults): scale-up
    stabilisation 0 s; scale-down stabilisation 300 s, the highest recommendation of the window,
    which starts filled with the current replicas (maybeInitScaleDownStabilizationWindow); scale up
    by at most max(+4 pods, +100 %) per 15 s period, with a period of one sync, so the period starts at
    the current replicas; scale down by up to 100 % per period (no limit); then min/max. `current` is
    spec.replicas, where the HPA uses the scale's status replicas in the tolerance check.
    """

    target: float
    min_replicas: int
    max_replicas: int
    tolerance: float = HPA_TOLERANCE
    down_window_s: float = HPA_SCALE_DOWN_WINDOW_S
    up_pods: int = HPA_SCALE_UP_PODS
    up_percent: int = HPA_SCALE_UP_PERCENT
    recommendations: list[tuple[float, int]] = field(default_factory=list)

    def decide(self, now: float, metric: float, current: int) -> int:
        if not self.recommendations:
            self.recommendations.append((now, current))
        if current > 0 and abs(metric / (self.target * current) - 1) <= self.tolerance:
            raw = current
        else:
            raw = math.ceil(metric / self.target)
        self.recommendations = [(t, n) for t, n in self.recommendations if t > now - self.down_window_s]
        self.recommendations.append((now, raw))
        up = raw
        down = max(n for _, n in self.recommendations)
        stabilised = current
        stabilised = max(stabilised, up)
        stabilised = min(stabilised, down)
        up_limit = max(current + self.up_pods, math.ceil(current * (1 + self.up_percent / 100)))
        return clamp(min(stabilised, up_limit), self.min_replicas, self.max_replicas)


@dataclass
class KubeAiPolicy:
    """KubeAI's autoscaler (internal/modelautoscaler, internal/modelscaler).

    Every interval: push the in-flight request count into a simple moving average of
    ceil(window / interval) samples; desired = ceil(average / targetRequests), within min/max.
    Scale-downs happen after ceil(scaleDownDelay / interval) consecutive lower decisions, straight to
    the desired count; a scale-up or a steady decision resets the count.

    One departure: KubeAI's window starts as zeros when its process starts. Here it starts filled with
    the first reading, as for a KubeAI that has been running at the trace's starting load; zeros
    would under-provision the first ten minutes for no reason the trace is about.
    """

    target: float
    min_replicas: int
    max_replicas: int
    window: int
    required_scale_downs: int
    samples: deque[float] = field(default_factory=deque)
    consecutive_scale_downs: int = 0

    def decide(self, in_flight: float, current: int) -> int:
        if not self.samples:
            self.samples.extend([in_flight] * self.window)
        self.samples.append(in_flight)
        while len(self.samples) > self.window:
            self.samples.popleft()
        average = sum(self.samples) / len(self.samples)
        desired = clamp(math.ceil(average / self.target), self.min_replicas, self.max_replicas)
        if current > desired:
            if self.consecutive_scale_downs < self.required_scale_downs:
                self.consecutive_scale_downs += 1
                return current
        else:
            self.consecutive_scale_downs = 0
        return desired


# --- figures ----------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Usage:
    """Replica-seconds from samples of the pod count: each count holds until the next sample."""

    replica_seconds: float = 0.0
    last: tuple[float, int] | None = None

    def add(self, now: float, pods: int) -> None:
        if self.last is not None:
            since, count = self.last
            self.replica_seconds += count * max(0.0, now - since)
        self.last = (now, pods)


@dataclass
class TrialResult:
    policy: str
    report: LoadReport
    ttfts: list[float]
    replica_seconds: float
    window_s: float
    generations: int  # changes of the ModelDeployment's spec (only replicas change during a trial)
    timeline: list[tuple[float, int]]  # (simulated seconds since the load started, spec.replicas)
    lags: list[float]  # real seconds the event loop overslept a LAG_PROBE_S sleep
    reasons: Counter[str]  # ours: Autoscaled events by reason
    errors: int  # failed evaluations (baselines) and observations
    log_dir: Path

    def violations(self, slo: float) -> int:
        """Requests sent whose first token did not come within `slo`: late, failed or never sent."""
        return self.report.sent - sum(1 for t in self.ttfts if t <= slo)

    def share(self, slo: float) -> float:
        return self.violations(slo) / self.report.sent if self.report.sent else 0.0

    @property
    def gpu_hours(self) -> float:
        return self.replica_seconds * GPUS_PER_REPLICA / 3600


def report_lines(result: TrialResult, slo: float, scale: float) -> list[str]:
    name = f"{result.policy:<6}"
    report = result.report
    late = sum(1 for t in result.ttfts if t > slo)
    failed = report.sent - len(result.ttfts)
    errors = ", ".join(f"{kind}: {n}" for kind, n in sorted(report.errors.items())) or "none"
    p95, p50 = percentile(result.ttfts, 95), percentile(result.ttfts, 50)
    mean = result.replica_seconds / result.window_s if result.window_s else 0.0
    peak = max((n for _, n in result.timeline), default=0)
    timeline = " ".join(f"{t:.0f}s:{n}" for t, n in result.timeline)
    lag95, lag_max = percentile(result.lags, 95) or 0.0, max(result.lags, default=0.0)
    lines = [
        f"{name} GPU-hours: {result.gpu_hours:.3f} (ready+starting replicas × {GPUS_PER_REPLICA} GPU over "
        f"{result.window_s:.0f} s simulated; mean {mean:.2f} replicas, peak {peak})",
        f"{name} SLO violations: {result.share(slo):.2%} "
        f"({result.violations(slo)} of {report.sent} requests: {late} with TTFT > {slo:g} s, "
        f"{failed} without an answer; errors: {errors})",
        f"{name} p95 TTFT: {_seconds(p95)} (p50 {_seconds(p50)}; {len(result.ttfts)} answered requests)",
        f"{name} scale events: {result.generations} (changes of spec.replicas)",
        f"{name} replicas over time: {timeline}",
        f"{name} event-loop lag: p95 {lag95 * 1000:.0f} ms, max {lag_max * 1000:.0f} ms real "
        f"(= {lag95 * scale:.2f} s / {lag_max * scale:.2f} s simulated; client-side TTFT includes it)",
    ]
    if result.reasons:
        reasons = ", ".join(f"{reason} {n}" for reason, n in result.reasons.most_common())
        lines.append(f"{name} scale events by reason (operator Events): {reasons}")
    if result.errors:
        lines.append(f"{name} errors: {result.errors} evaluations or observations failed (see stderr)")
    return lines


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


# --- one trial --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    slo: float
    scale: float
    duration: float
    seed: int


def fleet_yaml(policy: str) -> dict[str, Any]:
    # Pool names carry the policy: each trial's nodes have names of their own.
    return {
        "region": REGION,
        "provisioning_delay_s": 35,
        "gpu_boot_extra_s": 45,
        "pools": [
            {
                "name": f"{policy}-od",
                "instance_type": "p4de.24xlarge",
                "zone": ZONE,
                "capacity_type": "on-demand",
                # One node of 8 A100s holds MAX_REPLICAS: capacity is never the limit.
                "count": 1,
                "max_count": 1,
            }
        ],
    }


def model_deployment(policy: str, settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": MODEL},
        "spec": {
            "model": {
                "uri": "hf://meta-llama/Meta-Llama-3-8B-Instruct",
                "parameterCount": 8.03e9,
                "maxModelLen": 4096,
            },
            "engine": {"args": [f"--max-num-seqs={MAX_NUM_SEQS}"]},
            "accelerator": {"gpuProduct": "NVIDIA-A100-SXM4-80GB", "tensorParallelSize": 1},
            "replicas": MIN_REPLICAS,
            "minReplicas": MIN_REPLICAS,
            "maxReplicas": MAX_REPLICAS,
            "autoscaling": {
                "enabled": policy == "ours",
                "targetQueueDepth": TARGET_QUEUE_DEPTH,
                "scaleDownDelaySeconds": max(1, round(OURS_SCALE_DOWN_DELAY_S / settings.scale)),
            },
            "capacity": {"zones": [ZONE]},
        },
    }


class Trial:
    def __init__(self, cp: ControlPlane, policy: str, settings: Settings, workdir: Path) -> None:
        self.cp = cp
        self.policy = policy
        self.settings = settings
        self.workdir = workdir / policy
        self.namespace = f"bench-autoscale-{policy}-{uuid.uuid4().hex[:6]}"
        self.selector = f'namespace="{self.namespace}",model_name="{MODEL}"'
        self.errors = 0

    # ---- API helpers (blocking; called in threads from the simulation's loop) ---------------------

    def _md(self, simulation: Simulation) -> dict[str, Any]:
        found: dict[str, Any] = simulation.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, MODEL
        )
        return found

    def _pods(self, simulation: Simulation) -> int:
        """The model's pods that hold a GPU and are not terminating: ready or starting."""
        response = simulation.core.list_namespaced_pod(
            self.namespace, label_selector=f"{LABEL_MODEL_DEPLOYMENT}={MODEL}", _preload_content=False
        )
        items = json.loads(response.data)["items"]
        return sum(1 for pod in items if not pod["metadata"].get("deletionTimestamp"))

    def _scale(self, simulation: Simulation, replicas: int) -> None:
        simulation.custom.patch_namespaced_custom_object_scale(
            GROUP, VERSION, self.namespace, PLURAL, MODEL, {"spec": {"replicas": replicas}}
        )

    def _query(self, simulation: Simulation, promql: str) -> float | None:
        result = simulation.prometheus.query(promql)
        return float(result[0]["value"][1]) if result else None

    def _reasons(self, simulation: Simulation) -> Counter[str]:
        events = simulation.core.list_namespaced_event(
            self.namespace, field_selector=f"reason=Autoscaled,involvedObject.name={MODEL}"
        ).items
        reasons: Counter[str] = Counter()
        for event in events:
            found = re.search(r"replicas \((\w+)\)", event.message or "")
            reasons[found.group(1) if found else "?"] += event.count or 1
        return reasons

    # ---- coroutines on the simulation's loop ------------------------------------------------------

    async def _every(self, simulation: Simulation, interval_s: float, action: Callable[[float], Any]) -> None:
        """Call `action(simulated now)` in a thread every `interval_s` simulated seconds, on a fixed grid."""
        clock = simulation.clock
        start = clock.now()
        tick = 0
        while True:
            tick += 1
            await asyncio.sleep(max(0.0, clock.real(start + tick * interval_s - clock.now())))
            try:
                await asyncio.to_thread(action, clock.now())
            except Exception as error:  # one failed evaluation must not end the trial; it is counted
                self.errors += 1
                log(f"{self.policy}: evaluation or observation failed: {type(error).__name__}: {error}")

    def _hpa(self, simulation: Simulation) -> Callable[[float], None]:
        policy = HpaPolicy(TARGET_QUEUE_DEPTH, MIN_REPLICAS, MAX_REPLICAS)

        def evaluate(now: float) -> None:
            waiting = self._query(simulation, f"sum(vllm:num_requests_waiting{{{self.selector}}})")
            if waiting is None:
                return  # the HPA does not scale on a metric it cannot read
            current = int(self._md(simulation)["spec"]["replicas"])
            desired = policy.decide(now, waiting, current)
            if desired != current:
                self._scale(simulation, desired)

        return evaluate

    def _kubeai(self, simulation: Simulation) -> Callable[[float], None]:
        policy = KubeAiPolicy(
            KUBEAI_TARGET,
            MIN_REPLICAS,
            MAX_REPLICAS,
            window=math.ceil(KUBEAI_WINDOW_S / KUBEAI_INTERVAL_S),
            required_scale_downs=math.ceil(KUBEAI_SCALE_DOWN_DELAY_S / KUBEAI_INTERVAL_S),
        )

        def evaluate(_: float) -> None:
            in_flight = self._query(
                simulation,
                f"sum(vllm:num_requests_running{{{self.selector}}})"
                f" + sum(vllm:num_requests_waiting{{{self.selector}}})",
            )
            if in_flight is None:
                return  # KubeAI skips a model without metrics
            current = int(self._md(simulation)["spec"]["replicas"])
            desired = policy.decide(in_flight, current)
            if desired != current:
                self._scale(simulation, desired)

        return evaluate

    async def _lag_probe(self, lags: list[float]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            lags.append(max(0.0, loop.time() - before - LAG_PROBE_S))

    async def drive(self, simulation: Simulation) -> TrialResult:
        """The load, the baseline controller (if any) and the observers; returns the figures."""
        settings, clock = self.settings, simulation.clock
        load = LoadGenerator(
            lambda: ready_endpoints(simulation.core, self.namespace, MODEL),
            MODEL,
            diurnal_with_bursts(settings.duration),
            clock,
            prompt_tokens=PROMPT_TOKENS,
            max_tokens=MAX_TOKENS,
            seed=settings.seed,
            refresh_s=ENDPOINT_REFRESH_S,
        )
        timeline: list[tuple[float, int]] = []
        lags: list[float] = []
        usage = Usage()
        started = clock.now()

        def observe(now: float) -> None:
            replicas = int(self._md(simulation)["spec"]["replicas"])
            if not timeline or timeline[-1][1] != replicas:
                timeline.append((now - started, replicas))
            usage.add(now, self._pods(simulation))

        loop = asyncio.get_running_loop()
        generation = int((await asyncio.to_thread(self._md, simulation))["metadata"]["generation"])
        await asyncio.to_thread(observe, started)
        tasks = [
            loop.create_task(self._lag_probe(lags)),
            loop.create_task(self._every(simulation, OBSERVE_S, observe)),
        ]
        if self.policy == "hpa":
            tasks.append(loop.create_task(self._every(simulation, HPA_SYNC_S, self._hpa(simulation))))
        elif self.policy == "kubeai":
            tasks.append(
                loop.create_task(self._every(simulation, KUBEAI_INTERVAL_S, self._kubeai(simulation)))
            )
        try:
            report = await load.run(settings.duration)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        ended = clock.now()
        await asyncio.to_thread(observe, ended)
        generations = int((await asyncio.to_thread(self._md, simulation))["metadata"]["generation"])
        reasons = await asyncio.to_thread(self._reasons, simulation) if self.policy == "ours" else Counter()
        return TrialResult(
            policy=self.policy,
            report=report,
            ttfts=load.ttfts(),
            replica_seconds=usage.replica_seconds,
            window_s=ended - started,
            generations=generations - generation,
            timeline=timeline,
            lags=lags,
            reasons=reasons,
            errors=self.errors,
            log_dir=self.workdir,
        )

    # ---- lifecycle ---------------------------------------------------------------------------------

    def _write_inputs(self) -> tuple[Path, Path]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        fleet = self.workdir / "fleet.yaml"
        fleet.write_text(yaml.safe_dump(fleet_yaml(self.policy), sort_keys=False))
        manifest = self.workdir / "model.json"
        manifest.write_text(json.dumps(model_deployment(self.policy, self.settings), indent=2))
        return fleet, manifest

    def _wait_metrics(self, simulation: Simulation) -> None:
        """Until Prometheus has the first replica's gauges: every policy starts from the same view."""
        deadline = time.monotonic() + READY_METRICS_TIMEOUT
        while True:
            with contextlib.suppress(Exception):
                if self._query(simulation, f"sum(vllm:num_requests_running{{{self.selector}}})") is not None:
                    return
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{self.policy}: no vLLM metrics in Prometheus after {READY_METRICS_TIMEOUT:.0f}s"
                )
            time.sleep(0.5)

    def run(self, core: client.CoreV1Api) -> TrialResult:
        settings = self.settings
        fleet, manifest = self._write_inputs()
        scenario = parse_scenario(
            {
                "name": f"bench-autoscale-{self.policy}",
                "timeScale": settings.scale,
                "duration": settings.duration,
                "fleet": str(fleet),
                "namespace": self.namespace,
                "apply": [str(manifest)],
                "operatorEnv": {
                    "GPUFLEET_AUTOSCALE_INTERVAL_SECONDS": f"{OURS_INTERVAL_S / settings.scale:g}",
                    **{
                        env: str(max(1, round(planner_default(field) / settings.scale)))
                        for field, env in PLANNER_WINDOWS.values()
                    },
                },
            },
            ROOT,
        )
        simulation = Simulation(
            scenario, self.cp.kubeconfig, self.workdir, kubectl=self.cp.kubectl_path, run_operator=True
        )
        with fleet_in_namespace(core, simulation, self.namespace, self.policy) as background:
            log(f"{self.policy}: starting the fleet, Prometheus and the operator in {self.namespace}")
            background.call(simulation.wait_ready(), timeout=scenario.ready_timeout / settings.scale + 60)
            self._wait_metrics(simulation)
            real = settings.duration / settings.scale
            log(f"{self.policy}: load for {settings.duration:.0f} s simulated ({real:.0f} s real)")
            result = background.call(self.drive(simulation), timeout=real + 600)
            require_operator_alive(simulation, self.policy)
            return result


# --- the run ----------------------------------------------------------------------------------------


def caveat_lines(scale: float) -> list[str]:
    windows = ", ".join(
        f"{label} {max(1, round(planner_default(field) / scale))} s real (= {planner_default(field):g} s)"
        for label, (field, _) in PLANNER_WINDOWS.items()
    )
    return [
        f"caveat: time scale {scale:g}; every policy timer is divided by it (ours: scaleDownDelaySeconds "
        f"{max(1, round(OURS_SCALE_DOWN_DELAY_S / scale))}, evaluation every {OURS_INTERVAL_S / scale:g} s "
        f"real; hpa: sync {HPA_SYNC_S / scale:g} s, "
        f"stabilisation {HPA_SCALE_DOWN_WINDOW_S / scale:g} s real; "
        f"kubeai: interval {KUBEAI_INTERVAL_S / scale:g} s, window {KUBEAI_WINDOW_S / scale:g} s real)",
        f"caveat: ours' planner windows are scaled through its settings: {windows}",
        f"caveat: Prometheus scrapes every 1 s real (= {scale:g} s simulated) for every policy",
    ]


@dataclass(frozen=True)
class Figures:
    """What the goal compares, of one trial."""

    violations: float  # share of requests over the SLO
    gpu_hours: float


def trial_name(policy: str, round_number: int) -> str:
    return policy if round_number == 1 else f"{policy}#{round_number}"


def trial_names(policies: Sequence[str], rounds: int) -> list[str]:
    """Policies interleaved round by round (ours, hpa, kubeai, ours#2, …), so that a slow spell of
    the machine falls on every policy of a round rather than on all rounds of one policy."""
    return [trial_name(policy, n) for n in range(1, rounds + 1) for policy in policies]


def policy_of(trial: str) -> str:
    return trial.split("#", 1)[0]


def _goal(figures: Mapping[str, Figures]) -> tuple[bool, bool]:
    ours = figures["ours"]
    others = [figures[p] for p in POLICIES if p != "ours"]
    return (
        all(ours.violations < other.violations for other in others),
        all(ours.gpu_hours <= other.gpu_hours for other in others),
    )


def _verdict(fewer: bool, cheaper: bool) -> str:
    return (
        f"{'met' if fewer and cheaper else 'not met'} "
        f"(fewer violations: {'yes' if fewer else 'no'}, no more GPU-hours: {'yes' if cheaper else 'no'})"
    )


def summary_lines(figures: Mapping[str, Figures]) -> list[str]:
    """The goal (per round when there are several) and the last line, on the means over rounds."""
    by_policy: dict[str, list[Figures]] = {}
    for trial, trial_figures in figures.items():
        by_policy.setdefault(policy_of(trial), []).append(trial_figures)
    rounds = max((len(f) for f in by_policy.values()), default=0)
    means = {
        policy: Figures(
            sum(f.violations for f in runs) / len(runs), sum(f.gpu_hours for f in runs) / len(runs)
        )
        for policy, runs in by_policy.items()
    }
    lines = []
    goal = "goal (fewer SLO violations than both at no more GPU-hours)"
    if rounds > 1:
        for policy in POLICIES:
            runs = by_policy.get(policy, [])
            if runs:
                share = [f.violations for f in runs]
                hours = [f.gpu_hours for f in runs]
                mean = means[policy]
                lines.append(
                    f"{policy:<6} over {len(runs)} rounds: SLO violations mean {mean.violations:.4f} "
                    f"(range {min(share):.4f}-{max(share):.4f}), GPU-hours mean {mean.gpu_hours:.3f} "
                    f"(range {min(hours):.3f}-{max(hours):.3f})"
                )
        complete = [n for n in range(1, rounds + 1) if all(trial_name(p, n) in figures for p in POLICIES)]
        met = 0
        for n in complete:
            fewer, cheaper = _goal({p: figures[trial_name(p, n)] for p in POLICIES})
            met += fewer and cheaper
            lines.append(f"{goal}, round {n}: {_verdict(fewer, cheaper)}")
        if complete:
            lines.append(f"{goal}: met in {met} of {len(complete)} rounds")
    if all(p in means for p in POLICIES):
        lines.append(f"{goal}{' on the means' if rounds > 1 else ''}: {_verdict(*_goal(means))}")

    def figure(policy: str, value: Callable[[Figures], float], digits: int) -> str:
        return f"{value(means[policy]):.{digits}f}" if policy in means else "n/a"

    violation_figures = " ".join(f"{p}={figure(p, lambda f: f.violations, 4)}" for p in POLICIES)
    hour_figures = " ".join(f"{p}={figure(p, lambda f: f.gpu_hours, 3)}" for p in POLICIES)
    lines.append(f"autoscale: slo_violations {violation_figures} gpu_hours {hour_figures}")
    return lines


def run(
    policies: Sequence[str], settings: Settings, kubeconfig: Path | None, rounds: int = 1
) -> dict[str, TrialResult]:
    return run_trials(
        "autoscale",
        trial_names(policies, rounds),
        kubeconfig,
        lambda cp, core, trial, workdir: Trial(cp, policy_of(trial), settings, workdir).run(core),
        lambda result: report_lines(result, settings.slo, settings.scale),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slo", type=float, default=2.0, help="TTFT SLO, simulated seconds (default 2)")
    parser.add_argument(
        "--time-scale", type=float, default=20.0, help="simulated seconds per real second (default 20)"
    )
    parser.add_argument(
        "--duration", type=float, default=2700.0, help="simulated seconds of load (default 2700: 45 min)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrivals (the same in every trial)")
    parser.add_argument(
        "--policies", nargs="+", choices=POLICIES, default=list(POLICIES), help="trials to run (default all)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the trials this many times, interleaved (default 1)"
    )
    parser.add_argument("--kubeconfig", type=Path, help="reuse this control plane instead of starting one")
    args = parser.parse_args(argv)
    if args.slo <= 0 or args.time_scale <= 0 or args.duration <= 0 or args.rounds < 1:
        parser.error("--slo, --time-scale and --duration must be > 0, --rounds at least 1")
    settings = Settings(args.slo, args.time_scale, args.duration, args.seed)
    results = or_failure(lambda: run(args.policies, settings, args.kubeconfig, args.rounds))
    if results is None:
        return 1
    for line in caveat_lines(settings.scale):
        print(line)
    figures = {trial: Figures(r.share(settings.slo), r.gpu_hours) for trial, r in results.items()}
    print("\n".join(summary_lines(figures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
