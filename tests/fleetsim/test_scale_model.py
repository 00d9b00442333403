"""Scale mode's fluid replica against the full simulated engine, at small N.

The same offered load (Poisson arrivals, 512-token prompts, 128 tokens out) goes
through vllm_model.Engine, split round-robin over 1-3 replicas as a load balancer
would, and through scale_model.FluidReplica with the same EngineProfile; the
time-averaged per-model gauges must agree within the tolerances below. Pure:
simulated time, no sleeping, a few seconds in all.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import pytest

from fleetsim.scale_model import FluidReplica, Workload
from fleetsim.vllm_model import Engine, EngineProfile, profile_for

WORKLOAD = Workload(prompt=512, output=128)
WARMUP_S = 60.0
MEASURE_S = 240.0
# Relative tolerance on running and KV usage, plus an absolute floor for small values (a batch of
# 2 ± 0.5 is as good as it gets with Poisson noise); busy fraction is compared absolutely.
REL, RUNNING_ABS, KV_ABS, BUSY_ABS = 0.12, 0.6, 0.01, 0.08

PROFILES = {
    "8b-tp1": profile_for("Meta-Llama-3-8B-Instruct", 1, "NVIDIA-A100-SXM4-80GB"),
    "70b-tp4": profile_for("Meta-Llama-3-70B-Instruct", 4, "NVIDIA-A100-SXM4-80GB"),
    "8b-mig-3g": profile_for("Meta-Llama-3-8B-Instruct", 1, "NVIDIA-A100-SXM4-80GB", mig_profile="3g.40gb"),
}


@dataclass
class Averages:
    running: float
    waiting_start: float
    waiting_end: float
    kv: float
    busy: float
    served: float  # requests/s finished in the measured window


def run_engines(profile: EngineProfile, replicas: int, rate: float, seed: int = 1) -> Averages:
    """Poisson arrivals at `rate` for the model, dealt round-robin to `replicas` engines; every engine
    stepped on its own timeline. Per-model sums of the gauges, averaged over the measured window."""
    rng = random.Random(seed)
    end = WARMUP_S + MEASURE_S
    arrivals: list[list[float]] = [[] for _ in range(replicas)]
    t, turn = 0.0, itertools.cycle(range(replicas))
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            break
        arrivals[next(turn)].append(t)
    totals = Averages(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    for queue in arrivals:
        one = _run_one(profile, queue, end)
        for name in ("running", "waiting_start", "waiting_end", "kv", "busy", "served"):
            setattr(totals, name, getattr(totals, name) + getattr(one, name))
    totals.busy /= replicas
    totals.kv /= replicas
    return totals


def _run_one(profile: EngineProfile, arrivals: list[float], end: float) -> Averages:
    engine = Engine(profile)
    now, i, ids = 0.0, 0, itertools.count()
    area = {"running": 0.0, "kv": 0.0, "busy": 0.0}
    waiting_start = 0.0
    served = 0

    def account(start: float, stop: float, running: float, kv: float, busy: float) -> None:
        lo, hi = max(start, WARMUP_S), min(stop, end)
        if hi > lo:
            area["running"] += running * (hi - lo)
            area["kv"] += kv * (hi - lo)
            area["busy"] += busy * (hi - lo)

    while now < end:
        while i < len(arrivals) and arrivals[i] <= now:
            engine.submit(str(next(ids)), WORKLOAD.prompt, WORKLOAD.output, arrivals[i])
            i += 1
        if now <= WARMUP_S:
            waiting_start = engine.num_waiting
        if not engine.has_work:
            idle_until = arrivals[i] if i < len(arrivals) else end
            account(now, idle_until, 0.0, 0.0, 0.0)
            now = idle_until
            continue
        running, kv = engine.num_running, engine.kv_cache_usage
        step = engine.step(now)
        # The gauges as a scrape during the step would read them (after admission).
        account(now, step.end, engine.num_running, engine.kv_cache_usage, 1.0)
        del running, kv
        if step.start >= WARMUP_S:
            served += len(step.finished)
        now = step.end
    return Averages(
        running=area["running"] / MEASURE_S,
        waiting_start=waiting_start,
        waiting_end=engine.num_waiting,
        kv=area["kv"] / MEASURE_S,
        busy=area["busy"] / MEASURE_S,
        served=served / MEASURE_S,
    )


def run_fluid(profile: EngineProfile, replicas: int, rate: float, dt: float = 0.5) -> Averages:
    fluid = [FluidReplica(profile, WORKLOAD) for _ in range(replicas)]
    end = WARMUP_S + MEASURE_S
    steps = int(end / dt)
    area = {"running": 0.0, "kv": 0.0, "busy": 0.0}
    waiting_start = 0.0
    served_before = 0.0
    for k in range(steps):
        t = k * dt
        for replica in fluid:
            replica.advance(rate / replicas, dt)
        if t < WARMUP_S:
            waiting_start = sum(r.waiting for r in fluid)
            served_before = sum(r.served_total for r in fluid)
            continue
        area["running"] += sum(r.running for r in fluid) * dt
        area["kv"] += sum(r.kv_cache_usage for r in fluid) / replicas * dt
        area["busy"] += sum(r.busy for r in fluid) / replicas * dt
    return Averages(
        running=area["running"] / MEASURE_S,
        waiting_start=waiting_start,
        waiting_end=sum(r.waiting for r in fluid),
        kv=area["kv"] / MEASURE_S,
        busy=area["busy"] / MEASURE_S,
        served=(sum(r.served_total for r in fluid) - served_before) / MEASURE_S,
    )


def close(got: float, want: float, rel: float, floor: float) -> bool:
    return abs(got - want) <= max(rel * abs(want), floor)


@pytest.mark.parametrize("name", sorted(PROFILES))
@pytest.mark.parametrize("replicas", [1, 2, 3])
@pytest.mark.parametrize("load", [0.2, 0.6])
def test_below_capacity_the_gauges_match_the_engine(name: str, replicas: int, load: float) -> None:
    profile = PROFILES[name]
    capacity = FluidReplica(profile, WORKLOAD).capacity
    rate = load * capacity * replicas
    engine, fluid = run_engines(profile, replicas, rate), run_fluid(profile, replicas, rate)
    detail = (
        f"{name} ×{replicas} at {load:.0%} of capacity ({rate:.2f} req/s): engine {engine}, fluid {fluid}"
    )
    assert close(fluid.running, engine.running, REL, RUNNING_ABS), detail
    assert close(fluid.kv, engine.kv, REL, KV_ABS), detail
    assert abs(fluid.busy - engine.busy) <= BUSY_ABS, detail
    # Below capacity neither queues for long: what waits at a scrape is a request between two steps.
    assert fluid.waiting_end == 0
    assert engine.waiting_end <= replicas * 2, detail


@pytest.mark.parametrize("name", sorted(PROFILES))
@pytest.mark.parametrize("replicas", [1, 3])
def test_past_capacity_both_serve_full_batches_and_the_queue_grows_alike(name: str, replicas: int) -> None:
    profile = PROFILES[name]
    capacity = FluidReplica(profile, WORKLOAD).capacity
    rate = 1.3 * capacity * replicas
    engine, fluid = run_engines(profile, replicas, rate), run_fluid(profile, replicas, rate)
    detail = f"{name} ×{replicas} at 130% of capacity: engine {engine}, fluid {fluid}"
    assert close(fluid.served, engine.served, REL, 0.0), detail
    assert close(fluid.running, engine.running, REL, RUNNING_ABS), detail
    growth_engine = (engine.waiting_end - engine.waiting_start) / MEASURE_S
    growth_fluid = (fluid.waiting_end - fluid.waiting_start) / MEASURE_S
    assert close(growth_fluid, growth_engine, 0.25, 0.05 * rate), detail
