"""The autoscaling decision: table-driven, time passed in, plus a toy-fleet simulation."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest

from gpufleet.planning.scaling import (
    MAX_RECOMMENDATIONS,
    Decision,
    Observation,
    ScalingPolicy,
    ScalingState,
    Schedule,
    decide,
    schedule_floor,
)
from tests.unit.helpers import Readings, scaling_timings

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday
MONDAY, TUESDAY, FRIDAY, SATURDAY, SUNDAY = 0, 1, 4, 5, 6


def policy(**fields: Any) -> ScalingPolicy:
    values: dict[str, Any] = {
        "min_replicas": 1,
        "max_replicas": 10,
        "target_queue_depth": 8,
        "target_kv_cache_usage": 0.8,
        "target_gpu_utilization": 0.9,
        "scale_down_delay_seconds": 300,
        "scale_to_zero_after_seconds": None,
        "timings": scaling_timings(),
    }
    values.update(fields)
    return ScalingPolicy(**values)


def signals(
    waiting: float | None = 0,
    running: float | None = 10,
    kv: float | None = 0.5,
    gpu: float | None = None,
    ready: int = 2,
    starting: int = 0,
    at: datetime = NOW,
    **extra: Any,
) -> Observation:
    return Observation(Readings(at, waiting, running, kv, gpu, **extra), ready, starting)


def changed(observed: Observation, **readings: Any) -> Observation:
    """The same observation with other readings."""
    return replace(observed, readings=replace(observed.readings, **readings))


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


@dataclass
class Step:
    seconds: float
    replicas: int
    reason: str


def run(
    pol: ScalingPolicy,
    replicas: int,
    view: Callable[[float, int], Observation],
    times: Iterable[float],
    state: ScalingState | None = None,
    restart: bool = False,
    start: datetime = NOW,
) -> tuple[list[Step], ScalingState]:
    """Evaluate at each time, applying every decision; `view(t, replicas)` is what the metrics show.

    With restart=True the state goes through JSON between evaluations, as it does
    through the object's status when the operator restarts.
    """
    state = state or ScalingState()
    steps = []
    for seconds in times:
        decision = decide(pol, replicas, view(seconds, replicas), state, start + timedelta(seconds=seconds))
        replicas, state = decision.replicas, decision.state
        if restart:
            state = ScalingState.from_json(json.loads(json.dumps(state.to_json())))
        steps.append(Step(seconds, replicas, decision.reason))
    return steps, state


def changes(steps: list[Step]) -> list[tuple[float, int]]:
    out, last = [], None
    for step in steps:
        if last is not None and step.replicas != last:
            out.append((step.seconds, step.replicas))
        last = step.replicas
    return out


def steady_kv(total: float) -> Callable[[float, int], Observation]:
    """A fleet carrying `total` replica-loads of KV cache, spread evenly over whatever is ready."""
    return lambda t, replicas: signals(kv=total / replicas, ready=replicas, at=at(t))


# --- scale up ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "observed", "pol", "replicas", "reason"),
    [
        # kv 1.0 on 2 ready, target 0.8: L = 2.5 → 3
        (2, signals(kv=1.0), policy(), 3, "KVCachePressure"),
        # 40 waiting, target 8: L = 5 on capacity 4 (ratio 1.25) → 5; below the panic threshold (8)
        (4, signals(waiting=40, kv=0.5, ready=4), policy(), 5, "QueueDepth"),
        # within the band: kv 0.85 on 2 ready is L = 2.125, ratio 1.06
        (2, signals(kv=0.85), policy(), 2, "WithinTolerance"),
        # the edge of the band (ratio 1.1) is inside it, floating point notwithstanding
        (2, signals(kv=0.88), policy(), 2, "WithinTolerance"),
        # 1 → 10 asked, at most +4 per decision outside panic
        (1, signals(kv=1.0, ready=1), policy(target_kv_cache_usage=0.1), 5, "KVCachePressure"),
        # 8 → 20 asked, at most ×2 per decision (more than +4)
        (
            8,
            signals(kv=1.0, ready=8),
            policy(max_replicas=30, target_kv_cache_usage=0.4),
            16,
            "KVCachePressure",
        ),
    ],
)
def test_step_up(current: int, observed: Observation, pol: ScalingPolicy, replicas: int, reason: str) -> None:
    decision = decide(pol, current, observed, ScalingState(), NOW)
    assert (decision.replicas, decision.reason) == (replicas, reason)
    assert decision.active
    assert not decision.limited
    if replicas != current:
        assert decision.state.last_scale_time == NOW


def test_scale_up_message_names_the_numbers() -> None:
    decision = decide(policy(target_kv_cache_usage=0.1), 1, signals(kv=1.0, ready=1), ScalingState(), NOW)
    assert "kv-cache 1.00 on 1 ready (target 0.1)" in decision.message
    assert "1 → 5 of 10" in decision.message
    assert decision.per_signal == {"queue": 0, "kvCache": 10}


# --- panic ---------------------------------------------------------------------------------------


def test_burst_panics_to_the_need_at_once_and_holds_through_the_window() -> None:
    pol = policy()
    # 136 waiting behind 2 full batches of 16: 2 + (136 − 2 × 8) / (16 + 8) = 7 ≥ 2 × capacity 2.
    # Outside panic the limit would be 6.
    burst = decide(pol, 2, signals(waiting=136, running=32, kv=1.0), ScalingState(), NOW)
    assert (burst.replicas, burst.reason) == (7, "Panic")
    assert burst.state.panic_until == at(60)

    # The burst is gone 30 s later; no scale-down while in panic, even with a long low history.
    calm = signals(waiting=0, kv=0.05, ready=8, at=at(30))
    low_history = replace(burst.state, recommendations=((at(-1000), 1),))
    during = decide(pol, 8, calm, low_history, at(30))
    assert (during.replicas, during.reason) == (8, "Panic")

    after = decide(pol, 8, changed(calm, sampled_at=at(61)), during.state, at(61))
    assert after.state.panic_until is None
    assert after.reason != "Panic"


def test_panic_is_still_bounded_by_max_replicas() -> None:
    decision = decide(policy(), 2, signals(waiting=800), ScalingState(), NOW)
    assert (decision.replicas, decision.reason, decision.limited) == (10, "MaxReplicas", True)
    assert decision.state.panic_until == at(60)


# --- scale down ----------------------------------------------------------------------------------


@pytest.mark.parametrize("restart", [False, True])
def test_sustained_drop_scales_down_after_the_delay_one_step_at_a_time(restart: bool) -> None:
    # Load worth 1.2 replicas at kv 0.8: L = 1.5 → 2 replicas, from 6.
    steps, _ = run(policy(), 6, steady_kv(1.2), range(0, 601, 10), restart=restart)
    assert all(s.replicas == 6 and s.reason == "ScaleDownDelay" for s in steps if s.seconds < 300)
    # first step when the whole 300 s window asked for less; then one replica per 30 s
    assert changes(steps) == [(300, 5), (330, 4), (360, 3), (390, 2)]
    assert steps[-1].replicas == 2


def test_one_high_sample_restarts_the_scale_down_delay() -> None:
    def view(t: float, replicas: int) -> Observation:
        return signals(kv=(4.8 if t == 200 else 1.2) / replicas, ready=replicas, at=at(t))

    steps, _ = run(policy(), 6, view, range(0, 601, 10))
    # the ask at 200 s (6) was in force until 210 s: the window must start after that
    assert changes(steps)[0] == (510, 5)


def test_a_fresh_history_never_scales_down_at_once() -> None:
    decision = decide(policy(), 6, signals(kv=0.05, ready=6), ScalingState(), NOW)
    assert (decision.replicas, decision.reason) == (6, "ScaleDownDelay")
    assert decision.state.recommendations == ((NOW, 1),)


def test_zero_delay_scales_down_immediately_but_still_one_step() -> None:
    decision = decide(policy(scale_down_delay_seconds=0), 6, signals(kv=0.05, ready=6), ScalingState(), NOW)
    assert (decision.replicas, decision.reason) == (5, "ScaledDown")


def test_no_scale_down_without_a_load_signal() -> None:
    # kv missing: an empty queue cannot tell whether 6 replicas are busy
    state = ScalingState(recommendations=((at(-1000), 1),))
    decision = decide(policy(), 6, signals(kv=None, ready=6), state, NOW)
    assert (decision.replicas, decision.reason, decision.active) == (6, "NoLoadSignal", True)
    # ... and it records "no lower than now", so the delay starts over once kv is back
    assert decision.state.recommendations[-1] == (NOW, 6)
    # same while nothing is ready yet (a cold start)
    cold = decide(policy(), 3, signals(running=0, kv=0.0, ready=0, starting=3), ScalingState(), NOW)
    assert (cold.replicas, cold.reason) == (3, "NoLoadSignal")


def test_noisy_signal_around_the_target_does_not_flap() -> None:
    rng = random.Random(5)

    def view(t: float, replicas: int) -> Observation:
        # mostly within ±9 % of the target, one sample in five dips by a third
        noise = 1 - 0.33 if rng.random() < 0.2 else 1 + rng.uniform(-0.09, 0.09)
        return signals(kv=0.8 * noise * 4 / replicas, ready=replicas, at=at(t))

    steps, state = run(policy(), 4, view, range(0, 1801, 10))
    assert changes(steps) == []
    assert {s.reason for s in steps} <= {"WithinTolerance", "ScaleDownDelay"}
    assert len(state.recommendations) <= MAX_RECOMMENDATIONS


# --- bounds --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pol", "current", "observed", "replicas", "reason", "limited"),
    [
        # kv asks 14 (8 × 1.0 / 0.6), max 10
        (policy(target_kv_cache_usage=0.6), 8, signals(kv=1.0, ready=8), 10, "MaxReplicas", True),
        # asks 1, min 3: the floor, not the delay, holds 3
        (policy(min_replicas=3), 3, signals(kv=0.05, ready=3), 3, "MinReplicas", True),
        # min raised above the current count: up at once
        (policy(min_replicas=3), 1, signals(kv=0.5, ready=1), 3, "MinReplicas", True),
        # max lowered below the current count: down at once (the user's order, not the delay)
        (policy(max_replicas=4), 6, signals(kv=0.5, ready=6), 4, "MaxReplicas", True),
        # nothing clamps
        (policy(), 2, signals(kv=0.8), 2, "WithinTolerance", False),
    ],
)
def test_bounds(
    pol: ScalingPolicy, current: int, observed: Observation, replicas: int, reason: str, limited: bool
) -> None:
    decision = decide(pol, current, observed, ScalingState(), NOW)
    assert (decision.replicas, decision.reason, decision.limited) == (replicas, reason, limited)


# --- cold start ----------------------------------------------------------------------------------


def test_starting_replicas_count_as_capacity_coming() -> None:
    pol = policy()
    # 2 full batches of 16 and 3 replicas loading weights. The queue grows from 40 to 60: that is
    # 2 + (60 − 16) / 24 = 3.8 replicas of load, which the 5 coming carry, so nothing more is
    # ordered (HPA's ceil(waiting / 8) would have asked 5, 6, 7, 8).
    state = ScalingState()
    for t, waiting in ((0, 40), (10, 42), (20, 50), (30, 60)):
        observed = signals(waiting=waiting, running=32, kv=1.0, ready=2, starting=3, at=at(t))
        decision = decide(pol, 5, observed, state, at(t))
        assert decision.replicas == 5, decision.message
        assert decision.per_signal["queue"] <= 4
        state = decision.state
    # kv 1.0 on the 2 ready ones is the load of 2.5 replicas: it asks 3, not 5 × 1.25
    assert decision.per_signal["kvCache"] == 3
    assert "batch 16/replica" in decision.message


def test_pods_beyond_the_spec_are_not_capacity() -> None:
    # Spec 4; a spot notice made the reconciler start a replacement while the doomed replica still
    # serves: 4 ready + 1 starting. The KV cache says 4 × 1.0 / 0.8 = 5 replicas of load, which the
    # spec's 4 will not carry once the doomed one is gone. Counting the replacement as capacity
    # (5) would put 5 within tolerance and hold 4.
    surged = signals(waiting=0, running=40, kv=1.0, ready=4, starting=1)
    decision = decide(policy(), 4, surged, ScalingState(), NOW)
    assert (decision.replicas, decision.per_signal["kvCache"]) == (5, 5), decision.message
    # With the spec at 5 the same pods are its capacity, and the load is on target.
    decision = decide(policy(), 5, surged, ScalingState(), NOW)
    assert decision.replicas == 5
    assert "within tolerance" in decision.message


def test_a_new_replica_takes_a_batch_and_its_share_of_the_queue() -> None:
    # 112 waiting behind 2 full batches of 16: 2 + 96 / 24 = 6, where the queue alone
    # (112 / 8) would ask 14
    grown = signals(waiting=112, running=32, kv=1.0, ready=2, starting=3)
    decision = decide(policy(), 5, grown, ScalingState(), NOW)
    assert (decision.replicas, decision.reason, decision.per_signal["queue"]) == (6, "QueueDepth", 6)
    # 300 waiting: 2 + 284 / 24 = 13.8 ≥ 2 × capacity 5, panic, up to max at once
    outgrown = changed(grown, waiting=300)
    decision = decide(policy(), 5, outgrown, ScalingState(), NOW)
    assert (decision.replicas, decision.reason) == (10, "MaxReplicas")
    assert decision.state.panic_until is not None


def test_a_long_cold_start_keeps_the_replicas_the_queue_waits_for() -> None:
    # 10 minutes of weights loading (70B without a cache, REFERENCE.md), the queue steady at 88:
    # 2 + 72 / 24 = 5 replicas of load, so the 3 starting ones stay through the scale-down delay
    def view(t: float, replicas: int) -> Observation:
        return signals(waiting=88, running=32, kv=1.0, ready=2, starting=replicas - 2, at=at(t))

    steps, _ = run(policy(), 5, view, range(0, 601, 10))
    assert changes(steps) == []


def test_a_full_batch_is_load_though_nothing_waits() -> None:
    # Once a full batch (16) was seen, 4 replicas running 60 with an empty queue are 3.75 replicas
    # of load: no scale-down, though the queue alone asks 0 and kv is missing.
    seen = decide(policy(), 4, signals(waiting=10, running=64, kv=None, ready=4), ScalingState(), NOW)
    assert seen.state.batch_per_replica == 16
    steps, state = run(
        policy(),
        4,
        lambda t, n: signals(waiting=0, running=60, kv=None, ready=n, at=at(t)),
        range(10, 901, 10),
        state=seen.state,
        restart=True,
    )
    assert changes(steps) == []
    assert state.batch_per_replica == 16
    # With half of it running, the same history scales down one replica at a time.
    steps, _ = run(
        policy(),
        4,
        lambda t, n: signals(waiting=0, running=30, kv=None, ready=n, at=at(t)),
        range(10, 901, 10),
        state=seen.state,
    )
    assert changes(steps) == [(310, 3), (340, 2)]


def test_a_wait_at_one_replica_under_light_load_does_not_shrink_the_batch() -> None:
    # One request waits at a full replica while 5 others are nearly idle: 9 running on 6 ready.
    state = ScalingState(batch_per_replica=4)
    decision = decide(
        policy(target_queue_depth=2), 6, signals(waiting=1, running=9, kv=0.01, ready=6), state, NOW
    )
    assert decision.state.batch_per_replica == 4
    assert decision.per_signal["queue"] == 3  # 9 / 4 = 2.25 replicas of load, not 9 / 1.5 = 6


# --- GPU utilisation guard -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("observed", "replicas", "reason"),
    [
        # hot GPUs and the queue at its target (40 ≥ 4 × 8): the guard adds, L = 4 × 1.0 / 0.7
        (signals(waiting=40, kv=0.6, gpu=1.0, ready=4), 6, "GPUUtilization"),
        # hot GPUs and a few requests waiting between batches: no vote (queue 10 / 2.5 = 4 holds)
        (signals(waiting=4, kv=0.6, gpu=1.0, ready=4), 4, "WithinTolerance"),
        # hot GPUs, nothing waiting: batching pegs utilisation, so no vote
        (signals(waiting=0, kv=0.8, gpu=1.0, ready=4), 4, "WithinTolerance"),
        # cold GPUs never lower (kv holds 4)
        (signals(waiting=0, kv=0.8, gpu=0.05, ready=4), 4, "WithinTolerance"),
    ],
)
def test_gpu_utilisation_is_a_guard(observed: Observation, replicas: int, reason: str) -> None:
    decision = decide(policy(target_gpu_utilization=0.7), 4, observed, ScalingState(), NOW)
    assert (decision.replicas, decision.reason) == (replicas, reason)


def test_low_gpu_utilisation_never_drives_a_scale_down() -> None:
    def view(t: float, replicas: int) -> Observation:
        return signals(kv=0.8 * 4 / replicas, gpu=0.02, ready=replicas, at=at(t))

    steps, _ = run(policy(), 4, view, range(0, 1201, 10))
    assert changes(steps) == []


# --- schedules -----------------------------------------------------------------------------------

WORKDAYS = frozenset(range(5))
BUSINESS = Schedule("business", WORKDAYS, time(8), time(18), 4)
NIGHT = Schedule("night-batch", frozenset({FRIDAY}), time(22), time(6), 3)
BERLIN = Schedule("berlin", WORKDAYS, time(8), time(18), 5, timezone="Europe/Berlin")
ALL_DAY = Schedule("sunday", frozenset({SUNDAY}), time(0), time(0), 2)


def local(day: int, hour: int, minute: int = 0) -> datetime:
    """2026-03-02 is a Monday; `day` counts from it."""
    return datetime(2026, 3, 2 + day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("schedules", "now", "expected"),
    [
        ([BUSINESS], local(MONDAY, 12), (4, "business")),
        ([BUSINESS], local(MONDAY, 18), (0, None)),  # end is exclusive
        ([BUSINESS], local(MONDAY, 7, 59), (0, None)),
        ([BUSINESS], local(SATURDAY, 12), (0, None)),  # not a listed day
        ([NIGHT], local(FRIDAY, 23), (3, "night-batch")),
        ([NIGHT], local(SATURDAY, 5, 59), (3, "night-batch")),  # after midnight, Friday's window
        ([NIGHT], local(SATURDAY, 6), (0, None)),
        ([NIGHT], local(FRIDAY, 3), (0, None)),  # Thursday is not listed
        ([NIGHT], local(SATURDAY, 23), (0, None)),
        # Berlin is UTC+1 in March: 07:30 UTC is 08:30 there, 17:30 UTC is 18:30
        ([BERLIN], local(MONDAY, 7, 30), (5, "berlin")),
        ([BERLIN], local(MONDAY, 17, 30), (0, None)),
        ([BERLIN], local(MONDAY, 6, 30), (0, None)),
        ([ALL_DAY], local(SUNDAY, 0), (2, "sunday")),
        ([ALL_DAY], local(SUNDAY, 23, 59), (2, "sunday")),
        ([ALL_DAY], local(SATURDAY, 23, 59), (0, None)),
        # overlapping windows: the highest floor wins
        ([BUSINESS, BERLIN], local(MONDAY, 12), (5, "berlin")),
        ([], local(MONDAY, 12), (0, None)),
    ],
)
def test_schedule_floor(schedules: list[Schedule], now: datetime, expected: tuple[int, str | None]) -> None:
    assert schedule_floor(schedules, now) == expected


def test_schedule_follows_daylight_saving_time() -> None:
    new_york = Schedule("ny", WORKDAYS, time(9), time(17), 2, timezone="America/New_York")
    # 2026-03-06 (Friday, EST, UTC-5) and 2026-03-09 (Monday, EDT, UTC-4) at 13:30 UTC
    assert schedule_floor([new_york], datetime(2026, 3, 6, 13, 30, tzinfo=UTC)) == (0, None)  # 08:30
    assert schedule_floor([new_york], datetime(2026, 3, 9, 13, 30, tzinfo=UTC)) == (2, "ny")  # 09:30


def test_unknown_time_zone_is_an_error_not_a_dropped_floor() -> None:
    with pytest.raises(ValueError, match="Mars/Olympus"):
        schedule_floor([Schedule("x", WORKDAYS, time(8), time(9), 1, timezone="Mars/Olympus")], NOW)


def test_a_schedule_raises_the_floor_and_says_so() -> None:
    decision = decide(policy(schedules=(BUSINESS,)), 2, signals(kv=0.8), ScalingState(), NOW)
    assert (decision.replicas, decision.reason, decision.limited) == (4, "Schedule", True)
    assert "business" in decision.message
    # after the window the extra replicas leave through the ordinary scale-down delay
    evening = local(MONDAY, 18)
    steps, _ = run(
        policy(schedules=(BUSINESS,)),
        4,
        lambda t, replicas: signals(kv=1.6 / replicas, ready=replicas, at=evening + timedelta(seconds=t)),
        range(0, 301, 10),
        state=ScalingState(recommendations=((local(MONDAY, 17, 59), 4),)),
        start=evening,
    )
    assert steps[0].replicas == 4  # not dropped the second the schedule ends
    assert changes(steps) == [(300, 3)]


# --- scale to zero and back ----------------------------------------------------------------------


def idle(t: float, replicas: int) -> Observation:
    return signals(waiting=0, running=0, kv=0.0, ready=replicas, at=at(t))


def test_scales_to_zero_after_idle_and_back_on_activation() -> None:
    pol = policy(min_replicas=0, scale_to_zero_after_seconds=600)
    steps, state = run(pol, 1, idle, range(0, 601, 10))
    assert changes(steps) == [(600, 0)]
    assert steps[-1].reason == "ScaleToZero"
    assert state.recommendations == ()

    no_pods = signals(waiting=None, running=None, kv=None, ready=0, at=at(610))
    quiet = decide(pol, 0, no_pods, state, at(610))
    assert (quiet.replicas, quiet.reason, quiet.active) == (0, "Idle", True)

    woken = decide(pol, 0, changed(no_pods, activation=3), quiet.state, at(620))
    assert (woken.replicas, woken.reason) == (1, "Activation")
    assert woken.state.last_active_time == at(620)


def test_a_request_restarts_the_idle_clock() -> None:
    pol = policy(min_replicas=0, scale_to_zero_after_seconds=600)

    def view(t: float, replicas: int) -> Observation:
        return signals(running=1 if t == 300 else 0, waiting=0, kv=0.0, ready=replicas, at=at(t))

    steps, _ = run(pol, 1, view, range(0, 901, 10))
    assert changes(steps) == [(900, 0)]


@pytest.mark.parametrize(
    "pol",
    [
        policy(min_replicas=0, scale_to_zero_after_seconds=None),  # not asked for
        policy(min_replicas=1, scale_to_zero_after_seconds=60),  # the minimum is 1
        # a schedule floor is active (NOW is Monday noon)
        policy(
            min_replicas=0, scale_to_zero_after_seconds=60, schedules=(replace(BUSINESS, min_replicas=1),)
        ),
    ],
)
def test_never_to_zero_unless_allowed(pol: ScalingPolicy) -> None:
    steps, _ = run(pol, 1, idle, range(0, 1201, 10))
    assert min(s.replicas for s in steps) == 1


def test_without_an_activation_signal_zero_stays_zero() -> None:
    decision = decide(policy(min_replicas=0), 0, signals(None, None, None, ready=0), ScalingState(), NOW)
    assert (decision.replicas, decision.reason) == (0, "Idle")


# --- missing data --------------------------------------------------------------------------------

READY_TO_DROP = ScalingState(
    recommendations=((at(-1000), 1),), last_active_time=at(-5000), last_scale_time=at(-5000)
)


@pytest.mark.parametrize(
    ("observed", "in_message"),
    [
        (signals(kv=0.0, running=0, ready=6, at=at(-91)), "91s old"),
        (signals(waiting=None, kv=0.0, ready=6), "vllm:num_requests_waiting"),
        (signals(running=None, kv=0.0, ready=6), "vllm:num_requests_running"),
        (signals(kv=0.0, running=0, ready=6, error="connection refused"), "connection refused"),
    ],
)
def test_missing_or_stale_metrics_hold_and_keep_the_state(observed: Observation, in_message: str) -> None:
    # With data, this history and policy would scale down (and to zero).
    pol = policy(min_replicas=0, scale_to_zero_after_seconds=60)
    decision = decide(pol, 6, observed, READY_TO_DROP, NOW)
    assert (decision.replicas, decision.reason, decision.active) == (6, "MetricsMissing", False)
    assert in_message in decision.message
    assert decision.state is READY_TO_DROP
    assert decision.per_signal == {}


def test_partial_metrics_never_scale_down_but_may_scale_up() -> None:
    # A history that would remove a replica, with only 4 of the 6 ready replicas reporting.
    quiet = signals(kv=0.05, ready=6, reporting_replicas=4)
    decision = decide(policy(), 6, quiet, READY_TO_DROP, NOW)
    assert (decision.replicas, decision.reason, decision.active) == (6, "PartialMetrics", True)
    assert "only 4 of 6 ready replicas report" in decision.message
    assert decision.state.recommendations[-1][1] == 6  # "no lower than now" is what is remembered
    # All reporting: the same readings do scale down.
    assert (
        decide(policy(), 6, signals(kv=0.05, ready=6, reporting_replicas=6), READY_TO_DROP, NOW).replicas == 5
    )
    # What the reporting replicas carry already asks for more: scale-up is not held back.
    busy = signals(kv=1.0, ready=6, reporting_replicas=4)
    assert decide(policy(), 6, busy, ScalingState(), NOW).replicas > 6


def test_missing_metrics_at_zero_hold_zero() -> None:
    observed = signals(None, None, None, ready=0, activation=5, error="prometheus: timeout")
    decision = decide(policy(min_replicas=0), 0, observed, ScalingState(), NOW)
    assert (decision.replicas, decision.active) == (0, False)


def test_missing_metrics_still_apply_the_bounds() -> None:
    decision = decide(policy(min_replicas=3), 1, signals(error="down"), ScalingState(), NOW)
    assert (decision.replicas, decision.reason, decision.active, decision.limited) == (
        3,
        "MetricsMissing",
        False,
        True,
    )


# --- state ---------------------------------------------------------------------------------------


def test_state_round_trips_through_json() -> None:
    state = ScalingState(
        recommendations=((at(-30), 3), (at(-20.5), 4)),
        last_scale_time=at(-20.5),
        last_active_time=at(-1),
        panic_until=at(40),
    )
    data = json.loads(json.dumps(state.to_json()))
    assert data["recommendations"][0] == {"time": "2026-03-02T11:59:30Z", "replicas": 3}
    assert ScalingState.from_json(data) == state
    assert ScalingState.from_json(ScalingState().to_json()) == ScalingState()


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        "state",
        [],
        {"recommendations": "many"},
        {"recommendations": [{"time": "yesterday", "replicas": 1}]},
        {"recommendations": [{"time": "2026-03-02T12:00:00Z", "replicas": -1}]},
        {"recommendations": [{"time": "2026-03-02T12:00:00Z", "replicas": True}]},
        {"recommendations": [{"time": "2026-03-02T12:00:00Z"}]},
        {"recommendations": [5]},
        {"lastScaleTime": 5},
        {"lastActiveTime": "2026-03-02T12:00:00"},  # no time zone
    ],
)
def test_garbage_state_is_an_empty_state(garbage: Any) -> None:
    assert ScalingState.from_json(garbage) == ScalingState()


def test_history_keeps_only_the_window() -> None:
    rng = random.Random(7)

    def view(t: float, replicas: int) -> Observation:
        return signals(kv=rng.uniform(0.1, 2.4) / replicas, ready=replicas, at=at(t))

    _, state = run(policy(), 3, view, range(0, 3601, 10))
    times = [when for when, _ in state.recommendations]
    window_start = at(3600 - 300)
    # the oldest is the one in force when the window starts; everything else is inside it
    assert times[0] <= window_start
    assert all(when > window_start for when in times[1:])
    assert times == sorted(times)


def test_history_is_compacted_without_lowering_the_window_maximum() -> None:
    many = tuple((at(-290 + i), 2 + i % 3) for i in range(200))
    decision = decide(policy(), 6, signals(kv=0.05, ready=6), ScalingState(recommendations=many), NOW)
    kept = decision.state.recommendations
    assert len(kept) <= MAX_RECOMMENDATIONS
    assert max(n for _, n in kept) == 4
    assert kept[0][0] == many[0][0]


# --- simulation ----------------------------------------------------------------------------------


@dataclass
class ToyFleet:
    """A fluid model of vLLM replicas: 16 sequences each, requests last 30 s, 60 s cold start."""

    slots: int = 16
    duration_s: float = 30
    cold_start_s: float = 60
    running: float = 0
    waiting: float = 0
    ready_at: list[float] | None = None

    def resize(self, replicas: int, now: float) -> None:
        pods = self.ready_at or []
        while len(pods) < replicas:
            pods.append(now + self.cold_start_s)
        # remove starting pods first, then the newest ready ones
        self.ready_at = sorted(pods)[:replicas]
        overflow = max(0.0, self.running - self.slots * self.ready(now))
        self.running -= overflow
        self.waiting += overflow  # drained sequences are retried

    def ready(self, now: float) -> int:
        return sum(1 for t in self.ready_at or [] if t <= now)

    def step(self, now: float, dt: float, arrivals: float) -> None:
        self.running -= self.running * dt / self.duration_s
        self.waiting += arrivals
        admit = min(self.waiting, max(0.0, self.slots * self.ready(now) - self.running))
        self.running += admit
        self.waiting -= admit

    def view(self, now: float) -> Observation:
        ready = self.ready(now)
        return signals(
            waiting=self.waiting,
            running=self.running,
            kv=self.running / (self.slots * ready) if ready else None,
            gpu=1.0 if self.running else 0.0,  # pegged under batching
            ready=ready,
            starting=len(self.ready_at or []) - ready,
            at=at(now),
        )


def test_simulated_burst_is_drained_without_flapping() -> None:
    def arrivals_per_second(t: float) -> float:
        return 4.0 if 300 <= t < 600 else 1.0  # 30 → 120 sequences in flight, back to 30

    pol = policy(max_replicas=12)
    fleet, replicas, state = ToyFleet(), 3, ScalingState()
    fleet.resize(replicas, -120)  # warm at the start
    trace: list[tuple[float, int, float]] = []
    for t in range(0, 1801, 10):
        fleet.step(t, 10, arrivals_per_second(t) * 10)
        decision = decide(pol, replicas, fleet.view(t), state, at(t))
        replicas, state = decision.replicas, decision.state
        fleet.resize(replicas, t)
        trace.append((t, replicas, fleet.waiting))

    counts = [n for _, n, _ in trace]
    events = sum(1 for a, b in itertools.pairwise(counts) if a != b)
    ups = [b > a for a, b in itertools.pairwise(counts) if a != b]
    assert events <= 15, trace  # up in a few steps, down one replica at a time
    # up during the burst, then down: one direction change, no flapping
    assert sum(1 for a, b in itertools.pairwise(ups) if a != b) == 1, trace
    assert max(counts) <= 12
    # the queue is drained within 200 s of the burst's start (60 s cold starts), and stays so
    assert all(waiting < 1 for t, _, waiting in trace if t >= 500), trace
    # back near the baseline (30 in flight at kv 0.8 of 16 slots: 3 replicas) by the end
    assert counts[-1] == math.ceil(30 / 16 / 0.8)


def test_decision_is_a_plain_value() -> None:
    decision = decide(policy(), 2, signals(), ScalingState(), NOW)
    assert isinstance(decision, Decision)
    with pytest.raises(AttributeError):
        decision.replicas = 3  # type: ignore[misc]
