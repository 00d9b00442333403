"""Autoscaling benchmark: gpufleet's autoscaler against real KEDA + the real HPA, a KubeAI-style policy
and the clairvoyant limit.

    python hack/bench/autoscale.py [--slo 2.0] [--time-scale 15] [--duration 2700] [--rounds 1]
                                   [--policies ...] [--engine fleetsim|llm-d-inference-sim]
                                   [--kubeconfig PATH]

One control plane; one trial per policy in turn, each on a fresh simulated fleet
(fleetsim: nodes, vLLM pods, Prometheus, moto, a gpufleet operator) in a fresh
namespace, replaying the same load trace (a diurnal curve with two bursts,
Poisson arrivals with the same seed) against one ModelDeployment:

- ours:   the operator's autoscaler (spec.autoscaling.enabled: true);
- keda:   autoscaling off; real KEDA v2.21.0 (hack/fleetsim/keda.py) with a ScaledObject on the
          ModelDeployment's scale subresource, and the real HPA in kube-controller-manager, on the
          same query and target as the HPA-style policy (waiting requests per replica);
- kubeai: autoscaling off; this process plays KubeAI's autoscaler (10 s interval, 10-minute moving
          average of in-flight requests, ceil(avg / target)): a re-implementation, KubeAI is not
          buildable here;
- limit:  autoscaling off; a clairvoyant policy that reads the trace ahead by the cold start and
          provisions exactly for it (LimitPolicy): the floor no real policy can beat;
- hpa:    (not run unless named) this process plays a Kubernetes HPA on the queue signal
          (15 s sync, tolerance 0.1, 300 s scale-down stabilisation, +100 % / +4 pods per step): a
          re-implementation, kept for time scales at which the real one's timers are not whole seconds.

The baselines write spec.replicas through the scale subresource, as an HPA does; the operator turns
replicas into Deployments in every trial. Every policy timer is divided by the time scale, ours
included (scaleDownDelaySeconds, GPUFLEET_AUTOSCALE_INTERVAL_SECONDS and the planner's panic window,
scale-down step and stale-after settings). The real HPA's and KEDA's timers are whole seconds, so the
default time scale is 15: the largest that divides their defaults (15 s, 30 s, 300 s) exactly. Per
policy it prints GPU-hours, the share of requests over the TTFT SLO, p95 TTFT and scale events; then
ours' ratios to every other policy and the spread over rounds. It never asserts: this is a benchmark,
not a test. With --rounds N the trials run N times, interleaved: one round is one sample of a noisy
measurement. See hack/bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from benchkit import (
    BenchError,
    fleet_in_namespace,
    log,
    or_failure,
    ratio,
    require_operator_alive,
    run_trials,
)
from benchkit import number as _number
from benchkit import spread as _spread
from kubernetes import client

from fleetsim.keda import Keda, KedaBuild
from fleetsim.keda import install as install_keda
from fleetsim.loadgen import (
    LoadGenerator,
    LoadReport,
    SumTrace,
    parse_trace,
    percentile,
    ready_endpoints,
)
from fleetsim.local import CLUSTER_SCRIPT, ROOT, ControlPlane
from fleetsim.params import KubeletParams
from fleetsim.podspec import load_seconds
from fleetsim.pools import ENGINES
from fleetsim.scenario import parse_scenario
from fleetsim.sim import Simulation
from fleetsim.vllm_model import EngineProfile, profile_for, weights_bytes
from gpufleet.api.v1alpha1 import GROUP, PLURAL, VERSION
from gpufleet.config import Settings as OperatorSettings
from gpufleet.planning.workloads import LABEL_MODEL_DEPLOYMENT

# Every policy, in the order of the output; `hpa` (the re-implemented HPA) runs only when named: the
# real one (`keda`) replaces it at the time scales where its timers are whole seconds.
POLICIES = ("ours", "keda", "kubeai", "limit", "hpa")
DEFAULT_POLICIES = ("ours", "keda", "kubeai", "limit")
# What each policy is called in every printed line: re-implementations say so.
LABELS = {
    "ours": "ours",
    "keda": "keda (real KEDA v2.21.0 + HPA)",
    "kubeai": "kubeai-style (re-implementation)",
    "limit": "limit (clairvoyant)",
    "hpa": "hpa-style (re-implementation)",
}


def label(policy: str) -> str:
    return LABELS.get(policy, policy)


# --- the workload -----------------------------------------------------------------------------------

MODEL = "llama-3-8b"
MODEL_URI = "hf://meta-llama/Meta-Llama-3-8B-Instruct"
MODEL_ID = MODEL_URI.removeprefix("hf://")
GPU_PRODUCT = "NVIDIA-A100-SXM4-80GB"
MAX_MODEL_LEN = 4096
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
# The period of the HPA's default scale-up and scale-down policies (Kubernetes docs, "Default Behavior":
# https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/#default-behavior).
HPA_POLICY_PERIOD_S = 15.0
# KEDA's ScaledObject defaults (REFERENCE.md; https://keda.sh/docs/2.21/reference/scaledobject-spec/):
# pollingInterval is how often KEDA checks activation (0 <-> 1) and refreshes its status; cooldownPeriod
# only delays a scale to zero. With minReplicaCount 1 neither decides a replica count here, but they
# are scaled like every other timer so that nothing runs at a real-world rate against simulated time.
KEDA_POLLING_S = 30.0
KEDA_COOLDOWN_S = 300.0
# The real components take whole seconds (KEDA's fields and the HPA's behavior are integers; the sync
# period is a flag that would take less, kept on the same grid so that one sync is one policy period):
# at time scale s each of these must be a multiple of s. 15 = gcd(15, 30, 300) is the largest such scale.
WHOLE_SECOND_TIMERS = {
    "HPA sync period": HPA_SYNC_S,
    "HPA scale-down stabilisation": HPA_SCALE_DOWN_WINDOW_S,
    "HPA policy period": HPA_POLICY_PERIOD_S,
    "KEDA pollingInterval": KEDA_POLLING_S,
    "KEDA cooldownPeriod": KEDA_COOLDOWN_S,
}
DEFAULT_TIME_SCALE = 15.0
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


# --- the limit: a clairvoyant policy (pure) ---------------------------------------------------------

LIMIT_INTERVAL_S = 15.0  # it decides as often as ours and the HPA
# The share of requests a replica at its SLO capacity may keep waiting past the TTFT budget: a p95 SLO.
LIMIT_LATE_SHARE = 0.05
KUBELET_POLL_REAL_S = 0.5  # fleetsim.kubelet's poll_seconds default: real seconds, not scaled


def engine_profile() -> EngineProfile:
    """fleetsim's engine for this benchmark's model, GPU and --max-num-seqs (what its pods run)."""
    return profile_for(
        MODEL_ID, GPUS_PER_REPLICA, GPU_PRODUCT, max_model_len=MAX_MODEL_LEN, max_num_seqs=MAX_NUM_SEQS
    )


def request_seconds(profile: EngineProfile) -> float:
    """Simulated seconds one request holds a slot of a full batch: its prefill, then MAX_TOKENS decode
    steps of MAX_NUM_SEQS sequences at their mean context (about 3.05 s for Llama 3 8B on an A100)."""
    batch = MAX_NUM_SEQS
    mean_context = batch * (PROMPT_TOKENS + MAX_TOKENS / 2)
    return PROMPT_TOKENS / profile.prefill_tokens_per_s + MAX_TOKENS * profile.decode_step_s(
        batch, round(mean_context)
    )


def first_token_seconds(profile: EngineProfile) -> float:
    """Simulated seconds from admission to the first token: the prompt's prefill in one step."""
    return PROMPT_TOKENS / profile.prefill_tokens_per_s + profile.decode_step_base_s


def erlang_c(servers: int, load: float) -> float:
    """The probability that an arrival waits in an M/M/c queue of `servers` at `load` = rate × service."""
    if load >= servers:
        return 1.0
    term, total = 1.0, 1.0  # load^k / k!, summed for k < servers
    for k in range(1, servers):
        term *= load / k
        total += term
    waiting = term * load / servers * servers / (servers - load)  # load^c / c! × c / (c − load)
    return waiting / (total + waiting)


def late_share(rate: float, servers: int, service_s: float, budget_s: float) -> float:
    """Share of a replica's requests that wait longer than `budget_s` for a slot, at `rate` requests/s.

    M/D/c (Poisson arrivals, the same service time for every request, as this trace's fixed lengths
    give): Erlang C for the chance of waiting, times an exponential tail whose rate is twice M/M/c's,
    (cμ − λ) × 2 / (1 + Cs²) with Cs = 0 (Kingman's heavy-traffic approximation). Round-robin makes a
    replica's arrivals more regular than Poisson, so this errs towards more replicas, never fewer.
    """
    if rate <= 0:
        return 0.0
    if rate * service_s >= servers:
        return 1.0
    slack = servers / service_s - rate
    return erlang_c(servers, rate * service_s) * math.exp(-2 * slack * budget_s)


def slo_capacity(servers: int, service_s: float, budget_s: float, late: float = LIMIT_LATE_SHARE) -> float:
    """The highest rate (requests/s) one replica takes with at most `late` of its requests waiting more
    than `budget_s`: late_share rises with the rate, so bisect between 0 and the full-batch throughput."""
    low, high = 0.0, servers / service_s
    for _ in range(60):
        middle = (low + high) / 2
        if late_share(middle, servers, service_s, budget_s) <= late:
            low = middle
        else:
            high = middle
    return low


@dataclass(frozen=True)
class LimitPolicy:
    """The clairvoyant limit: the trace's rate is known ahead, so replicas are ordered exactly in time.

        replicas(t) = clamp(ceil(max{ rate(s) : t <= s <= t + lead + interval } / capacity), min, max)

    - lead: a replica ordered at t serves from t + lead: the cold start (weights at the Hub's rate plus
      engine warm-up, fleetsim.podspec.load_seconds: 50 s here), the simulated kubelet's poll (0.5 s
      real) and the load generator's endpoint refresh (4 s);
    - interval: a decision holds until the next one (15 s, as ours and the HPA);
    - from t, not from t + lead: a replica removed at t stops serving at t, so the fleet never goes below
      what is needed now, and never waits for a cold start to meet what comes next;
    - capacity: requests/s per replica at the SLO (slo_capacity): with MAX_NUM_SEQS slots each held for
      request_seconds, at most LIMIT_LATE_SHARE of requests wait past SLO − first_token_seconds. For
      this benchmark: about 0.83 requests/s, 63 % of the full-batch throughput of 1.31 requests/s.

    It knows the rate, not the arrivals: Poisson bursts still queue, which is why capacity sits below
    throughput. No real policy can see the trace, so its SLO violations per GPU-hour are the floor.
    """

    trace: Callable[[float], float]
    lead_s: float
    interval_s: float
    capacity: float
    min_replicas: int
    max_replicas: int
    step_s: float = 1.0  # the trace is sampled at this step over the window (bursts start on whole seconds)

    def decide(self, t: float) -> int:
        """Replicas to have at `t` simulated seconds since the load started."""
        horizon = self.lead_s + self.interval_s
        samples = [t + i * self.step_s for i in range(math.floor(horizon / self.step_s) + 1)]
        peak = max(self.trace(s) for s in [*samples, t + horizon])
        # A hair under a whole number of replicas' capacity is that number, not one more.
        return clamp(math.ceil(peak / self.capacity - 1e-9), self.min_replicas, self.max_replicas)


def limit_policy(trace: Callable[[float], float], settings: Settings) -> LimitPolicy:
    profile = engine_profile()
    service = request_seconds(profile)
    capacity = slo_capacity(MAX_NUM_SEQS, service, settings.slo - first_token_seconds(profile))
    return LimitPolicy(
        trace, limit_lead_s(settings.scale), LIMIT_INTERVAL_S, capacity, MIN_REPLICAS, MAX_REPLICAS
    )


def limit_lead_s(scale: float) -> float:
    """Simulated seconds from a scale-up to a replica taking load (LimitPolicy's lead)."""
    cold_start = load_seconds(weights_bytes(MODEL_ID), "hf", KubeletParams())
    return cold_start + KUBELET_POLL_REAL_S * scale + ENDPOINT_REFRESH_S


# --- real KEDA and the real HPA ---------------------------------------------------------------------

KEDA_HPA = f"keda-hpa-{MODEL}"  # KEDA's name for the HPA of a ScaledObject
HPA_SYNC_FLAG = "--horizontal-pod-autoscaler-sync-period"
CONTROLLER_MANAGER_EXTRA = "GPUFLEET_CONTROLLER_MANAGER_EXTRA_ARGS"  # read by hack/cluster.sh up


def whole_seconds(seconds: float, scale: float) -> int:
    """`seconds` simulated as whole real seconds at `scale`; a BenchError when they are not whole."""
    real = seconds / scale
    if real < 1 or abs(real - round(real)) > 1e-9:
        raise BenchError(
            f"{seconds:g} s at time scale {scale:g} is {real:g} s real: KEDA and the HPA take whole seconds "
            f"(>= 1); use a time scale that divides {math.gcd(*map(int, WHOLE_SECOND_TIMERS.values()))}"
        )
    return round(real)


def hpa_sync_flag(scale: float) -> str:
    return f"{HPA_SYNC_FLAG}={whole_seconds(HPA_SYNC_S, scale)}s"


def scaled_object(namespace: str, prometheus: str, scale: float) -> dict[str, Any]:
    """The ScaledObject of the `keda` trial: the HPA-style policy's query and target, the published
    defaults of KEDA and the HPA divided by the time scale, passed to the HPA as its `behavior`."""
    period = whole_seconds(HPA_POLICY_PERIOD_S, scale)
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": MODEL, "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "name": MODEL},
            "minReplicaCount": MIN_REPLICAS,
            "maxReplicaCount": MAX_REPLICAS,
            "pollingInterval": whole_seconds(KEDA_POLLING_S, scale),
            "cooldownPeriod": whole_seconds(KEDA_COOLDOWN_S, scale),
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    # The HPA's default behavior, every window and period scaled.
                    "behavior": {
                        "scaleUp": {
                            "stabilizationWindowSeconds": 0,
                            "selectPolicy": "Max",
                            "policies": [
                                {"type": "Percent", "value": HPA_SCALE_UP_PERCENT, "periodSeconds": period},
                                {"type": "Pods", "value": HPA_SCALE_UP_PODS, "periodSeconds": period},
                            ],
                        },
                        "scaleDown": {
                            "stabilizationWindowSeconds": whole_seconds(HPA_SCALE_DOWN_WINDOW_S, scale),
                            "policies": [{"type": "Percent", "value": 100, "periodSeconds": period}],
                        },
                    }
                }
            },
            "triggers": [
                {
                    "type": "prometheus",
                    "metadata": {
                        "serverAddress": prometheus,
                        # `or vector(0)`: no series reads as an empty queue, not as an error.
                        "query": (
                            f'sum(vllm:num_requests_waiting{{namespace="{namespace}",model_name="{MODEL}"}})'
                            " or vector(0)"
                        ),
                        # An AverageValue target: ceil(sum / threshold) replicas, as the HPA-style policy.
                        "threshold": str(TARGET_QUEUE_DEPTH),
                    },
                }
            ],
        },
    }


_synced: set[Path] = set()  # control planes whose HPA sync period this process has set


def ensure_hpa_sync(cp: ControlPlane, scale: float) -> None:
    """kube-controller-manager's HPA syncing every 15 s simulated: a control plane started here got the
    flag at `up` (run()); a reused one from hack/cluster.sh gets kube-controller-manager restarted with
    it (`restart-controller-manager`; the last of a repeated flag wins)."""
    flag = hpa_sync_flag(scale)
    if cp.kubeconfig in _synced:
        return
    if cp.state is None:
        raise BenchError(
            f"keda: {cp.kubeconfig} is not a hack/cluster.sh control plane, so its HPA sync period cannot "
            f"be set; start one with {CONTROLLER_MANAGER_EXTRA}={flag} hack/cluster.sh up"
        )
    args = (cp.state / "kube-controller-manager.args").read_text().split("\0")
    current = [a for a in args if a.startswith(f"{HPA_SYNC_FLAG}=")]
    if not current or current[-1] != flag:
        log(f"keda: restarting kube-controller-manager with {flag}")
        restarted = subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "restart-controller-manager", str(cp.state), flag],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if restarted.returncode != 0:
            raise BenchError(f"restarting kube-controller-manager failed:\n{restarted.stderr[-2000:]}")
    _synced.add(cp.kubeconfig)


@contextlib.contextmanager
def controller_manager_flag(flag: str) -> Iterator[None]:
    """`flag` added to kube-controller-manager's at `hack/cluster.sh up` while the block runs."""
    before = os.environ.get(CONTROLLER_MANAGER_EXTRA)
    os.environ[CONTROLLER_MANAGER_EXTRA] = f"{before or ''} {flag}".strip()
    try:
        yield
    finally:
        if before is None:
            del os.environ[CONTROLLER_MANAGER_EXTRA]
        else:
            os.environ[CONTROLLER_MANAGER_EXTRA] = before


# --- figures ----------------------------------------------------------------------------------------


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
    readiness: list[tuple[float, int]]  # (simulated seconds since the load started, Ready pods), every sample
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
    name = label(result.policy)
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
        f"{name} scale-up to Ready: {_delays(startup_delays(result.timeline, result.readiness), scale)}",
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


def startup_delays(
    timeline: Sequence[tuple[float, int]], readiness: Sequence[tuple[float, int]]
) -> list[float]:
    """For each raise of spec.replicas to n at t, the simulated seconds until n pods were first seen Ready
    (samples at or after t); raises that were never met (a scale-down came first) are left out."""
    delays = []
    for i, (at, replicas) in enumerate(timeline):
        if i == 0 or replicas <= timeline[i - 1][1]:
            continue
        lowered = next((t for t, n in timeline[i + 1 :] if n < replicas), math.inf)
        met = next((t for t, ready in readiness if at <= t < lowered and ready >= replicas), None)
        if met is not None:
            delays.append(met - at)
    return delays


def _delays(delays: Sequence[float], scale: float) -> str:
    if not delays:
        return "no scale-up met"
    return (
        f"median {percentile(delays, 50):.0f} s, max {max(delays):.0f} s simulated over {len(delays)} "
        f"scale-ups (5 s samples; the limit assumes {limit_lead_s(scale):g} s)"
    )


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


# --- one trial --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    slo: float
    scale: float
    duration: float
    seed: int
    engine: str = "fleetsim"


def fleet_yaml(policy: str, engine: str = "fleetsim") -> dict[str, Any]:
    # Pool names carry the policy: each trial's nodes have names of their own.
    return {
        "engine": engine,  # which simulated vLLM serves the pods (fleetsim's own or llm-d-inference-sim)
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
            "model": {"uri": MODEL_URI, "parameterCount": 8.03e9, "maxModelLen": MAX_MODEL_LEN},
            "engine": {"args": [f"--max-num-seqs={MAX_NUM_SEQS}"]},
            "accelerator": {"gpuProduct": GPU_PRODUCT, "tensorParallelSize": GPUS_PER_REPLICA},
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
    def __init__(
        self,
        cp: ControlPlane,
        policy: str,
        settings: Settings,
        workdir: Path,
        keda: KedaBuild | None = None,
    ) -> None:
        if policy == "keda" and keda is None:
            raise BenchError("keda: no KEDA build (hack/install-keda.sh)")
        self.cp = cp
        self.policy = policy
        self.label = label(policy)
        self.settings = settings
        self.keda = keda
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

    def _pods(self, simulation: Simulation) -> tuple[int, int]:
        """The model's pods that hold a GPU and are not terminating (ready or starting), and of those
        the Ready ones."""
        response = simulation.core.list_namespaced_pod(
            self.namespace, label_selector=f"{LABEL_MODEL_DEPLOYMENT}={MODEL}", _preload_content=False
        )
        alive = [
            pod for pod in json.loads(response.data)["items"] if not pod["metadata"].get("deletionTimestamp")
        ]
        ready = sum(
            1
            for pod in alive
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (pod.get("status") or {}).get("conditions") or []
            )
        )
        return len(alive), ready

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
                log(f"{self.label}: evaluation or observation failed: {type(error).__name__}: {error}")

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

    def _limit(
        self, simulation: Simulation, trace: Callable[[float], float], started: float
    ) -> Callable[[float], None]:
        policy = limit_policy(trace, self.settings)

        def evaluate(now: float) -> None:
            # It reads no metric: only the trace, at the load's own time.
            desired = policy.decide(now - started)
            if desired != int(self._md(simulation)["spec"]["replicas"]):
                self._scale(simulation, desired)

        return evaluate

    def _start_keda_scaling(self, simulation: Simulation) -> None:
        """The ScaledObject applied, then until the HPA reads the metric: the load starts on a live HPA."""
        body = scaled_object(self.namespace, simulation.prometheus.url, self.settings.scale)
        self.cp.kubectl("apply", "-f", "-", stdin=json.dumps(body))
        deadline = time.monotonic() + READY_METRICS_TIMEOUT
        while True:
            found = self.cp.kubectl("get", "hpa", KEDA_HPA, "-n", self.namespace, "-o", "json", check=False)
            if found.returncode == 0:
                conditions = json.loads(found.stdout).get("status", {}).get("conditions") or []
                if any(c["type"] == "ScalingActive" and c["status"] == "True" for c in conditions):
                    return
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{self.label}: the HPA {KEDA_HPA} did not read KEDA's metric (ScalingActive) within "
                    f"{READY_METRICS_TIMEOUT:.0f}s"
                )
            time.sleep(0.5)

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
        readiness: list[tuple[float, int]] = []
        lags: list[float] = []
        usage = Usage()
        started = clock.now()

        def observe(now: float) -> None:
            replicas = int(self._md(simulation)["spec"]["replicas"])
            if not timeline or timeline[-1][1] != replicas:
                timeline.append((now - started, replicas))
            alive, ready = self._pods(simulation)
            usage.add(now, alive)
            readiness.append((now - started, ready))

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
        elif self.policy == "limit":
            limit = self._limit(simulation, load.trace, started)
            await asyncio.to_thread(limit, started)  # it knows the start too: no first interval at 1
            tasks.append(loop.create_task(self._every(simulation, LIMIT_INTERVAL_S, limit)))
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
            readiness=readiness,
            lags=lags,
            reasons=reasons,
            errors=self.errors,
            log_dir=self.workdir,
        )

    # ---- lifecycle ---------------------------------------------------------------------------------

    def _write_inputs(self) -> tuple[Path, Path]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        fleet = self.workdir / "fleet.yaml"
        fleet.write_text(yaml.safe_dump(fleet_yaml(self.policy, self.settings.engine), sort_keys=False))
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
                    f"{self.label}: no vLLM metrics in Prometheus after {READY_METRICS_TIMEOUT:.0f}s"
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
        with contextlib.ExitStack() as stack:
            if self.keda is not None and self.policy == "keda":
                ensure_hpa_sync(self.cp, settings.scale)
                log(f"{self.label}: starting KEDA's operator and metrics server")
                # Entered first, left last: KEDA takes its ScaledObject's finalizer off while the
                # namespace goes.
                stack.enter_context(Keda(self.cp, self.keda, self.workdir / f"keda-{self.namespace}"))
            background = stack.enter_context(fleet_in_namespace(core, simulation, self.namespace, self.label))
            log(f"{self.label}: starting the fleet, Prometheus and the operator in {self.namespace}")
            background.call(simulation.wait_ready(), timeout=scenario.ready_timeout / settings.scale + 60)
            self._wait_metrics(simulation)
            if self.policy == "keda":
                self._start_keda_scaling(simulation)
            real = settings.duration / settings.scale
            log(f"{self.label}: load for {settings.duration:.0f} s simulated ({real:.0f} s real)")
            result = background.call(self.drive(simulation), timeout=real + 600)
            require_operator_alive(simulation, self.label)
            return result


# --- the run ----------------------------------------------------------------------------------------


def caveat_lines(settings: Settings) -> list[str]:
    scale = settings.scale
    windows = ", ".join(
        f"{name} {max(1, round(planner_default(field) / scale))} s real (= {planner_default(field):g} s)"
        for name, (field, _) in PLANNER_WINDOWS.items()
    )
    whole = all(abs(s / scale - round(s / scale)) < 1e-9 and s >= scale for s in WHOLE_SECOND_TIMERS.values())
    lines = [
        f"caveat: time scale {scale:g} (simulated seconds per real second)"
        + (
            "; the largest at which the real HPA's and KEDA's default timers "
            f"({', '.join(f'{n} {v:g} s' for n, v in WHOLE_SECOND_TIMERS.items())}) are whole real seconds"
            if scale == DEFAULT_TIME_SCALE
            else ("; the real HPA's and KEDA's defaults are whole seconds at it" if whole else "")
        ),
        f"caveat: every policy timer is divided by it (ours: scaleDownDelaySeconds "
        f"{max(1, round(OURS_SCALE_DOWN_DELAY_S / scale))}, evaluation every {OURS_INTERVAL_S / scale:g} s "
        f"real; keda: HPA sync {HPA_SYNC_S / scale:g} s, scale-down stabilisation "
        f"{HPA_SCALE_DOWN_WINDOW_S / scale:g} s, policy periods {HPA_POLICY_PERIOD_S / scale:g} s, "
        f"pollingInterval {KEDA_POLLING_S / scale:g} s, cooldownPeriod {KEDA_COOLDOWN_S / scale:g} s real; "
        f"{label('kubeai')}: interval {KUBEAI_INTERVAL_S / scale:g} s, window {KUBEAI_WINDOW_S / scale:g} s "
        f"real; {label('hpa')}: the HPA's sync and stabilisation, in this process)",
        f"caveat: ours' planner windows are scaled through its settings: {windows}",
        f"caveat: Prometheus scrapes every 1 s real (= {scale:g} s simulated) for every policy",
        f"caveat: engine: {settings.engine}",
    ]
    policy = limit_policy(lambda _: 0.0, settings)
    lines.append(
        f"caveat: {label('limit')}: lead {policy.lead_s:g} s, interval {policy.interval_s:g} s, capacity "
        f"{policy.capacity:.3f} requests/s per replica at the SLO (p{100 * (1 - LIMIT_LATE_SHARE):g}, "
        f"full batch {MAX_NUM_SEQS / request_seconds(engine_profile()):.3f}; fleetsim's engine model, "
        "whichever engine runs)"
    )
    return lines


@dataclass(frozen=True)
class Figures:
    """What the comparison takes of one trial."""

    violations: float  # share of requests over the SLO
    gpu_hours: float
    requests: int  # requests sent (the same in every trial: one trace, one seed)

    @property
    def per_gpu_hour(self) -> float:
        """Requests over the SLO per GPU-hour."""
        return self.violations * self.requests / self.gpu_hours if self.gpu_hours > 0 else math.inf


def trial_name(policy: str, round_number: int) -> str:
    return policy if round_number == 1 else f"{policy}#{round_number}"


def trial_names(policies: Sequence[str], rounds: int) -> list[str]:
    """Policies interleaved round by round (ours, keda, kubeai, limit, ours#2, …), so that a slow spell
    of the machine falls on every policy of a round rather than on all rounds of one policy."""
    return [trial_name(policy, n) for n in range(1, rounds + 1) for policy in policies]


def policy_of(trial: str) -> str:
    return trial.split("#", 1)[0]


def round_of(trial: str) -> int:
    return int(trial.split("#", 1)[1]) if "#" in trial else 1


def peers(policies: Sequence[str]) -> list[str]:
    """What ours must beat: every policy run but ours and the limit, which no real policy can beat."""
    return [p for p in policies if p not in ("ours", "limit")]


def _goal(figures: Mapping[str, Figures], against: Sequence[str]) -> tuple[bool, bool]:
    ours = figures["ours"]
    others = [figures[p] for p in against]
    return (
        all(ours.violations < other.violations for other in others),
        all(ours.gpu_hours <= other.gpu_hours for other in others),
    )


def _verdict(fewer: bool, cheaper: bool) -> str:
    return (
        f"{'met' if fewer and cheaper else 'not met'} "
        f"(fewer violations: {'yes' if fewer else 'no'}, no more GPU-hours: {'yes' if cheaper else 'no'})"
    )


# The figures compared, with their format: (name, value of a trial, digits).
MEASURES: tuple[tuple[str, Callable[[Figures], float], int], ...] = (
    ("SLO violations", lambda f: f.violations, 4),
    ("GPU-hours", lambda f: f.gpu_hours, 3),
    ("violations per GPU-hour", lambda f: f.per_gpu_hour, 1),
)


def summary_lines(figures: Mapping[str, Figures]) -> list[str]:
    """Each policy's figures (means over rounds, with their min-max), ours' ratio to each other policy
    (ratio of the means, with the min-max of the per-round ratios), the goal, and the last line."""
    by_policy: dict[str, dict[int, Figures]] = {}
    for trial, trial_figures in figures.items():
        by_policy.setdefault(policy_of(trial), {})[round_of(trial)] = trial_figures
    run = [p for p in POLICIES if p in by_policy] + sorted(set(by_policy) - set(POLICIES))
    rounds = sorted({n for runs in by_policy.values() for n in runs})

    def mean(policy: str, value: Callable[[Figures], float]) -> float:
        values = [value(f) for f in by_policy[policy].values()]
        return sum(values) / len(values)

    lines = []
    for policy in run:
        runs = list(by_policy[policy].values())
        parts = [
            f"{name} {_number(mean(policy, value), digits)}{_spread([value(f) for f in runs], digits)}"
            for name, value, digits in MEASURES
        ]
        lines.append(f"{label(policy)}: " + ", ".join(parts))
    if "ours" in by_policy:
        ours = by_policy["ours"]
        for other in (p for p in run if p != "ours"):
            both = [n for n in rounds if n in ours and n in by_policy[other]]
            parts = []
            for name, value, _ in MEASURES:
                per_round = [ratio(value(ours[n]), value(by_policy[other][n])) for n in both]
                of_means = ratio(mean("ours", value), mean(other, value))
                parts.append(f"{name} {_number(of_means, 2)}{_spread(per_round, 2)}")
            lines.append(f"ours / {label(other)}: " + ", ".join(parts))
    against = peers(run)
    if "ours" in by_policy and against:
        goal = f"goal (fewer SLO violations than {', '.join(map(label, against))} at no more GPU-hours)"
        complete = [n for n in rounds if all(n in by_policy[p] for p in ["ours", *against])]
        if len(rounds) > 1:
            met = 0
            for n in complete:
                fewer, cheaper = _goal({p: by_policy[p][n] for p in ["ours", *against]}, against)
                met += fewer and cheaper
                lines.append(f"{goal}, round {n}: {_verdict(fewer, cheaper)}")
            if complete:
                lines.append(f"{goal}: met in {met} of {len(complete)} rounds")
        means = {
            p: Figures(
                mean(p, lambda f: f.violations),
                mean(p, lambda f: f.gpu_hours),
                round(mean(p, lambda f: f.requests)),
            )
            for p in ["ours", *against]
        }
        lines.append(
            f"{goal}{' on the means' if len(rounds) > 1 else ''}: {_verdict(*_goal(means, against))}"
        )
    listed = [p for p in POLICIES if p in DEFAULT_POLICIES or p in by_policy]

    def figure(policy: str, value: Callable[[Figures], float], digits: int) -> str:
        return _number(mean(policy, value), digits) if policy in by_policy else "n/a"

    violation_figures = " ".join(f"{p}={figure(p, lambda f: f.violations, 4)}" for p in listed)
    hour_figures = " ".join(f"{p}={figure(p, lambda f: f.gpu_hours, 3)}" for p in listed)
    lines.append(f"autoscale: slo_violations {violation_figures} gpu_hours {hour_figures}")
    return lines


def run(
    policies: Sequence[str], settings: Settings, kubeconfig: Path | None, rounds: int = 1
) -> dict[str, TrialResult]:
    keda: KedaBuild | None = None
    flags: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if "keda" in policies:
        whole_seconds(min(WHOLE_SECOND_TIMERS.values()), settings.scale)  # before anything starts
        log("keda: finding the KEDA build (hack/install-keda.sh; the first build takes 10-15 minutes)")
        keda = install_keda()
        # A control plane started here gets the HPA's sync period at `up`; a reused one, in its trial.
        flags = controller_manager_flag(hpa_sync_flag(settings.scale))
    with flags:
        return run_trials(
            "autoscale",
            trial_names(policies, rounds),
            kubeconfig,
            lambda cp, core, trial, workdir: Trial(cp, policy_of(trial), settings, workdir, keda).run(core),
            lambda result: report_lines(result, settings.slo, settings.scale),
            display=lambda trial: trial.replace(policy_of(trial), label(policy_of(trial)), 1),
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slo", type=float, default=2.0, help="TTFT SLO, simulated seconds (default 2)")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=DEFAULT_TIME_SCALE,
        help=f"simulated seconds per real second (default {DEFAULT_TIME_SCALE:g}: the largest at which the "
        "real HPA's and KEDA's timers stay whole seconds; with keda it must divide 15)",
    )
    parser.add_argument(
        "--duration", type=float, default=2700.0, help="simulated seconds of load (default 2700: 45 min)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrivals (the same in every trial)")
    parser.add_argument(
        "--policies",
        nargs="+",
        choices=POLICIES,
        default=list(DEFAULT_POLICIES),
        help=f"trials to run (default: {' '.join(DEFAULT_POLICIES)}; hpa is the re-implemented HPA)",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=ENGINES[0],
        help="the simulated vLLM the pods run (fleet file `engine:`; default fleetsim)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the trials this many times, interleaved (default 1)"
    )
    parser.add_argument("--kubeconfig", type=Path, help="reuse this control plane instead of starting one")
    args = parser.parse_args(argv)
    if args.slo <= 0 or args.time_scale <= 0 or args.duration <= 0 or args.rounds < 1:
        parser.error("--slo, --time-scale and --duration must be > 0, --rounds at least 1")
    settings = Settings(args.slo, args.time_scale, args.duration, args.seed, args.engine)
    log(caveat_lines(settings)[0].removeprefix("caveat: "))
    results = or_failure(lambda: run(args.policies, settings, args.kubeconfig, args.rounds))
    if results is None:
        return 1
    for line in caveat_lines(settings):
        print(line)
    figures = {
        trial: Figures(r.share(settings.slo), r.gpu_hours, r.report.sent) for trial, r in results.items()
    }
    print("\n".join(summary_lines(figures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
