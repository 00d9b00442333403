"""Serving metrics + remembered history → how many replicas a model should run, and why.

`decide()` is pure: the runtime reads the metrics (adapters.serving_metrics), passes the
clock in as `now`, persists `Decision.state` in the ModelDeployment's status and
sets spec.replicas. The numbers below are the anchors in REFERENCE.md
("Autoscaling anchors"); where this planner departs from them it says why.

Load, per signal, in replicas ("how many replicas at the target would carry it")
    queue            L = running / b + max(0, waiting − ready × t) / (b + t)   (b known)
                     L = waiting / t                                          (b unknown)
    kvCache          L = ready × meanKVCacheUsage / targetKVCacheUsage
    gpuUtilization   L = ready × meanGPUUtilization / targetGPUUtilization
with t = targetQueueDepth and b the batch one replica admits (below).
A signal asks for ceil(L) replicas, or for no change (the current count) when L
is within the tolerance band of the capacity: |L / capacity − 1| ≤ tolerance
(0.1, HPA and AIBrix). The largest ask wins.

The queue signal counts requests in flight, not only the queue. vLLM queues
only when a replica's batch is full, so while requests wait, b = running /
ready is what one replica admits (its max-num-seqs, or less when the KV cache
is the limit). The planner keeps the largest such b in its state: one replica
can be full and queue while a round-robin balancer leaves the others half
empty, which reads low.
- Up to the target (waiting ≤ ready × t) the fleet is as busy as its running
  requests: running / b replicas' worth of batch slots are taken. A fleet of
  full batches and a short queue is loaded, though the queue alone (HPA's
  ceil(waiting / t)) would read 0 and order a scale-down into a queue.
- Beyond it, each replica added takes b requests into its batch and holds t
  waiting, so the excess queue needs (waiting − ready × t) / (b + t) more
  replicas, not (waiting / t) as HPA/KEDA order: with b = 16 and t = 8, a
  queue of 88 behind 2 full replicas needs 3 more, not 11.
- L is continuous: at waiting = ready × t with full batches it is exactly
  `ready` (the target); it grows by one replica per b + t queued requests.
- Until b has been seen (no queue yet) the queue signal is waiting / t, which
  asks for nothing when empty, so it cannot scale down on its own (below).

Cold start. capacity = ready + starting replicas: a replica that is loading
weights (minutes for 70B, REFERENCE.md "Cold start") is capacity coming.
- Every L above is the load the fleet carries now, in replicas: running and
  waiting are measured at the ready replicas and averages (KV, GPU) are
  multiplied by `ready`, never by `capacity`. Asking ceil(L) again while the
  ordered replicas start asks for the same number, not more: starting
  replicas are part of it. (The per-ready average times ready + starting
  would count starting replicas as loaded and compound at every evaluation
  of a burst.) HPA does the same with unready pods on scale-up (their usage
  counts as 0).
- Capacity, not ready, is what the tolerance band and the panic threshold
  compare against.
- Capacity is at most the current spec.replicas. Pods beyond it are on their
  way out: replacements the reconciler surges ahead of a spot interruption
  while the doomed replicas still serve, or a scale-down's last pods. Counted,
  they would widen the band, and a load of 5 replicas on a spec of 4 with one
  replacement starting would read "within tolerance" and hold 4.

GPU utilisation is a guard, not the driver: under batching it reads near 100 %
whatever the load (llm-d, REFERENCE.md), so on its own it would add replicas up
to maxReplicas under any traffic. It only counts when it asks for more than
the capacity AND the queue is at or above its target (waiting ≥ ready × t:
the replicas really are full, not one request caught between two batches).
It never lowers the number.

Scale up: at once, in the same evaluation. Outside panic a decision adds at
most max(+maxScaleUpReplicas, ×maxScaleUpRate) (defaults +4 and ×2: HPA's
"+4 pods or +100 %" and AIBrix's max rate 2×), so one noisy sample cannot
order the whole fleet.

Panic (Knative KPA, AIBrix: threshold 200 %, window 6 s / 60 s): when the queue
alone asks ceil(L) ≥ panicThreshold × capacity, it is outgrowing even the
capacity on its way. The planner then goes straight to the
ask (no rate limit, still ≤ maxReplicas) and does not scale down for
panicWindowSeconds; each evaluation still in that state extends the window.

Scale down: slowly, one replica per decision. Every evaluation with data
makes a recommendation (the largest ask, clamped to the bounds); the state
keeps them as a step function: a recommendation holds until the next one, so
only changes are stored, plus the one in force when the window starts, at
most MAX_RECOMMENDATIONS (the oldest merged, keeping the larger value). A gap
(metrics missing, operator restarting) carries the last value across it.
A replica is removed only when every recommendation in force during the last
scaleDownDelaySeconds asked for fewer than the current replicas (HPA's
stabilisation window, 300 s by default; KubeAI's scaleDownDelaySeconds), the
history reaches back to the start of that window (a fresh or lost history
never scales down), and the last scale event is at least scaleDownStepSeconds
old (30 s: one dcgm interval / KEDA poll, so the metrics have seen the last
step before the next). Scale-down needs a load signal: with no
replica ready, or with the KV-cache usage missing and b never seen, the queue
cannot tell how busy the replicas are (an empty queue says nothing), so the
planner holds (reason NoLoadSignal) and records "no lower than now". Metric-driven
decisions never go below one replica; zero is reached only by the idle rule.

Scale to zero (KEDA cooldown, Knative grace): when scaleToZeroAfterSeconds is
set, the floor is 0 (minReplicas 0 and no schedule active) and no request has
been running or waiting (nor seen by the gateway) for that long, with data
present. All replicas go at once: all of them were idle. The idle clock starts
at the first evaluation when no activity was ever seen, so a new or restored
state never scales to zero sooner than asked. At zero replicas there is no
vLLM to queue in: requests FAIL unless a gateway in front holds them.

Scale from zero: `MetricReadings.activation` is the gateway's count of requests that
arrived while at zero (KEDA's activation). Any activation (or any request
running or waiting) → one replica, reason Activation; from one replica the
normal rules apply (KEDA: 0↔1 is activation, 1↔N is the HPA). Without an
activation signal a deployment at zero stays there until minReplicas, a
schedule or a person raises it.

Schedules raise the floor: the effective minimum is max(minReplicas, the
highest floor of the schedules active now), capped at maxReplicas. A window
whose end is before its start crosses midnight and belongs to the day it
starts on; start == end is a 24-hour window.

Missing data: a missing queue or running count, `MetricReadings.error` set (Prometheus
down, a query error) or a sample older than staleAfterSeconds (90 s: three
dcgm intervals of 30 s) → hold the current replicas, reason MetricsMissing,
active False; never down, never to zero; the state is returned unchanged.
minReplicas, maxReplicas and schedule floors still apply: they are the user's
orders, not a reading of the metrics. With no pod at all and spec.replicas 0,
absent vLLM gauges are the truth (there is nothing to report them) and count
as 0. The sample time is the oldest sample's, not the query's: Prometheus
answers with samples up to its 5-minute lookback old.

Partial data: fewer replicas reporting vLLM metrics than are ready (a pod not
scraped yet, or no longer) makes every sum read low. Scale-up still follows
what is seen (it can only be too small); scale-down does not happen (reason
PartialMetrics) and the recommendation recorded is "no lower than now", as HPA
never scales down on pods without metrics.

Result: clamped to [effective minimum, maxReplicas]. `limited` is True when
the bounds stop the fleet following what the signals ask (HPA's
ScalingLimited); the reason is MinReplicas, Schedule or MaxReplicas when a
bound is what moved the number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gpufleet.api.timestamps import parse_kube_time

QUEUE = "queue"
KV_CACHE = "kvCache"
GPU_UTILIZATION = "gpuUtilization"
_SIGNAL_REASONS = {QUEUE: "QueueDepth", KV_CACHE: "KVCachePressure", GPU_UTILIZATION: "GPUUtilization"}

# A handful of distinct recommendations covers any window; the cap keeps the
# status object small (etcd objects are limited to ~1.5 MiB) when a noisy
# signal alternates for a long window.
MAX_RECOMMENDATIONS = 64
# Float slack: ceil(2.0000000001) must not be 3, and a ratio of 1.1 is within a 0.1 band.
_EPSILON = 1e-9


@dataclass(frozen=True)
class Schedule:
    """Raises the floor to `min_replicas` during a daily window, in `timezone` wall-clock time."""

    name: str
    days: frozenset[int]  # 0=Monday .. 6=Sunday: the day the window starts
    start: time
    end: time  # end < start: the window crosses midnight; end == start: 24 hours
    min_replicas: int
    timezone: str = "UTC"  # IANA name


@dataclass(frozen=True)
class ScalingPolicy:
    min_replicas: int
    max_replicas: int
    target_queue_depth: float  # waiting requests per replica
    target_kv_cache_usage: float  # 0-1
    target_gpu_utilization: float  # 0-1
    scale_down_delay_seconds: int
    scale_to_zero_after_seconds: int | None
    timings: ScalingTimings
    tolerance: float = 0.1  # HPA, AIBrix
    panic_threshold: float = 2.0  # KPA 200 %, AIBrix 2.0
    max_scale_up_rate: float = 2.0  # HPA +100 %, AIBrix 2×
    max_scale_up_replicas: int = 4  # HPA +4 pods
    schedules: tuple[Schedule, ...] = ()


class MetricReadings(Protocol):
    """What Prometheus said of one model when sampled; None = that reading is missing.

    adapters.serving_metrics.ModelMetrics is one; read-only, so a frozen record satisfies it.
    """

    @property
    def sampled_at(self) -> datetime: ...
    @property
    def waiting(self) -> float | None: ...  # sum of vllm:num_requests_waiting
    @property
    def running(self) -> float | None: ...  # sum of vllm:num_requests_running
    @property
    def kv_cache_usage(self) -> float | None: ...  # mean vllm:kv_cache_usage_perc over ready pods, 0-1
    @property
    def gpu_utilization(self) -> float | None: ...  # mean over the pods' GPUs, 0-1
    @property
    def activation(self) -> float | None: ...  # requests a gateway saw while at zero; None = no gateway
    @property
    def error(self) -> str | None: ...  # why the readings could not be taken
    @property
    def reporting_replicas(self) -> int | None: ...  # replicas with vLLM series; None: not known


@dataclass(frozen=True)
class Observation:
    """One evaluation's view of the model: its metric readings and its pods."""

    readings: MetricReadings
    ready_replicas: int
    starting_replicas: int  # pods that exist but are not ready yet


@dataclass(frozen=True)
class ScalingTimings:
    """The planner's windows, operator-wide (GPUFLEET_AUTOSCALE_*); defaults in gpufleet.config only."""

    panic_window_seconds: int  # no scale-down this long after a panic (AIBrix: 60 s)
    scale_down_step_seconds: int  # between two single-replica removals (one dcgm interval / KEDA poll)
    stale_after_seconds: int  # readings older than this count as missing (three dcgm intervals)
    # status.autoscaler is rewritten for new readings alone at most this often; a new decision, bound or
    # recommendation, or busy turning idle, is written at once (gpufleet.planning.autoscale).
    status_refresh_seconds: int


def _iso(moment: datetime) -> str:
    # Not kube_time: the state keeps sub-second times, so windows replay exactly after a restart.
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _optional_time(data: Mapping[str, Any], key: str) -> datetime | None:
    value = data.get(key)
    return None if value is None else parse_kube_time(value)


def _optional_batch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"not a batch size: {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"not a batch size: {value!r}")
    return float(value)


@dataclass(frozen=True)
class ScalingState:
    """What the windows need across evaluations; persisted in the status so a restart loses nothing."""

    recommendations: tuple[tuple[datetime, int], ...] = ()  # (when, replicas), oldest first
    last_scale_time: datetime | None = None
    last_active_time: datetime | None = None  # last time a request was running, waiting or at the gateway
    panic_until: datetime | None = None
    batch_per_replica: float | None = None  # b: running / ready last seen while requests waited

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "recommendations": [{"time": _iso(when), "replicas": n} for when, n in self.recommendations]
        }
        for key, value in (
            ("lastScaleTime", self.last_scale_time),
            ("lastActiveTime", self.last_active_time),
            ("panicUntil", self.panic_until),
        ):
            if value is not None:
                data[key] = _iso(value)
        if self.batch_per_replica is not None:
            data["batchPerReplica"] = round(self.batch_per_replica, 3)
        return data

    @classmethod
    def from_json(cls, data: Any) -> ScalingState:
        """The state written by to_json; anything else (hand-edited, old format) → an empty state.

        Empty is the safe side: no history means no scale-down until a full
        window is observed again, and the idle clock restarts.
        """
        if not isinstance(data, Mapping):
            return cls()
        try:
            raw = data.get("recommendations") or []
            if not isinstance(raw, list):
                raise ValueError("recommendations is not a list")
            recommendations = []
            for item in raw:
                replicas = item["replicas"]
                if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
                    raise ValueError(f"not a replica count: {replicas!r}")
                recommendations.append((parse_kube_time(item["time"]), replicas))
            return cls(
                recommendations=tuple(sorted(recommendations, key=lambda r: r[0])),
                last_scale_time=_optional_time(data, "lastScaleTime"),
                last_active_time=_optional_time(data, "lastActiveTime"),
                panic_until=_optional_time(data, "panicUntil"),
                batch_per_replica=_optional_batch(data.get("batchPerReplica")),
            )
        except (KeyError, TypeError, ValueError):
            return cls()


@dataclass(frozen=True)
class Decision:
    replicas: int  # what spec.replicas should become
    reason: str  # CamelCase, for the Event and the ScalingActive / ScalingLimited conditions
    message: str
    active: bool  # ScalingActive: False while holding for missing or stale metrics
    limited: bool  # ScalingLimited: min/max or a schedule floor stops the fleet following the signals
    # Replicas each signal asks for (queue, kvCache, gpuUtilization; a missing one is absent).
    # gpuUtilization is shown even when the guard does not vote (nothing waiting, or it asks no more).
    per_signal: Mapping[str, int]
    state: ScalingState


def _schedule_active(schedule: Schedule, now: datetime) -> bool:
    try:
        zone = ZoneInfo(schedule.timezone)
    except (ZoneInfoNotFoundError, ValueError) as error:
        # Admission should have refused it; guessing a zone could drop a floor the user relies on.
        raise ValueError(f"schedule {schedule.name!r}: unknown time zone {schedule.timezone!r}") from error
    local = now.astimezone(zone)
    clock = local.time()  # naive wall-clock time, like Schedule.start and end
    today = local.weekday()
    yesterday = (today - 1) % 7
    if schedule.start < schedule.end:
        return today in schedule.days and schedule.start <= clock < schedule.end
    # Crosses midnight (or lasts 24 h when start == end): the evening part belongs to the
    # listed day, the morning part to the day after it.
    if today in schedule.days and clock >= schedule.start:
        return True
    return yesterday in schedule.days and clock < schedule.end


def schedule_floor(schedules: Sequence[Schedule], now: datetime) -> tuple[int, str | None]:
    """The highest floor among the schedules active at `now` (first listed wins a tie), or (0, None)."""
    floor, name = 0, None
    for schedule in schedules:
        if schedule.min_replicas > floor and _schedule_active(schedule, now):
            floor, name = schedule.min_replicas, schedule.name
    return floor, name


def _ceil(value: float) -> int:
    return max(0, math.ceil(value - _EPSILON))


@dataclass(frozen=True)
class _Ask:
    load: float  # L, in replicas
    replicas: int  # what the signal asks for (current when within tolerance)
    summary: str


def _ask(load: float, capacity: int, current: int, tolerance: float, summary: str) -> _Ask:
    if capacity > 0 and abs(load / capacity - 1) <= tolerance + _EPSILON:
        return _Ask(load, current, f"{summary} → within tolerance")
    replicas = _ceil(load)
    return _Ask(load, replicas, f"{summary} → {replicas}")


def _batch(observed: Observation, waiting: float, running: float, remembered: float | None) -> float | None:
    """What one full replica admits: the most running / ready seen while requests waited.

    The most, not the last: a request waits at one replica as soon as that one is
    full, while a load balancer that is not queue-aware leaves others half empty,
    so a single reading under light load says less than a full batch. A low b
    would make every running request look like a whole replica's load.
    """
    if observed.ready_replicas > 0 and waiting > 0 and running > 0:
        measured = running / observed.ready_replicas
        return measured if remembered is None else max(measured, remembered)
    return remembered


def _capacity(observed: Observation, current: int) -> int:
    """Replicas ready or starting, up to spec.replicas: those beyond it are leaving (module doc)."""
    return min(observed.ready_replicas + observed.starting_replicas, current)


def _queue_ask(
    policy: ScalingPolicy,
    current: int,
    observed: Observation,
    waiting: float,
    running: float,
    batch: float | None,
) -> _Ask:
    ready = observed.ready_replicas
    capacity = _capacity(observed, current)
    target = policy.target_queue_depth
    summary = f"queue {waiting:g} waiting, {running:g} running"
    if batch is None:
        load = waiting / target
        summary += f" (target {target:g} waiting/replica)"
    else:
        excess = max(0.0, waiting - ready * target)
        load = running / batch + excess / (batch + target)
        summary += f" (batch {batch:g}/replica, target {target:g} waiting/replica)"
    return _ask(load, capacity, current, policy.tolerance, summary)


def _asks(
    policy: ScalingPolicy,
    current: int,
    observed: Observation,
    waiting: float,
    running: float,
    batch: float | None,
) -> dict[str, _Ask]:
    ready = observed.ready_replicas
    capacity = _capacity(observed, current)
    tol = policy.tolerance
    asks = {QUEUE: _queue_ask(policy, current, observed, waiting, running, batch)}
    # Averages over ready replicas mean nothing with none ready.
    if observed.readings.kv_cache_usage is not None and ready > 0:
        asks[KV_CACHE] = _ask(
            ready * observed.readings.kv_cache_usage / policy.target_kv_cache_usage,
            capacity,
            current,
            tol,
            f"kv-cache {observed.readings.kv_cache_usage:.2f} on {ready} ready "
            f"(target {policy.target_kv_cache_usage:g})",
        )
    if observed.readings.gpu_utilization is not None and ready > 0:
        asks[GPU_UTILIZATION] = _ask(
            ready * observed.readings.gpu_utilization / policy.target_gpu_utilization,
            capacity,
            current,
            tol,
            f"gpu {observed.readings.gpu_utilization:.2f} on {ready} ready "
            f"(target {policy.target_gpu_utilization:g})",
        )
    return asks


def _record(
    recommendations: tuple[tuple[datetime, int], ...], now: datetime, replicas: int
) -> tuple[tuple[datetime, int], ...]:
    # A step function only needs its changes: a repeat of the last value adds nothing.
    if recommendations and recommendations[-1][1] == replicas:
        return recommendations
    return (*recommendations, (now, replicas))


def _trim(
    recommendations: tuple[tuple[datetime, int], ...], window_start: datetime
) -> tuple[tuple[datetime, int], ...]:
    """Drop what ended before the window; keep the one in force at its start (it proves coverage)."""
    ordered = sorted(recommendations, key=lambda r: r[0])
    inside = [r for r in ordered if r[0] > window_start]
    before = [r for r in ordered if r[0] <= window_start]
    kept = before[-1:] + inside
    while len(kept) > MAX_RECOMMENDATIONS:
        # Merge the two oldest into the earlier time and the larger value: the window's
        # maximum can only rise, so compacting never makes a scale-down come sooner.
        (first, a), (_, b) = kept[0], kept[1]
        kept[:2] = [(first, max(a, b))]
    return tuple(kept)


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(value, high))


def _missing_reason(policy: ScalingPolicy, current: int, observed: Observation, now: datetime) -> str | None:
    if observed.readings.error:
        return f"metrics could not be read: {observed.readings.error}"
    age = (now - observed.readings.sampled_at).total_seconds()
    if age > policy.timings.stale_after_seconds:
        return f"metrics are {age:.0f}s old (stale after {policy.timings.stale_after_seconds}s)"
    no_pods = current == 0 and observed.ready_replicas + observed.starting_replicas == 0
    if not no_pods:
        absent = [
            name
            for name, value in (
                ("vllm:num_requests_waiting", observed.readings.waiting),
                ("vllm:num_requests_running", observed.readings.running),
            )
            if value is None
        ]
        if absent:
            return f"no samples of {', '.join(absent)}"
    return None


def decide(
    policy: ScalingPolicy, current_replicas: int, observed: Observation, state: ScalingState, now: datetime
) -> Decision:
    """The replicas for this evaluation, why, and the state to persist for the next one."""
    if now.tzinfo is None or observed.readings.sampled_at.tzinfo is None:
        raise ValueError("decide() needs timezone-aware datetimes")
    current = current_replicas
    floor, schedule_name = schedule_floor(policy.schedules, now)
    high = max(policy.max_replicas, 0)
    low = min(max(policy.min_replicas, floor, 0), high)

    def bound_reason(value: int) -> str:
        if value > high:
            return "MaxReplicas"
        return "Schedule" if floor > policy.min_replicas else "MinReplicas"

    def bounds_text() -> str:
        text = f"[{low}, {high}]"
        return f"{text} (schedule {schedule_name!r})" if floor > policy.min_replicas else text

    missing = _missing_reason(policy, current, observed, now)
    if missing is not None:
        held = _clamp(current, low, high)
        message = f"holding {current} replicas: {missing}"
        if held != current:
            message += f"; {current} is outside {bounds_text()}: {held}"
        return Decision(held, "MetricsMissing", message, False, held != current, {}, state)

    waiting = observed.readings.waiting or 0.0
    running = observed.readings.running or 0.0
    activation = observed.readings.activation or 0.0
    busy = waiting > 0 or running > 0 or activation > 0
    last_active = now if busy or state.last_active_time is None else state.last_active_time
    panic_until = state.panic_until if state.panic_until is not None and state.panic_until > now else None
    last_scale = state.last_scale_time
    window = timedelta(seconds=policy.scale_down_delay_seconds)
    batch = _batch(observed, waiting, running, state.batch_per_replica)

    def finish(
        target: int,
        reason: str,
        message: str,
        limited: bool,
        per_signal: Mapping[str, int],
        recommendations: tuple[tuple[datetime, int], ...],
    ) -> Decision:
        replicas = _clamp(target, low, high)
        if replicas != target:
            reason, limited = bound_reason(target), True
            message += f"; bounds {bounds_text()}: {replicas}"
        new_state = ScalingState(
            recommendations=recommendations,
            last_scale_time=now if replicas != current else last_scale,
            last_active_time=last_active,
            panic_until=panic_until,
            batch_per_replica=batch,
        )
        return Decision(replicas, reason, message, True, limited, per_signal, new_state)

    # Zero: there is no vLLM to measure; only the gateway (or a floor) can bring it back.
    if current <= 0:
        if busy:
            what = f"activation {activation:g}" if activation > 0 else f"{waiting + running:g} requests"
            return finish(1, "Activation", f"{what} at zero replicas: starting one", False, {}, ())
        return finish(0, "Idle", "no requests at zero replicas", False, {}, ())

    idle_for = (now - last_active).total_seconds()
    after = policy.scale_to_zero_after_seconds
    if after is not None and low == 0 and panic_until is None and not busy and idle_for >= after:
        message = (
            f"no request running or waiting for {idle_for:.0f}s (scaleToZeroAfterSeconds {after}); "
            "at zero, requests fail unless a gateway holds them"
        )
        return finish(0, "ScaleToZero", message, False, {}, ())

    capacity = _capacity(observed, current)
    asks = _asks(policy, current, observed, waiting, running, batch)
    per_signal = {name: ask.replicas for name, ask in asks.items()}
    votes = {QUEUE: asks[QUEUE].replicas}
    if KV_CACHE in asks:
        votes[KV_CACHE] = asks[KV_CACHE].replicas
    gpu = asks.get(GPU_UTILIZATION)
    queue_full = (
        observed.ready_replicas > 0 and waiting >= observed.ready_replicas * policy.target_queue_depth
    )
    if gpu is not None and queue_full and gpu.replicas > max(capacity, current):
        votes[GPU_UTILIZATION] = gpu.replicas
    winner = max(votes, key=lambda name: votes[name])  # first of queue, kv, gpu on a tie
    need = max(votes[winner], 1)
    reporting = observed.readings.reporting_replicas
    partial = reporting is not None and reporting < observed.ready_replicas
    can_down = observed.ready_replicas > 0 and (KV_CACHE in asks or batch is not None) and not partial
    capacity_text = f"capacity {observed.ready_replicas} ready + {observed.starting_replicas} starting"
    detail = "; ".join(ask.summary for ask in asks.values()) + f"; {capacity_text}"

    queue_need = _ceil(asks[QUEUE].load)
    if queue_need >= policy.panic_threshold * max(capacity, 1):
        panic_until = now + timedelta(seconds=policy.timings.panic_window_seconds)

    recommendation = _clamp(need if can_down else max(need, current), max(low, 1), high)
    history = _trim(_record(state.recommendations, now, recommendation), now - window)
    limited = _clamp(need, low, high) != need

    if need > current:
        if panic_until is not None:
            message = (
                f"panic: queue asks {queue_need} ≥ {policy.panic_threshold:g}× {capacity_text}; {detail}"
            )
            return finish(need, "Panic", message, limited, per_signal, history)
        step = max(current + policy.max_scale_up_replicas, _ceil(current * policy.max_scale_up_rate))
        target = min(need, step)
        message = f"{detail}; {current} → {target}"
        if target < need:
            message += f" of {need} (at most {step} per decision)"
        return finish(target, _SIGNAL_REASONS[winner], message, limited, per_signal, history)

    if need < current and partial:
        # The sums cover only the replicas that report: they read low, and a scale-down on them would
        # remove capacity that is busy (HPA likewise never scales down on pods without metrics).
        message = (
            f"{detail}; not scaling down: only {reporting} of {observed.ready_replicas} ready replicas "
            "report vLLM metrics"
        )
        return finish(current, "PartialMetrics", message, limited, per_signal, history)

    if need < current and not can_down:
        why = (
            "no replica is ready"
            if observed.ready_replicas == 0
            else "kv-cache usage is missing and no full batch was seen yet"
        )
        message = f"{detail}; not scaling down: {why}, and the queue alone cannot tell how busy replicas are"
        return finish(current, "NoLoadSignal", message, limited, per_signal, history)

    if need < current and recommendation >= current:
        # The bounds, not the delay, keep the fleet where it is: say so rather than "waiting".
        message = f"{detail}; bounds {bounds_text()} hold {current}"
        return finish(current, bound_reason(need), message, limited, per_signal, history)

    if need < current:
        if panic_until is not None:
            message = f"{detail}; no scale-down in panic until {_iso(panic_until)}"
            return finish(current, "Panic", message, limited, per_signal, history)
        window_start = now - window
        covered = bool(history) and history[0][0] <= window_start
        highest = max(n for _, n in history)
        since_scale = None if last_scale is None else (now - last_scale).total_seconds()
        if covered and highest < current:
            if since_scale is not None and since_scale < policy.timings.scale_down_step_seconds:
                message = (
                    f"{detail}; last scaled {since_scale:.0f}s ago, "
                    f"next step after {policy.timings.scale_down_step_seconds}s"
                )
                return finish(current, "ScaleDownDelay", message, limited, per_signal, history)
            message = (
                f"{detail}; at most {highest} asked for {window.total_seconds():.0f}s: "
                f"{current} → {current - 1}"
            )
            return finish(current - 1, "ScaledDown", message, limited, per_signal, history)
        lower_since = _lower_since(history, current)
        lower_for = 0.0 if lower_since is None else (now - lower_since).total_seconds()
        message = (
            f"{detail}; lower need for {lower_for:.0f}s of the {window.total_seconds():.0f}s scale-down delay"
        )
        return finish(current, "ScaleDownDelay", message, limited, per_signal, history)

    return finish(current, "WithinTolerance", f"{detail}; holding {current}", limited, per_signal, history)


def _lower_since(history: tuple[tuple[datetime, int], ...], current: int) -> datetime | None:
    """Since when every recommendation has been below `current` (None: not even the last one)."""
    since = None
    for when, replicas in reversed(history):
        if replicas >= current:
            break
        since = when
    return since
