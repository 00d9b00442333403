"""Canary benchmark: the bad-build story with our canary rollout and with today's all-at-once rolling update.

    python hack/bench/canary.py [--time-scale 10] [--duration 3600] [--patch-at 600] [--error-share 0.2]
                                [--replicas 4] [--load 0.5] [--seed 0] [--rounds 1]
                                [--policies ours ours+route all-at-once all-at-once+human] [--kubeconfig PATH]

One control plane; one trial per policy (per round), each on a fresh simulated fleet (fleetsim: one
on-demand p4de.24xlarge node in each of us-east-1a and us-east-1b, vLLM pods, Prometheus, moto, a
gpufleet operator) in a fresh namespace, with the same ModelDeployment (Llama 3 8B, TP 1, a fixed 4
replicas over both zones, autoscaling off, image vllm/vllm-openai:v0.34.0), the same steady load
(Poisson arrivals at half the fleet's capacity, the same seed) and the same story: at --patch-at
simulated seconds spec.engine.image becomes vllm/vllm-openai:v0.34.0-bad, which fleetsim runs as a bad
build (`builds:`, errorShare: a fifth of its completion requests answered HTTP 500 at once).

- ours:              spec.rollout: steps 10 % (pause 600 s), then 50 % (pause 1800 s), and analysis every
                     60 s after 100 requests per revision (maxErrorRate and the latency ratios at their
                     defaults). A failed judgement rolls the canary back (status.rollout.phase Aborted,
                     Event CanaryFailed) and the stable revision takes every replica again;
- ours+route:        the same spec.rollout plus spec.rollout.httpRoute naming an HTTPRoute the trial creates
                     (one rule, backendRef the model's Service, port 8000; a parent Gateway that need not
                     exist), and the load sent through fleetsim.gateway's HTTPRouteRouter (the route's
                     weights, then round-robin over each backend Service's ready endpoints) instead of the
                     model Service's endpoints: the canary gets the step's exact weight of the requests, not
                     its replica ratio. Its expected failures use the canary Service's share of the routed
                     requests (LoadReport.routed), printed beside what the replica share would have given.
                     The Gateway API CRDs (hack/install-gateway-api-crds.sh) are applied to the control
                     plane before its first trial;
- all-at-once:       no spec.rollout.steps, today's default: the operator rolls every group at once
                     through the real Deployment controller (maxSurge 1, maxUnavailable 0); the bad build
                     takes every replica and stays to the end;
- all-at-once+human: the same, plus a MODELLED human reaction (an assumption, not a measurement): the
                     ModelErrorRateHigh alert of charts/gpufleet/files/alerts.yaml (5xx share of
                     completions over 5 min > 1 %, `for: 10m`) evaluated on the load's own counts, and
                     5 minutes after it fires the spec is patched back to the good image.

The operator's timers are real seconds, so every operator-facing duration is divided by the time scale:
the steps' pauseSeconds, the analysis' intervalSeconds (at least 5, the API's minimum: clamped there, and
the run says so) and GPUFLEET_AUTOSCALE_INTERVAL_SECONDS (15 s simulated: the sweep that judges the
canary). Per trial it prints requests sent, failed requests by kind, GPU-hours, when the bad build served
and, for ours and ours+route, the time from the patch to the rollback, the canary's weight and the failures
expected from canary share x error share x requests; then the failures and GPU-hours of each policy, the
canary policies' ratio to each baseline and, with --rounds N, the min-max over rounds. It never asserts:
this is a benchmark, not a test. See hack/bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import random
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from benchkit import (
    BenchError,
    fleet_in_namespace,
    log,
    operator_lines,
    or_failure,
    ratio,
    require_operator_alive,
    run_trials,
)
from benchkit import number as _number
from benchkit import spread as _spread
from kubernetes import client

from fleetsim.gateway import GROUP as ROUTE_GROUP
from fleetsim.gateway import PLURAL as ROUTE_PLURAL
from fleetsim.gateway import VERSION as ROUTE_VERSION
from fleetsim.gateway import HTTPRouteRouter
from fleetsim.loadgen import LoadGenerator, LoadReport, arrival_times, parse_trace, ready_endpoints
from fleetsim.local import ROOT, ControlPlane, run_install_script
from fleetsim.params import KubeletParams
from fleetsim.podspec import load_seconds
from fleetsim.scenario import parse_scenario
from fleetsim.sim import Simulation
from fleetsim.vllm_model import EngineProfile, profile_for, weights_bytes
from gpufleet.api.v1alpha1 import GROUP, PLURAL, VERSION, Analysis
from gpufleet.config import Settings as OperatorSettings
from gpufleet.planning.workloads import LABEL_MODEL_DEPLOYMENT

POLICIES = ("ours", "ours+route", "all-at-once", "all-at-once+human")
CANARY_POLICIES = ("ours", "ours+route")  # a spec.rollout with steps and analysis
ROUTED_POLICIES = ("ours+route",)  # the load through a gateway that reads the HTTPRoute
# What each policy is called in every printed line: the modelled human says so.
LABELS = {
    "ours": "ours",
    "ours+route": "ours+route",
    "all-at-once": "all-at-once",
    "all-at-once+human": "all-at-once+human(modelled)",
}

# --- the workload -----------------------------------------------------------------------------------

MODEL = "llama-3-8b"
MODEL_ID = "meta-llama/Meta-Llama-3-8B-Instruct"
GPU_PRODUCT = "NVIDIA-A100-SXM4-80GB"
MAX_MODEL_LEN = 4096
REGION = "us-east-1"
ZONES = ("us-east-1a", "us-east-1b")
INSTANCE_TYPE = "p4de.24xlarge"  # 8 x A100 80GB: one node per zone holds its replicas and a surge
GPUS_PER_REPLICA = 1  # tensorParallelSize 1
GOOD_IMAGE = "vllm/vllm-openai:v0.34.0"
BAD_IMAGE = f"{GOOD_IMAGE}-bad"
# Four sequences per replica and 256 + 256 tokens per request, as autoscale.py and engines.py: one replica
# serves ~1.28 requests/s, so the real request rate (simulated rate x time scale) stays low on 2 cores.
MAX_NUM_SEQS = 4
PROMPT_TOKENS = MAX_TOKENS = 256

DEFAULT_REPLICAS = 4
DEFAULT_LOAD = 0.5  # share of the fleet's full-batch capacity
DEFAULT_PATCH_AT_S = 600.0
DEFAULT_DURATION_S = 3600.0
DEFAULT_ERROR_SHARE = 0.2
# The analysis' 60 s interval is 6 s real at 10, above the API's 5 s minimum (12 would put it exactly
# there); 3600 simulated s are 6 real minutes a trial.
DEFAULT_TIME_SCALE = 10.0

# --- ours: the rollout, simulated seconds -----------------------------------------------------------

OURS_STEPS = ((10, 600.0), (50, 1800.0))  # (weight %, pauseSeconds)
ANALYSIS_INTERVAL_S = 60.0
MIN_REQUESTS = 100  # a count of requests: not scaled

# --- ours+route: the HTTPRoute and its CRDs ---------------------------------------------------------

ROUTE = "bench-canary"
GATEWAY = "inference-gateway"  # the route's parentRef: no Gateway object needed (fleetsim's gateway reads it)
SERVICE_PORT = 8000
# The first revision runs in slot a, so the first canary (the bad build) is slot b's Service.
CANARY_SERVICE = f"{MODEL}-b"
GATEWAY_API_INSTALLER = ROOT / "hack" / "install-gateway-api-crds.sh"
GATEWAY_API_CRDS = (
    "gatewayclasses.gateway.networking.k8s.io",
    "gateways.gateway.networking.k8s.io",
    "httproutes.gateway.networking.k8s.io",
)
ROUTE_READY_TIMEOUT = 90.0  # real seconds for the operator's slot backends to appear in the route

# --- the modelled human (all-at-once+human) ---------------------------------------------------------

ALERTS_FILE = ROOT / "charts" / "gpufleet" / "files" / "alerts.yaml"
ALERT = "ModelErrorRateHigh"
REACTION_S = 300.0  # from the page to the spec patched back: acknowledge, find the cause, patch (assumed)

# --- observation ------------------------------------------------------------------------------------

ENDPOINT_REFRESH_S = 5.0  # simulated seconds between the load generator's endpoint lists
OBSERVE_S = 5.0  # simulated seconds between samples (fixed grid); also the modelled alert's evaluation
READY_METRICS_TIMEOUT = 90.0  # real seconds


def label(policy: str) -> str:
    return LABELS.get(policy, policy)


# --- the time scale (pure) --------------------------------------------------------------------------


def analysis_interval_floor() -> int:
    """The API's minimum of spec.rollout.analysis.intervalSeconds (its `ge`)."""
    for item in Analysis.model_fields["interval_seconds"].metadata:
        ge = getattr(item, "ge", None)
        if ge is not None:
            return int(ge)
    raise BenchError("spec.rollout.analysis.intervalSeconds has no minimum in the API model")


def sweep_default_s() -> float:
    """GPUFLEET_AUTOSCALE_INTERVAL_SECONDS' default: the sweep that judges canaries beside the autoscaler."""
    return float(OperatorSettings.defaults().autoscale_interval_seconds)


@dataclass(frozen=True)
class OperatorTimers:
    """The operator-facing durations of a trial in REAL seconds: the operator runs on the wall clock."""

    pauses: tuple[int, ...]  # spec.rollout.steps[].pauseSeconds
    interval: int  # spec.rollout.analysis.intervalSeconds
    interval_clamped: bool  # ANALYSIS_INTERVAL_S / scale was below the API's minimum
    sweep: float  # GPUFLEET_AUTOSCALE_INTERVAL_SECONDS

    def interval_simulated(self, scale: float) -> float:
        return self.interval * scale


def operator_timers(scale: float) -> OperatorTimers:
    floor = analysis_interval_floor()
    exact = ANALYSIS_INTERVAL_S / scale
    return OperatorTimers(
        pauses=tuple(max(1, round(pause / scale)) for _, pause in OURS_STEPS),
        interval=max(floor, round(exact)),
        interval_clamped=exact < floor,
        sweep=sweep_default_s() / scale,
    )


def timer_lines(scale: float) -> list[str]:
    """What the operator is told, real against simulated; the clamp, when there is one."""
    timers = operator_timers(scale)
    pauses = ", ".join(
        f"{real} s real (= {real * scale:g} s; asked {pause:g} s)"
        for (_, pause), real in zip(OURS_STEPS, timers.pauses, strict=True)
    )
    lines = [
        f"caveat: time scale {scale:g} (simulated seconds per real second); the operator's timers are "
        f"real seconds, so each is divided by it: pauseSeconds {pauses}; analysis intervalSeconds "
        f"{timers.interval} s real (= {timers.interval_simulated(scale):g} s; asked "
        f"{ANALYSIS_INTERVAL_S:g} s); GPUFLEET_AUTOSCALE_INTERVAL_SECONDS {timers.sweep:g} s real "
        f"(= {sweep_default_s():g} s, the sweep that judges the canary)"
    ]
    if timers.interval_clamped:
        floor = analysis_interval_floor()
        lines.append(
            f"caveat: CLAMPED: {ANALYSIS_INTERVAL_S:g} s / {scale:g} = {ANALYSIS_INTERVAL_S / scale:.2f} s "
            f"real is below the API's minimum intervalSeconds of {floor}: the canary is judged every "
            f"{timers.interval_simulated(scale):g} simulated seconds, not {ANALYSIS_INTERVAL_S:g} (use a "
            f"time scale of at most {ANALYSIS_INTERVAL_S / floor:g})"
        )
    return lines


# --- the trial's inputs (pure) ----------------------------------------------------------------------


def engine_profile() -> EngineProfile:
    return profile_for(
        MODEL_ID, GPUS_PER_REPLICA, GPU_PRODUCT, max_model_len=MAX_MODEL_LEN, max_num_seqs=MAX_NUM_SEQS
    )


def capacity_per_replica(profile: EngineProfile) -> float:
    """Requests/s one replica serves at a full batch on fleetsim's engine (engines.py's derivation):
    MAX_NUM_SEQS requests every MAX_NUM_SEQS prefills + MAX_TOKENS decode steps of a full batch."""
    step = profile.decode_step_s(MAX_NUM_SEQS, MAX_NUM_SEQS * (PROMPT_TOKENS + MAX_TOKENS // 2))
    prefill = MAX_NUM_SEQS * PROMPT_TOKENS / profile.prefill_tokens_per_s
    return MAX_NUM_SEQS / (MAX_TOKENS * step + prefill)


def cold_start_s() -> float:
    """Simulated seconds from a pod bound to its engine serving: weights from the Hub plus warm-up. The
    image is on the node already (fleetsim pulls once per node, whatever the tag)."""
    return load_seconds(weights_bytes(MODEL_ID), "hf", KubeletParams())


@dataclass(frozen=True)
class Settings:
    scale: float = DEFAULT_TIME_SCALE
    duration: float = DEFAULT_DURATION_S
    patch_at: float = DEFAULT_PATCH_AT_S
    error_share: float = DEFAULT_ERROR_SHARE
    replicas: int = DEFAULT_REPLICAS
    load: float = DEFAULT_LOAD
    seed: int = 0

    @property
    def rate(self) -> float:
        """Requests per simulated second: `load` of the replicas' full-batch capacity."""
        return self.load * self.replicas * capacity_per_replica(engine_profile())


def trial_name(policy: str, round_number: int) -> str:
    return policy if round_number == 1 else f"{policy}#{round_number}"


def trial_names(policies: Sequence[str], rounds: int) -> list[str]:
    """Policies interleaved round by round (ours, all-at-once, all-at-once+human, ours#2, …), so that a slow
    spell of the machine falls on every policy of a round rather than on all rounds of one policy."""
    return [trial_name(policy, n) for n in range(1, rounds + 1) for policy in policies]


def policy_of(trial: str) -> str:
    return trial.split("#", 1)[0]


def round_of(trial: str) -> int:
    return int(trial.split("#", 1)[1]) if "#" in trial else 1


def slug(trial: str) -> str:
    """The trial's name as it can stand in a namespace or node name (all-at-once+human#2 ->
    all-at-once-human-2)."""
    return re.sub(r"[^a-z0-9-]+", "-", trial.lower())


def fleet_yaml(trial: str) -> dict[str, Any]:
    # Pool names carry the trial: each trial's nodes have names of their own.
    name = slug(trial)
    return {
        "region": REGION,
        "provisioning_delay_s": 35,
        "gpu_boot_extra_s": 45,
        "pools": [
            {
                "name": f"{name}-1{zone[-1]}-od",
                "instance_type": INSTANCE_TYPE,
                "zone": zone,
                "capacity_type": "on-demand",
                "count": 1,
                "max_count": 1,  # 8 GPUs per zone: capacity never limits the replicas, a surge or a canary
            }
            for zone in ZONES
        ],
    }


def rollout_spec(timers: OperatorTimers) -> dict[str, Any]:
    """ours' spec.rollout, its durations in real seconds."""
    return {
        "steps": [
            {"weight": weight, "pauseSeconds": pause}
            for (weight, _), pause in zip(OURS_STEPS, timers.pauses, strict=True)
        ],
        "analysis": {"intervalSeconds": timers.interval, "minRequests": MIN_REQUESTS},
    }


def model_deployment(policy: str, settings: Settings) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": f"hf://{MODEL_ID}", "parameterCount": 8.03e9, "maxModelLen": MAX_MODEL_LEN},
        "engine": {"image": GOOD_IMAGE, "args": [f"--max-num-seqs={MAX_NUM_SEQS}"]},
        "accelerator": {"gpuProduct": GPU_PRODUCT, "tensorParallelSize": GPUS_PER_REPLICA},
        "replicas": settings.replicas,
        "minReplicas": 1,
        "maxReplicas": settings.replicas,
        "autoscaling": {"enabled": False},
        "capacity": {"zones": list(ZONES), "spotPercent": 0},
    }
    if policy in CANARY_POLICIES:
        spec["rollout"] = rollout_spec(operator_timers(settings.scale))
    if policy in ROUTED_POLICIES:
        spec["rollout"]["httpRoute"] = {"name": ROUTE}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": MODEL},
        "spec": spec,
    }


def http_route(namespace: str) -> dict[str, Any]:
    """ours+route's HTTPRoute as a user writes it: one rule at the model's Service; the operator replaces
    that backendRef with its slot Services and their weights."""
    return {
        "apiVersion": f"{ROUTE_GROUP}/{ROUTE_VERSION}",
        "kind": "HTTPRoute",
        "metadata": {"name": ROUTE, "namespace": namespace},
        "spec": {
            "parentRefs": [{"name": GATEWAY}],
            "rules": [{"backendRefs": [{"name": MODEL, "port": SERVICE_PORT}]}],
        },
    }


def route_weights(route: Mapping[str, Any]) -> dict[str, int]:
    """The backendRefs' weights of the route's first rule, by Service (a missing weight is 1)."""
    rules = (route.get("spec") or {}).get("rules") or [{}]
    return {str(ref["name"]): int(ref.get("weight", 1)) for ref in rules[0].get("backendRefs") or []}


def image_patch(image: str) -> dict[str, Any]:
    """The spec merge patch of the story (what a scenario's `patch` event sends)."""
    return {"engine": {"image": image}}


def scenario_document(
    trial: str, settings: Settings, fleet: Path, manifest: Path, namespace: str
) -> dict[str, Any]:
    """The trial's scenario: the bad build declared by its image, the sweep interval scaled. Its `events:`
    stay empty: Simulation runs them only in its own run(), and a benchmark drives its own load, so the
    patches are sent by the trial itself through Simulation.patch_model_deployment (what a `patch` event
    runs), at their simulated times since the load started."""
    return {
        "name": f"bench-canary-{slug(trial)}",
        "timeScale": settings.scale,
        "duration": settings.duration,
        "fleet": str(fleet),
        "namespace": namespace,
        "apply": [str(manifest)],
        "builds": {BAD_IMAGE: {"errorShare": settings.error_share}},
        "operatorEnv": {"GPUFLEET_AUTOSCALE_INTERVAL_SECONDS": f"{operator_timers(settings.scale).sweep:g}"},
    }


# --- the modelled alert (pure) ----------------------------------------------------------------------

_DURATION = re.compile(r"^(?P<n>[0-9]+(?:\.[0-9]+)?)(?P<unit>ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def prometheus_seconds(text: str) -> float:
    """A Prometheus duration of one unit (`10m`, `5m`, `30s`) in seconds."""
    found = _DURATION.match(text.strip())
    if found is None:
        raise ValueError(f"not a Prometheus duration of one unit: {text!r}")
    return float(found["n"]) * _UNITS[found["unit"]]


@dataclass(frozen=True)
class AlertRule:
    threshold: float  # 5xx share of completions above which the condition holds
    window_s: float  # the rate() range
    for_s: float  # how long it must hold before the alert fires


def alert_rule(document: str, name: str = ALERT) -> AlertRule:
    """ModelErrorRateHigh as the chart ships it: the threshold (`> x` at the end of its expression), the
    range of its rate() and its `for:`."""
    data = yaml.safe_load(document)
    for group in data.get("groups", []):
        for rule in group.get("rules", []):
            if rule.get("alert") != name:
                continue
            expr = str(rule["expr"])
            threshold = re.search(r">\s*([0-9.eE+-]+)\s*$", expr.strip())
            window = re.search(r"\[([0-9.]+(?:ms|s|m|h|d))\]", expr)
            if threshold is None or window is None:
                raise BenchError(f"{name}: cannot read its threshold or rate window from {expr!r}")
            return AlertRule(
                float(threshold[1]), prometheus_seconds(window[1]), prometheus_seconds(rule["for"])
            )
    raise BenchError(f"no alert {name} in the chart's alerts")


def chart_alert_rule() -> AlertRule:
    return alert_rule(ALERTS_FILE.read_text())


@dataclass(frozen=True)
class Sample:
    """The fleet and the load at one instant of the trial."""

    t: float  # simulated seconds since the load started
    placed: int  # the model's pods not terminating (ready or starting): each holds GPUS_PER_REPLICA
    ready: int  # of them Ready: the load generator's endpoints (within one refresh)
    bad_ready: int  # of the ready ones, those running BAD_IMAGE
    image: str = GOOD_IMAGE  # spec.engine.image
    phase: str = ""  # status.rollout.phase ("" without a canary)
    weight: int = 0  # status.rollout.weight: ready canary replicas over ready replicas, percent
    sent: int = 0  # the load's requests so far
    failed_5xx: int = 0  # of them answered 5xx
    routed: int = 0  # ours+route: the load's requests the gateway routed to a backend Service so far
    routed_canary: int = 0  # of them to CANARY_SERVICE


def alert_fires_at(samples: Sequence[Sample], rule: AlertRule) -> float | None:
    """When the alert would be seen firing, evaluated at every sample on the load's own counts: the 5xx
    share of the requests sent over the trailing `window_s` (from the sample at or before its start, else
    the first) above the threshold at every evaluation for `for_s`. None if it never fires."""
    pending: float | None = None
    times = [s.t for s in samples]
    for sample in samples:
        i = max(0, bisect.bisect_right(times, sample.t - rule.window_s) - 1)
        base = samples[i]
        sent = sample.sent - base.sent
        holds = sent > 0 and (sample.failed_5xx - base.failed_5xx) / sent > rule.threshold
        if not holds:
            pending = None
            continue
        if pending is None:
            pending = sample.t
        if sample.t - pending >= rule.for_s:
            return sample.t
    return None


def human_revert_at(fired_at: float, reaction_s: float = REACTION_S) -> float:
    """When the modelled human has the spec back at the good image: the page, then `reaction_s`."""
    return fired_at + reaction_s


# --- figures (pure) ---------------------------------------------------------------------------------


def integrate_gpu_seconds(samples: Sequence[Sample], end: float) -> float:
    """GPU-seconds of the model's placed pods: each sample holds until the next (the last until `end`)."""
    total = 0.0
    for i, sample in enumerate(samples):
        until = samples[i + 1].t if i + 1 < len(samples) else end
        total += sample.placed * GPUS_PER_REPLICA * max(0.0, until - sample.t)
    return total


def arrivals(rate: float, duration: float, seed: int) -> list[float]:
    """The load's arrival instants: LoadGenerator draws them from random.Random(seed) alone (its prompts
    have a stream of their own), so the same call gives the same instants."""
    return list(arrival_times(parse_trace({"kind": "constant", "rate": rate}), duration, random.Random(seed)))


def expected_failures(samples: Sequence[Sample], sent_at: Sequence[float], error_share: float) -> float:
    """error_share x the sum over requests of the bad build's share of the ready replicas when each was
    sent (the sample in force: the last at or before it). Round-robin over ready pods makes a replica's
    share of requests 1 / ready replicas."""
    times = [s.t for s in samples]
    total = 0.0
    for at in sent_at:
        i = bisect.bisect_right(times, at) - 1
        if i < 0:
            continue
        sample = samples[i]
        if sample.ready:
            total += sample.bad_ready / sample.ready
    return error_share * total


def canary_window(samples: Sequence[Sample]) -> tuple[float, float | None] | None:
    """(first sample with a ready bad replica, first sample from it on with phase Aborted or None);
    None when the bad build never served."""
    first = next((s.t for s in samples if s.bad_ready > 0), None)
    if first is None:
        return None
    aborted = next((s.t for s in samples if s.t >= first and s.phase == "Aborted"), None)
    return first, aborted


def requests_between(sent_at: Sequence[float], start: float, end: float) -> int:
    return bisect.bisect_left(sent_at, end) - bisect.bisect_left(sent_at, start)


def expected_canary_failures(weight_percent: float, error_share: float, requests: int) -> float:
    """Canary share x error share x the requests sent while the canary served."""
    return weight_percent / 100 * error_share * requests


def replica_share_percent(samples: Sequence[Sample]) -> float:
    """The highest share of the ready replicas that ran the bad build, percent: the canary's share of the
    requests by replica ratio (round-robin over the pods)."""
    return max((100 * s.bad_ready / s.ready for s in samples if s.ready), default=0.0)


def routed_between(samples: Sequence[Sample], start: float, end: float) -> tuple[int, int]:
    """(to the canary Service, to any Service): the requests the gateway routed from the sample at or
    before `start` to the sample at or before `end` (the samples' running counts)."""
    times = [s.t for s in samples]
    first = samples[max(0, bisect.bisect_right(times, start) - 1)]
    last = samples[max(0, bisect.bisect_right(times, end) - 1)]
    return last.routed_canary - first.routed_canary, last.routed - first.routed


@dataclass(frozen=True)
class BadServing:
    first: float | None  # first sample with a ready bad replica
    last: float | None  # last sample with one (the bad build served until the next sample)
    peak: int  # most ready bad replicas at once
    peak_of: int  # ready replicas then


def bad_serving(samples: Sequence[Sample]) -> BadServing:
    serving = [s for s in samples if s.bad_ready > 0]
    if not serving:
        return BadServing(None, None, 0, 0)
    top = max(serving, key=lambda s: (s.bad_ready / s.ready, s.bad_ready))
    return BadServing(serving[0].t, serving[-1].t, top.bad_ready, top.ready)


def timeline(samples: Sequence[Sample]) -> str:
    """`t:bad/ready/placed` (and the rollout phase) at every change."""
    parts: list[str] = []
    last: tuple[int, int, int, str] | None = None
    for s in samples:
        state = (s.bad_ready, s.ready, s.placed, s.phase)
        if state != last:
            parts.append(
                f"{s.t:.0f}s:{s.bad_ready}/{s.ready}/{s.placed}" + (f"[{s.phase}]" if s.phase else "")
            )
            last = state
    return " ".join(parts)


# --- one trial --------------------------------------------------------------------------------------


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _runs(pod: dict[str, Any], image: str) -> bool:
    return any(c.get("image") == image for c in pod.get("spec", {}).get("containers", []))


@dataclass
class Story:
    """What the trial did to the spec, simulated seconds since the load started."""

    patched_at: float | None = None
    alert_fired_at: float | None = None  # all-at-once+human: the modelled alert, seen online
    reverted_at: float | None = None  # all-at-once+human: the spec patched back
    refused: list[str] = field(default_factory=list)  # patches the API server refused


@dataclass
class TrialResult:
    trial: str
    settings: Settings
    report: LoadReport
    samples: list[Sample]
    window_s: float
    sent_at: list[float]  # the load's arrival instants, regenerated from the seed
    story: Story
    analysis: dict[str, Any]  # status.analysis at the end
    reasons: Counter[str]  # the ModelDeployment's Events by reason
    operator_errors: int
    operator_log: Path
    errors: int  # failed observations

    @property
    def policy(self) -> str:
        return policy_of(self.trial)

    @property
    def failed(self) -> int:
        return self.report.error_count

    @property
    def gpu_hours(self) -> float:
        return integrate_gpu_seconds(self.samples, self.window_s) / 3600

    @property
    def rolled_back_at(self) -> float | None:
        window = canary_window(self.samples)
        return window[1] if window is not None else None

    @property
    def rollback_s(self) -> float | None:
        """Simulated seconds from the bad build's patch to the canary's rollback (ours)."""
        at, patched = self.rolled_back_at, self.story.patched_at
        return at - patched if at is not None and patched is not None else None

    @property
    def weight(self) -> int:
        """The highest weight the canary reached (status.rollout.weight)."""
        return max((s.weight for s in self.samples), default=0)


_GATEWAY_API_ON: set[Path] = set()  # control planes (by kubeconfig) with the Gateway API CRDs applied


def ensure_gateway_api_crds(cp: ControlPlane) -> None:
    """The pinned Gateway API CRDs (hack/install-gateway-api-crds.sh: cached after its first run) applied
    to the control plane and Established, once per control plane."""
    if cp.kubeconfig in _GATEWAY_API_ON:
        return
    try:
        folder = str(run_install_script(GATEWAY_API_INSTALLER, timeout=600))
    except RuntimeError as error:
        raise BenchError(str(error)) from error
    log(f"applying the Gateway API CRDs from {folder}")
    cp.kubectl("apply", "--server-side", "-f", folder)
    crds = [f"crd/{name}" for name in GATEWAY_API_CRDS]
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", *crds)
    _GATEWAY_API_ON.add(cp.kubeconfig)


class Trial:
    def __init__(
        self, cp: ControlPlane, trial: str, settings: Settings, workdir: Path, rule: AlertRule
    ) -> None:
        self.cp = cp
        self.trial = trial
        self.policy = policy_of(trial)
        self.name = display(trial)
        self.settings = settings
        self.rule = rule
        self.workdir = workdir / slug(trial)
        self.namespace = f"bench-canary-{slug(trial)}-{uuid.uuid4().hex[:6]}"
        self.selector = f'namespace="{self.namespace}",model_name="{MODEL}"'
        self.errors = 0

    # ---- API helpers (blocking; called in threads) -------------------------------------------------

    def _md(self, simulation: Simulation) -> dict[str, Any]:
        found: dict[str, Any] = simulation.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, MODEL
        )
        return found

    def _read(self, simulation: Simulation) -> tuple[int, int, int, str, str, int]:
        md = self._md(simulation)
        response = simulation.core.list_namespaced_pod(
            self.namespace, label_selector=f"{LABEL_MODEL_DEPLOYMENT}={MODEL}", _preload_content=False
        )
        pods = [p for p in json.loads(response.data)["items"] if not p["metadata"].get("deletionTimestamp")]
        ready = [p for p in pods if _ready(p)]
        rollout = (md.get("status") or {}).get("rollout") or {}
        return (
            len(pods),
            len(ready),
            sum(1 for p in ready if _runs(p, BAD_IMAGE)),
            str(((md.get("spec") or {}).get("engine") or {}).get("image", "")),
            str(rollout.get("phase", "")),
            int(rollout.get("weight", 0) or 0),
        )

    def _query(self, simulation: Simulation, promql: str) -> float | None:
        result = simulation.prometheus.query(promql)
        return float(result[0]["value"][1]) if result else None

    def _reasons(self, simulation: Simulation) -> Counter[str]:
        events = simulation.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={MODEL},involvedObject.kind=ModelDeployment"
        ).items
        reasons: Counter[str] = Counter()
        for event in events:
            reasons[event.reason or "?"] += event.count or 1
        return reasons

    # ---- coroutines on the simulation's loop -------------------------------------------------------

    async def _sample(self, simulation: Simulation, load: LoadGenerator, started: float) -> Sample:
        placed, ready, bad, image, phase, weight = await asyncio.to_thread(self._read, simulation)
        report = load.report()  # the loop's own state: read on the loop
        failed_5xx = sum(n for kind, n in report.errors.items() if kind.startswith("5"))
        routed = sum(report.routed.values())
        to_canary = report.routed.get(CANARY_SERVICE, 0)
        t = simulation.clock.now() - started
        return Sample(t, placed, ready, bad, image, phase, weight, report.sent, failed_5xx, routed, to_canary)

    async def _observe(
        self, simulation: Simulation, load: LoadGenerator, started: float, samples: list[Sample]
    ) -> None:
        clock = simulation.clock
        tick = 0
        while True:
            try:
                samples.append(await self._sample(simulation, load, started))
            except Exception as error:  # one failed sample must not end the trial; it is counted
                self.errors += 1
                log(f"{self.name}: observation failed: {type(error).__name__}: {error}")
            tick += 1
            await asyncio.sleep(max(0.0, clock.real(started + tick * OBSERVE_S - clock.now())))

    async def _patch(self, simulation: Simulation, image: str, story: Story) -> None:
        before = len(simulation.snapshot.events)
        await simulation.patch_model_deployment(MODEL, image_patch(image))
        story.refused += [e for e in simulation.snapshot.events[before:] if "refused" in e]

    async def _bad_build(self, simulation: Simulation, started: float, story: Story) -> None:
        clock = simulation.clock
        await asyncio.sleep(max(0.0, clock.real(started + self.settings.patch_at - clock.now())))
        story.patched_at = clock.now() - started
        log(f"{self.name}: t={story.patched_at:.0f}s spec.engine.image -> {BAD_IMAGE}")
        await self._patch(simulation, BAD_IMAGE, story)

    async def _human(
        self, simulation: Simulation, started: float, samples: list[Sample], story: Story
    ) -> None:
        """The modelled on-call engineer: the alert evaluated on every new sample; REACTION_S after it
        fires, the spec goes back to the good image."""
        clock = simulation.clock
        while (fired := alert_fires_at(samples, self.rule)) is None:
            await clock.sleep(OBSERVE_S)
        story.alert_fired_at = fired
        revert = human_revert_at(fired)
        log(f"{self.name}: t={fired:.0f}s {ALERT} fires (modelled); the spec goes back at t={revert:.0f}s")
        await asyncio.sleep(max(0.0, clock.real(started + revert - clock.now())))
        story.reverted_at = clock.now() - started
        log(f"{self.name}: t={story.reverted_at:.0f}s spec.engine.image -> {GOOD_IMAGE} (modelled human)")
        await self._patch(simulation, GOOD_IMAGE, story)

    async def drive(
        self, simulation: Simulation
    ) -> tuple[LoadReport, list[Sample], float, Story, dict[str, Any]]:
        settings, clock = self.settings, simulation.clock

        def service_endpoints() -> list[str]:
            return ready_endpoints(simulation.core, self.namespace, MODEL)

        endpoints: Callable[[], list[str]] | HTTPRouteRouter = service_endpoints
        if self.policy in ROUTED_POLICIES:
            endpoints = HTTPRouteRouter(simulation.custom, simulation.core, self.namespace, ROUTE)
        load = LoadGenerator(
            endpoints,
            MODEL,
            parse_trace({"kind": "constant", "rate": settings.rate}),
            clock,
            prompt_tokens=PROMPT_TOKENS,
            max_tokens=MAX_TOKENS,
            seed=settings.seed,
            refresh_s=ENDPOINT_REFRESH_S,
        )
        samples: list[Sample] = []
        story = Story()
        loop = asyncio.get_running_loop()
        started = clock.now()
        tasks = [
            loop.create_task(self._observe(simulation, load, started, samples)),
            loop.create_task(self._bad_build(simulation, started, story)),
        ]
        if self.policy == "all-at-once+human":
            tasks.append(loop.create_task(self._human(simulation, started, samples, story)))
        try:
            report = await load.run(settings.duration)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        ended = clock.now() - started
        with contextlib.suppress(Exception):
            samples.append(await self._sample(simulation, load, started))
        md = await asyncio.to_thread(self._md, simulation)
        analysis = (md.get("status") or {}).get("analysis") or {}
        return report, samples, ended, story, analysis

    def _wait_metrics(self, simulation: Simulation) -> None:
        """Until Prometheus has every replica's gauges: every trial starts from the same view, and ours'
        analysis finds its stable revision's series."""
        end = time.monotonic() + READY_METRICS_TIMEOUT
        reporting: float | None = None
        while True:
            with contextlib.suppress(Exception):
                reporting = self._query(simulation, f"count(vllm:num_requests_running{{{self.selector}}})")
            if reporting is not None and reporting >= self.settings.replicas:
                return
            if time.monotonic() > end:
                raise BenchError(
                    f"{self.name}: {reporting} replicas in Prometheus after {READY_METRICS_TIMEOUT:.0f}s"
                )
            time.sleep(0.5)

    def _create_route(self, simulation: Simulation) -> None:
        simulation.custom.create_namespaced_custom_object(
            ROUTE_GROUP, ROUTE_VERSION, self.namespace, ROUTE_PLURAL, http_route(self.namespace)
        )

    def _route(self, simulation: Simulation) -> dict[str, Any]:
        found: dict[str, Any] = simulation.custom.get_namespaced_custom_object(
            ROUTE_GROUP, ROUTE_VERSION, self.namespace, ROUTE_PLURAL, ROUTE
        )
        return found

    def _wait_route(self, simulation: Simulation) -> None:
        """ours+route: until the operator has written its slot Services into the route (the stable slot at
        100), so the load starts through the slot backends as it will run."""
        end = time.monotonic() + ROUTE_READY_TIMEOUT
        weights: dict[str, int] = {}
        while True:
            with contextlib.suppress(Exception):
                weights = route_weights(self._route(simulation))
            if weights.get(f"{MODEL}-a") == 100:
                log(f"{self.name}: HTTPRoute {ROUTE} backends {weights}")
                return
            if time.monotonic() > end:
                raise BenchError(
                    f"{self.name}: HTTPRoute {ROUTE} backends {weights} after {ROUTE_READY_TIMEOUT:.0f}s"
                )
            time.sleep(0.5)

    def _write_inputs(self) -> tuple[Path, Path]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        fleet = self.workdir / "fleet.yaml"
        fleet.write_text(yaml.safe_dump(fleet_yaml(self.trial), sort_keys=False))
        manifest = self.workdir / "model.json"
        manifest.write_text(json.dumps(model_deployment(self.policy, self.settings), indent=2))
        return fleet, manifest

    def run(self, core: client.CoreV1Api) -> TrialResult:
        settings = self.settings
        fleet, manifest = self._write_inputs()
        document = scenario_document(self.trial, settings, fleet, manifest, self.namespace)
        (self.workdir / "scenario.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
        scenario = parse_scenario(document, ROOT)
        routed = self.policy in ROUTED_POLICIES
        if routed:
            ensure_gateway_api_crds(self.cp)
        simulation = Simulation(
            scenario, self.cp.kubeconfig, self.workdir, kubectl=self.cp.kubectl_path, run_operator=True
        )
        with fleet_in_namespace(core, simulation, self.namespace, self.name) as background:
            # The route before the ModelDeployment is applied (the fleet takes seconds to start).
            if routed:
                self._create_route(simulation)
            log(f"{self.name}: starting the fleet, Prometheus, moto and the operator in {self.namespace}")
            background.call(simulation.wait_ready(), timeout=scenario.ready_timeout / settings.scale + 60)
            self._wait_metrics(simulation)
            if routed:
                self._wait_route(simulation)
            real = settings.duration / settings.scale
            log(
                f"{self.name}: load for {settings.duration:.0f} s simulated ({real:.0f} s real), "
                f"{settings.rate:.2f} requests/s; the bad build at {settings.patch_at:.0f} s"
            )
            report, samples, window, story, analysis = background.call(
                self.drive(simulation), timeout=real + 600
            )
            require_operator_alive(simulation, self.name)
            reasons = self._reasons(simulation)
            operator_log = simulation.operator.log
            text = operator_log.read_text(errors="replace") if operator_log.exists() else ""
            operator_errors = sum(1 for line in text.splitlines() if "ERROR" in line or "Traceback" in line)
            with contextlib.suppress(OSError):
                (self.workdir / "fleet-events.txt").write_text("\n".join(simulation.snapshot.events) + "\n")
        if story.refused:
            raise BenchError(
                f"{self.name}: the API server refused the story's patch: {'; '.join(story.refused)}"
            )
        return TrialResult(
            self.trial,
            settings,
            report,
            samples,
            window,
            arrivals(settings.rate, settings.duration, settings.seed),
            story,
            analysis,
            reasons,
            operator_errors,
            operator_log,
            self.errors,
        )


# --- the report -------------------------------------------------------------------------------------


def _at(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f} s"


def display(trial: str) -> str:
    """How a trial is named in every line: its policy's label, and its round."""
    policy = policy_of(trial)
    return label(policy) + trial.removeprefix(policy)


def ours_lines(result: TrialResult, name: str) -> list[str]:
    """ours and ours+route: the rollback, the weight reached, the expected failures beside the measured
    ones (ours+route: by the route's share of the requests, and what the replica share would have given)."""
    settings, samples = result.settings, result.samples
    measured = result.report.errors.get("500", 0)
    window = canary_window(samples)
    if window is None:
        return [f"{name} canary: no canary replica was seen ready in the run"]
    ready_at, aborted_at = window
    weight = result.weight
    patched = result.story.patched_at
    if aborted_at is None:
        rolled = f"not rolled back in the run (first ready replica at {ready_at:.0f} s)"
    else:
        since_patch = f"{aborted_at - patched:.0f} s after the patch and " if patched is not None else ""
        rolled = (
            f"rolled back (status.rollout.phase Aborted) at {aborted_at:.0f} s, {since_patch}"
            f"{aborted_at - ready_at:.0f} s after its first ready replica"
        )
    end = aborted_at if aborted_at is not None else result.window_s
    requests = requests_between(result.sent_at, ready_at, end)
    if result.policy not in ROUTED_POLICIES:
        expected = expected_canary_failures(weight, settings.error_share, requests)
        lines = [
            f"{name} canary: {rolled}; weight reached {weight} % (step 1 asks {OURS_STEPS[0][0]} %: the "
            f"smallest canary that reaches it, 1 of {settings.replicas} replicas; {OBSERVE_S:g} s samples)",
            f"{name} expected failures: canary share {weight} % x error share {settings.error_share:g} x "
            f"{requests} requests sent while it served ({ready_at:.0f}-{end:.0f} s) = {expected:.1f}; "
            f"measured {measured} (HTTP 500)",
        ]
    else:
        lines = route_lines(result, name, rolled, (ready_at, end), requests, measured)
    analysis = result.analysis
    if analysis:
        canary = analysis.get("canary") or {}
        lines.append(
            f"{name} analysis (status.analysis at the end): {analysis.get('verdict', '?')} at step "
            f"{analysis.get('step', '?')}, canary {canary.get('requests', '?')} requests, error rate "
            f"{canary.get('errorRate', '?')}: {analysis.get('message', '')}"
        )
    return lines


def route_lines(
    result: TrialResult, name: str, rolled: str, window: tuple[float, float], requests: int, measured: int
) -> list[str]:
    """ours+route: the canary's share of the requests as the route gave it (LoadReport.routed, and the
    samples' running counts over its window) beside what its replica share would have given."""
    settings, report = result.settings, result.report
    ready_at, end = window
    replicas = replica_share_percent(result.samples)
    by_replicas = expected_canary_failures(replicas, settings.error_share, requests)
    to_canary, routed = routed_between(result.samples, ready_at, end)
    share = to_canary / routed if routed else 0.0
    total_canary = report.routed.get(CANARY_SERVICE, 0)
    total = sum(report.routed.values())
    by_route = settings.error_share * total_canary
    routed_by = ", ".join(f"{service} {n}" for service, n in sorted(report.routed.items())) or "none"
    return [
        f"{name} canary: {rolled}; route weight reached {result.weight} % (status.rollout.weight; step 1 "
        f"asks {OURS_STEPS[0][0]} %), replica share {replicas:.0f} % (bad of ready replicas; "
        f"{OBSERVE_S:g} s samples)",
        f"{name} routed by the gateway (LoadReport.routed): {routed_by} (of {report.sent} sent); the canary "
        f"Service {CANARY_SERVICE} got {to_canary} of {routed} routed while it served "
        f"({ready_at:.0f}-{end:.0f} s samples: {share:.1%})",
        f"{name} expected failures by the route: error share {settings.error_share:g} x {total_canary} "
        f"requests routed to {CANARY_SERVICE} in the run (of {total} routed: "
        f"{total_canary / total if total else 0.0:.2%}) = {by_route:.1f}; measured {measured} (HTTP 500)",
        f"{name} expected failures had the replica share split the load (round-robin over the pods, as "
        f"ours): replica share {replicas:.0f} % x error share {settings.error_share:g} x {requests} requests "
        f"sent while it served ({ready_at:.0f}-{end:.0f} s) = {by_replicas:.1f}",
    ]


def report_lines(result: TrialResult, rule: AlertRule) -> list[str]:
    name = display(result.trial)
    settings, report, samples = result.settings, result.report, result.samples
    errors = ", ".join(f"{kind}: {n}" for kind, n in sorted(report.errors.items())) or "none"
    share = result.failed / report.sent if report.sent else 0.0
    expected = expected_failures(samples, result.sent_at, settings.error_share)
    gpu_seconds = integrate_gpu_seconds(samples, result.window_s)
    mean = gpu_seconds / GPUS_PER_REPLICA / result.window_s if result.window_s else 0.0
    bad = bad_serving(samples)
    peak = f", at most {bad.peak} of {bad.peak_of} ready replicas" if bad.peak else ""
    fired = alert_fires_at(samples, rule)
    alert = "never fires" if fired is None else f"fires at {_at(fired)}"
    how = (
        "round-robin over the pods, NOT how this trial's gateway routed: see the route's figure below"
        if result.policy in ROUTED_POLICIES
        else "round-robin"
    )
    lines = [
        f"{name} requests: {report.sent} sent, {report.ok} answered; failed {result.failed} ({share:.2%}; "
        f"{errors})",
        f"{name} bad-build failures: {report.errors.get('500', 0)} answered HTTP 500; expected "
        f"{expected:.1f} (error share {settings.error_share:g} x each request's share of ready bad "
        f"replicas when it was sent, {how}, from {OBSERVE_S:g} s samples)",
        f"{name} GPU-hours: {result.gpu_hours:.3f} (ready+starting replicas x {GPUS_PER_REPLICA} GPU over "
        f"{result.window_s:.0f} s simulated; mean {mean:.2f} replicas, peak "
        f"{max((s.placed for s in samples), default=0)})",
        f"{name} bad build: spec patched at {_at(result.story.patched_at)}; first replica ready at "
        f"{_at(bad.first)}{peak}; last seen serving at {_at(bad.last)}",
        f"{name} {ALERT} (modelled on the load's counts, as the modelled human sees it): {alert}",
        f"{name} replicas over time (t:ready bad/ready/placed[rollout phase]): {timeline(samples)}",
    ]
    if result.policy in CANARY_POLICIES:
        lines += ours_lines(result, name)
    if result.policy == "all-at-once+human":
        story = result.story
        lines.append(
            f"{name} modelled human: alert seen firing at {_at(story.alert_fired_at)}, spec patched back to "
            f"{GOOD_IMAGE} at {_at(story.reverted_at)} ({REACTION_S:g} s reaction, an assumption)"
        )
    if len(result.sent_at) != report.sent:
        lines.append(
            f"{name} warning: the load sent {report.sent} requests, the regenerated arrivals are "
            f"{len(result.sent_at)}: the expected-failure figures are off"
        )
    lines += operator_lines(name, result.reasons, result.operator_errors, result.operator_log, result.errors)
    return lines


def assumption_lines(settings: Settings, rule: AlertRule) -> list[str]:
    """The time scale, what is not scaled, and which figures rest on which assumption."""
    scale = settings.scale
    capacity = capacity_per_replica(engine_profile())
    return [
        *timer_lines(scale),
        f"caveat: not scaled: Prometheus's 1 s scrape (= {scale:g} s simulated) and target discovery "
        f"(file_sd, at most 5 s real), the simulated kubelet's 0.5 s pod poll (= {0.5 * scale:g} s), the "
        "operator's, the Deployment controller's and the API server's own latency: they delay the canary's "
        "judgement and every replica's start in every trial",
        f"caveat: load: Poisson arrivals at {settings.rate:.3f} requests/s simulated ({settings.load:g} of "
        f"{settings.replicas} replicas x {capacity:.3f} requests/s at a full batch on fleetsim's engine; "
        f"{settings.rate * scale:.0f} real requests/s), {PROMPT_TOKENS} + {MAX_TOKENS} tokens, seed "
        f"{settings.seed}: the same requests in every trial",
        "assumption (simulator): error model: the bad build answers a uniform random "
        f"{settings.error_share:g} of its completion requests HTTP 500 at once, one draw per request from "
        "a generator seeded per pod, before the engine sees them (fleetsim.builds). Every failed-request "
        "figure rests on it; a real bad build may fail by prompt, in bursts, or mid-stream (which vLLM "
        "counts as 2xx and the analysis cannot see)",
        f"assumption (simulator): traffic split: the load generator sends ROUND-ROBIN (not random) over the "
        f"ready, non-terminating pods, listed every {ENDPOINT_REFRESH_S:g} s simulated, so a replica's share "
        "is exactly 1 / ready replicas and the canary's share is its replica ratio. On a cluster kube-proxy "
        "picks an endpoint at random per connection and keep-alive clients pin theirs. ours' failures, its "
        f"time to {MIN_REQUESTS} canary requests (so to the rollback) and every expected-failure figure "
        "but ours+route's rest on it",
        "assumption (simulator): ours+route's gateway is fleetsim's (fleetsim.gateway), not Envoy or any "
        "real gateway: it re-reads the HTTPRoute and its backend Services' ready endpoints every "
        f"{ENDPOINT_REFRESH_S:g} s simulated and picks a backend by SMOOTH WEIGHTED ROUND-ROBIN (a weight of "
        "10 in 100 gets exactly one request in any ten), then round-robin over that Service's ready pods. A "
        "real gateway picks by weight at random per request (or per connection) and applies a route edit "
        "after its own propagation delay. ours+route's failures, its time to "
        f"{MIN_REQUESTS} canary requests (so to the rollback) and its route figure rest on it; the route "
        "weights themselves are the real operator's, written into the real HTTPRoute CRD",
        f"assumption (simulator): cold start: every new pod serves {cold_start_s():g} s simulated after it "
        "is bound (weights from the Hub at 0.5 GiB/s + 20 s warm-up; no image pull: fleetsim pulls once per "
        "node whatever the tag, where a new tag would add ~40 s per node). The length of the all-at-once "
        "rollout and of the human's roll-back, the canary's time to its weight and the surge GPU-hours rest "
        "on it",
        f"assumption (modelled, {label('all-at-once+human')}): {ALERT} as the chart ships it (5xx share of "
        f"completions over {rule.window_s:g} s > {rule.threshold:g}, for {rule.for_s:g} s) evaluated every "
        f"{OBSERVE_S:g} s simulated on the load generator's own counts, with no rule-evaluation interval and "
        f"no Alertmanager delay, then {REACTION_S:g} s until the spec is patched back: that trial's failures "
        "and GPU-hours rest on these numbers, not on a measurement",
        "not an assumption: ours' and ours+route's rollbacks are the real operator judging the simulated "
        "vLLM's http_requests_total in a real Prometheus (and, ours+route, writing the real HTTPRoute's "
        "weights); the all-at-once rollouts are the real Deployment controller's (maxSurge 1, "
        "maxUnavailable 0 per group), not re-implementations",
    ]


# --- the summary (pure) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """What the comparison takes of one trial."""

    sent: int
    failed: int
    gpu_hours: float
    rollback_s: float | None = None  # ours, ours+route: from the patch to the rollback

    @property
    def failed_share(self) -> float:
        return self.failed / self.sent if self.sent else 0.0


def figures_of(result: TrialResult) -> Figures:
    return Figures(result.report.sent, result.failed, result.gpu_hours, result.rollback_s)


# The figures compared: (name, value of a trial, digits of the value, digits of a ratio).
MEASURES: tuple[tuple[str, Callable[[Figures], float], int, int], ...] = (
    ("failed requests", lambda f: float(f.failed), 1, 3),
    ("failed share", lambda f: f.failed_share, 4, 3),
    ("GPU-hours", lambda f: f.gpu_hours, 3, 3),
)


def summary_lines(figures: Mapping[str, Figures]) -> list[str]:
    """Per policy the means over rounds (with their min-max); each canary policy's ratio to each policy run
    after it in POLICIES (ours to ours+route and the baselines, ours+route to the baselines: the ratio of
    the means, with the min-max of the per-round ratios); the last, parseable line."""
    by_policy: dict[str, dict[int, Figures]] = {}
    for trial, trial_figures in figures.items():
        by_policy.setdefault(policy_of(trial), {})[round_of(trial)] = trial_figures
    run = [p for p in POLICIES if p in by_policy] + sorted(set(by_policy) - set(POLICIES))

    def mean(policy: str, value: Callable[[Figures], float]) -> float:
        values = [value(f) for f in by_policy[policy].values()]
        return sum(values) / len(values)

    lines = []
    for policy in run:
        runs = list(by_policy[policy].values())
        parts = [
            f"{name} {_number(mean(policy, value), digits)}{_spread([value(f) for f in runs], digits)}"
            for name, value, digits, _ in MEASURES
        ]
        if policy in CANARY_POLICIES:
            times = [f.rollback_s for f in runs]
            known = [t for t in times if t is not None]
            average = sum(known) / len(known) if known else None
            missing = (
                f", not rolled back in {len(times) - len(known)} of {len(times)}"
                if len(known) < len(times)
                else ""
            )
            parts.append(f"patch to rollback {_number(average, 0)} s{_spread(times, 0)}{missing}")
        lines.append(f"{label(policy)}: " + ", ".join(parts))
    for canary in (p for p in CANARY_POLICIES if p in by_policy):
        ours = by_policy[canary]
        for other in run[run.index(canary) + 1 :]:
            both = sorted(n for n in ours if n in by_policy[other])
            parts = []
            for name, value, _, digits in MEASURES:
                per_round = [ratio(value(ours[n]), value(by_policy[other][n])) for n in both]
                parts.append(
                    f"{name} {_number(ratio(mean(canary, value), mean(other, value)), digits)}"
                    f"{_spread(per_round, digits)}"
                )
            lines.append(f"{label(canary)} / {label(other)}: " + ", ".join(parts))

    def figure(policy: str, value: Callable[[Figures], float], digits: int) -> str:
        return _number(mean(policy, value), digits) if policy in by_policy else "n/a"

    failed = " ".join(f"{p}={figure(p, lambda f: float(f.failed), 1)}" for p in POLICIES)
    hours = " ".join(f"{p}={figure(p, lambda f: f.gpu_hours, 3)}" for p in POLICIES)
    lines.append(f"canary: failed {failed} gpu_hours {hours}")
    return lines


# --- the run ----------------------------------------------------------------------------------------


def run(
    policies: Sequence[str], settings: Settings, kubeconfig: Path | None, rounds: int, rule: AlertRule
) -> dict[str, TrialResult]:
    return run_trials(
        "canary",
        trial_names(policies, rounds),
        kubeconfig,
        lambda cp, core, trial, workdir: Trial(cp, trial, settings, workdir, rule).run(core),
        lambda result: report_lines(result, rule),
        display=display,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=DEFAULT_TIME_SCALE,
        help=f"simulated seconds per real second (default {DEFAULT_TIME_SCALE:g}). The operator's timers are "
        "real seconds, so they are divided by it: at 10 the analysis' 60 s interval is 6 s real (the API's "
        "minimum is 5 s: above scale 12 it is clamped, and the run says so), the pauses 600 and 1800 s are "
        "60 and 180 s real. 3600 simulated s of load are 360 s real a trial, plus ~1-1.5 min of fleet start "
        "and teardown: ~7-8 min a trial, ~30 min for the four. Smoke run, ~5 min: --time-scale 12 "
        "--duration 900 --patch-at 120 --policies ours all-at-once",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION_S,
        help=f"simulated seconds of load (default {DEFAULT_DURATION_S:g}: 1 h)",
    )
    parser.add_argument(
        "--patch-at",
        type=float,
        default=DEFAULT_PATCH_AT_S,
        help="simulated second of the load at which the bad build is patched in "
        f"(default {DEFAULT_PATCH_AT_S:g})",
    )
    parser.add_argument(
        "--error-share",
        type=float,
        default=DEFAULT_ERROR_SHARE,
        help=f"share of the bad build's completions answered HTTP 500 (default {DEFAULT_ERROR_SHARE:g})",
    )
    parser.add_argument(
        "--replicas", type=int, default=DEFAULT_REPLICAS, help=f"fixed replicas (default {DEFAULT_REPLICAS})"
    )
    parser.add_argument(
        "--load",
        type=float,
        default=DEFAULT_LOAD,
        help=f"request rate as a share of the replicas' full-batch capacity (default {DEFAULT_LOAD:g})",
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
    if args.time_scale <= 0 or args.duration <= 0 or args.load <= 0 or args.rounds < 1 or args.replicas < 1:
        parser.error("--time-scale, --duration and --load must be > 0, --rounds and --replicas at least 1")
    if not 0 <= args.patch_at < args.duration:
        parser.error("--patch-at must be within the load: 0 <= patch-at < duration")
    if not 0 < args.error_share <= 1:
        parser.error("--error-share must be in (0, 1]")
    settings = Settings(
        args.time_scale, args.duration, args.patch_at, args.error_share, args.replicas, args.load, args.seed
    )
    try:
        rule = chart_alert_rule()
    except (OSError, ValueError, BenchError) as error:
        print(f"benchmark failed: reading {ALERT} from {ALERTS_FILE}: {error}", file=sys.stderr)
        return 1
    for line in timer_lines(settings.scale):
        log(line.removeprefix("caveat: "))
    results = or_failure(lambda: run(args.policies, settings, args.kubeconfig, args.rounds, rule))
    if results is None:
        return 1
    print("\n".join(assumption_lines(settings, rule)))
    print("\n".join(summary_lines({trial: figures_of(result) for trial, result in results.items()})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
