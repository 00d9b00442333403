"""Open-loop load against the fleet's OpenAI-compatible endpoints, in simulated time.

A scenario's `load.trace` gives the request rate as a function of simulated
time (constant, step, burst or diurnal). `LoadGenerator` draws Poisson
arrivals at that rate (thinning, so the rate may change at any instant),
sends each as a streaming `POST /v1/completions` (OpenAI SSE: `data: {json}`
lines, then `data: [DONE]`) to the ready pods of a Service, round-robin, and
measures time to first token and end-to-end latency in simulated seconds
(real seconds × clock.scale, hack/fleetsim/clock.py), so the numbers are
comparable with the published figures the simulator is built from.

Endpoints come from the pods themselves, not from EndpointSlices: the API
server here rejects loopback addresses in EndpointSlices while it accepts a
pod's `status.podIP` in 127.0.0.0/8 (ENVIRONMENT.md "Pod IPs"; verified on
v1.36). `ready_endpoints` therefore does what the EndpointSlice controller
would: the Service's selector, ready pods that are not terminating, the
Service's targetPort resolved against the pod's named container ports. Only
loopback pod IPs are used; traffic may go nowhere else on these machines.

Error kinds in `LoadReport.errors`: the HTTP status code ("503"),
"connection" (refused, reset, stream cut), "timeout" (per-request timeout,
in simulated seconds), "protocol" (malformed SSE, or the stream ended
without `[DONE]`), "no_endpoints" (no ready pod when the request arrived)
and "in_flight_limit" (the generator's own cap on concurrent requests was
reached: the request was not sent, which is counted rather than silently
slowing the arrival rate down). A `Router` in place of the flat endpoints
(fleetsim.gateway: an HTTPRoute's weighted backends) may name kinds of its own
for requests its gateway answers itself ("no_route", "invalid_backend").
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import ipaddress
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, ValidationError, model_validator

from fleetsim.clock import SimClock

log = logging.getLogger(__name__)

DEFAULT_PORT = 8000
KINDS = ("constant", "step", "burst", "diurnal")


# --- traces ------------------------------------------------------------------------------------------


class Trace(Protocol):
    """Requests per second as a function of simulated seconds since the load started."""

    def __call__(self, t: float) -> float: ...

    @property
    def max_rate(self) -> float:
        """An upper bound of the rate over all t (Poisson thinning draws candidates at this rate)."""
        ...


class _TraceModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ConstantTrace(_TraceModel):
    kind: Literal["constant"] = "constant"
    rate: NonNegativeFloat

    def __call__(self, t: float) -> float:
        return self.rate

    @property
    def max_rate(self) -> float:
        return self.rate


class StepTrace(_TraceModel):
    """`rates: [[t0, r0], [t1, r1], ...]`: rate r_i from t_i on; 0 before the first step."""

    kind: Literal["step"] = "step"
    rates: Annotated[list[tuple[NonNegativeFloat, NonNegativeFloat]], Field(min_length=1)]

    @model_validator(mode="after")
    def _increasing(self) -> StepTrace:
        times = [t for t, _ in self.rates]
        for i in range(1, len(times)):
            if times[i] <= times[i - 1]:
                raise ValueError(
                    f"step times must increase: rates.{i} starts at {times[i]} after {times[i - 1]}"
                )
        return self

    def __call__(self, t: float) -> float:
        i = bisect.bisect_right([start for start, _ in self.rates], t) - 1
        return self.rates[i][1] if i >= 0 else 0.0

    @property
    def max_rate(self) -> float:
        return max(rate for _, rate in self.rates)


class BurstTrace(_TraceModel):
    """`base` requests/s, and `peak` from `at` for `duration` seconds."""

    kind: Literal["burst"] = "burst"
    base: NonNegativeFloat
    peak: NonNegativeFloat
    at: NonNegativeFloat
    duration: Annotated[float, Field(gt=0)]

    def __call__(self, t: float) -> float:
        return self.peak if self.at <= t < self.at + self.duration else self.base

    @property
    def max_rate(self) -> float:
        return max(self.base, self.peak)


class DiurnalTrace(_TraceModel):
    """A sinusoid between `min` (at t = 0, period, ...) and `max` (at period/2, ...)."""

    kind: Literal["diurnal"] = "diurnal"
    low: Annotated[NonNegativeFloat, Field(alias="min")]
    high: Annotated[NonNegativeFloat, Field(alias="max")]
    period: Annotated[float, Field(gt=0)]

    @model_validator(mode="after")
    def _ordered(self) -> DiurnalTrace:
        if self.high < self.low:
            raise ValueError(f"max ({self.high}) must be >= min ({self.low})")
        return self

    def __call__(self, t: float) -> float:
        return self.low + (self.high - self.low) * (1 - math.cos(2 * math.pi * t / self.period)) / 2

    @property
    def max_rate(self) -> float:
        return self.high


_TRACE_MODELS: dict[str, type[ConstantTrace] | type[StepTrace] | type[BurstTrace] | type[DiurnalTrace]] = {
    "constant": ConstantTrace,
    "step": StepTrace,
    "burst": BurstTrace,
    "diurnal": DiurnalTrace,
}


def parse_trace(spec: Any, where: str = "load.trace") -> Trace:
    """A trace from its scenario YAML form; ValueError naming the field (`where` is the path prefix)."""
    choices = "use constant, step, burst or diurnal"
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: expected a mapping with a kind, got {spec!r}")
    kind = spec.get("kind")
    if kind is None:
        raise ValueError(f"{where}.kind: missing; {choices}")
    model = _TRACE_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ValueError(f"{where}.kind: unknown kind {kind!r}; {choices}")
    try:
        trace = model.model_validate(dict(spec))
    except ValidationError as error:
        problems = []
        for problem in error.errors():
            path = ".".join([where, *(str(part) for part in problem["loc"])])
            message = problem["msg"].removeprefix("Value error, ")
            if problem["type"] != "missing" and problem["loc"]:
                message += f" (got {problem['input']!r})"
            problems.append(f"{path}: {message}")
        raise ValueError("; ".join(problems)) from None
    return trace


def arrival_times(trace: Trace, duration_s: float, rng: random.Random) -> Iterator[float]:
    """Poisson arrival instants in [0, duration_s) at rate trace(t), by thinning (Lewis and Shedler)."""
    bound = trace.max_rate
    if bound <= 0:
        return
    t = 0.0
    while True:
        t += rng.expovariate(bound)
        if t >= duration_s:
            return
        if rng.random() * bound < trace(t):
            yield t


# --- endpoints ---------------------------------------------------------------------------------------


def _pod_ready(pod: Any) -> bool:
    if pod.metadata.deletion_timestamp is not None or not pod.status or not pod.status.pod_ip:
        return False
    conditions = pod.status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def _service_port(service: Any) -> Any:
    """The Service port to send to: the one named "http" (gpufleet's), else the first."""
    ports = service.spec.ports or []
    chosen = next((p for p in ports if p.name == "http"), ports[0] if ports else None)
    if chosen is None:
        return DEFAULT_PORT
    # targetPort defaults to port; it is an int or a container port name (IntOrString).
    target = chosen.target_port if chosen.target_port is not None else chosen.port
    if isinstance(target, str) and target.isdigit():
        return int(target)
    return target


def _resolve_port(pod: Any, target: Any) -> int | None:
    if isinstance(target, int):
        return target
    for container in pod.spec.containers or []:
        for port in container.ports or []:
            if port.name == target:
                return int(port.container_port)
    return None  # as the EndpointSlice controller does: a pod without the named port is not an endpoint


def _url(ip: str, port: int) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}"


def ready_endpoints(core_v1_api: Any, namespace: str, service_name: str) -> list[str]:
    """`http://<podIP>:<port>` of the Service's ready pods, sorted (see the module docstring for why pods)."""
    service = core_v1_api.read_namespaced_service(service_name, namespace)
    selector: Mapping[str, str] = service.spec.selector or {}
    if not selector:
        # A Service without a selector has hand-made endpoints; there are no pods to find.
        return []
    target = _service_port(service)
    label_selector = ",".join(f"{key}={value}" for key, value in sorted(selector.items()))
    pods = core_v1_api.list_namespaced_pod(namespace, label_selector=label_selector).items
    urls = []
    for pod in pods:
        if not _pod_ready(pod):
            continue
        port = _resolve_port(pod, target)
        if port is None:
            continue
        ip = pod.status.pod_ip
        try:
            loopback = ipaddress.ip_address(ip).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            log.warning("skipping pod %s/%s: %s is not a loopback address", namespace, pod.metadata.name, ip)
            continue
        urls.append(_url(ip, port))
    return sorted(urls)


@dataclass(frozen=True)
class SumTrace:
    """Requests/s of several traces added up (each trace kind here is one shape; the benchmarks' days
    are a curve plus bursts)."""

    parts: tuple[Trace, ...]

    def __call__(self, t: float) -> float:
        return sum(part(t) for part in self.parts)

    @property
    def max_rate(self) -> float:
        return sum(part.max_rate for part in self.parts)


# --- routers -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pick:
    """Where one request goes: `endpoint`, or nowhere and `error` (the kind counted in LoadReport.errors).
    `service` is the backend Service it was routed to, when a router chose one."""

    endpoint: str | None
    service: str | None = None
    error: str | None = None


@runtime_checkable
class Router(Protocol):
    """What LoadGenerator sends through: `refresh` may block (it runs in a thread) and raise (the last
    good state is then kept); `pick` runs on the event loop, once per request, and must not block."""

    def refresh(self) -> None: ...

    def pick(self) -> Pick: ...


class _FlatRouter:
    """The endpoints of one Service, round-robin, as clients of that Service reach them."""

    def __init__(self, endpoints: Callable[[], list[str]]) -> None:
        self.endpoints = endpoints
        self._current: list[str] = []
        self._next = 0

    def refresh(self) -> None:
        self._current = list(self.endpoints())

    def pick(self) -> Pick:
        if not self._current:
            return Pick(None, error="no_endpoints")
        endpoint = self._current[self._next % len(self._current)]
        self._next += 1
        return Pick(endpoint)


# --- the generator -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@dataclass(frozen=True)
class LoadReport:
    """What the load saw; times in simulated seconds. `sent` counts every arrival, sent or not."""

    sent: int
    ok: int
    errors: Mapping[str, int]
    ttft_p50: float | None
    ttft_p90: float | None
    ttft_p99: float | None
    latency_p50: float | None
    latency_p90: float | None
    latency_p99: float | None
    tokens: int
    models: tuple[str, ...]
    duration_s: float
    # Requests per backend Service a Router chose (its share of the traffic); empty without one.
    routed: Mapping[str, int] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def table(self) -> list[tuple[str, str]]:
        """(what, value) rows, for a rich.table.Table or plain text."""
        errors = ", ".join(f"{kind}: {n}" for kind, n in sorted(self.errors.items())) or "none"
        rate = self.ok / self.duration_s if self.duration_s > 0 else 0.0
        return [
            ("requests", str(self.sent)),
            ("ok", str(self.ok)),
            ("errors", errors),
            ("ok per second", f"{rate:.2f}"),
            (
                "TTFT p50 / p90 / p99 (s)",
                " / ".join(map(_seconds, (self.ttft_p50, self.ttft_p90, self.ttft_p99))),
            ),
            (
                "latency p50 / p90 / p99 (s)",
                " / ".join(map(_seconds, (self.latency_p50, self.latency_p90, self.latency_p99))),
            ),
            ("tokens received", str(self.tokens)),
            ("models served", ", ".join(self.models) or "-"),
        ]


@dataclass
class _Tally:
    sent: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    ttfts: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    models: set[str] = field(default_factory=set)
    routed: Counter[str] = field(default_factory=Counter)


class _ProtocolError(Exception):
    pass


class LoadGenerator:
    """Poisson arrivals at `trace(t)` for `duration_s` simulated seconds, streamed to `endpoints()`.

    `endpoints` is called (in a thread: it may call the API server) at the
    start and every `refresh_s` simulated seconds. `request_timeout_s` is
    simulated too. One `run` at a time; `report()` may be called during a run.
    `endpoints` may be a `Router` instead: its `refresh` is called the same way
    and each request goes where its `pick` says.
    """

    def __init__(
        self,
        endpoints: Callable[[], list[str]] | Router,
        model: str,
        trace: Trace,
        clock: SimClock,
        prompt_tokens: int = 512,
        max_tokens: int = 128,
        seed: int = 0,
        max_in_flight: int = 512,
        request_timeout_s: float = 600.0,
        refresh_s: float = 2.0,
    ) -> None:
        if max_in_flight < 1 or prompt_tokens < 1 or max_tokens < 1:
            raise ValueError("max_in_flight, prompt_tokens and max_tokens must be >= 1")
        self.router: Router = endpoints if isinstance(endpoints, Router) else _FlatRouter(endpoints)
        self.model = model
        self.trace = trace
        self.clock = clock
        self.max_tokens = max_tokens
        self.max_in_flight = max_in_flight
        self.request_timeout_s = request_timeout_s
        self.refresh_s = refresh_s
        self.prompt_tokens = prompt_tokens
        self._rng = random.Random(seed)
        # Prompts have their own stream so that arrival times do not depend on prompt lengths.
        self._prompt_rng = random.Random(f"{seed}/prompts")
        self._tally = _Tally()
        self._duration_s = 0.0
        self._running = False

    def _payload(self) -> dict[str, Any]:
        # Token ids make the prompt length exact for vLLM (the completions API takes them) and for
        # fleetsim's server; text would be re-tokenised differently by each. Random ids in a range every
        # common vocabulary has (Llama 2's is 32000) keep prefix caching from turning all prompts into hits.
        prompt = [self._prompt_rng.randrange(1000, 30000) for _ in range(self.prompt_tokens)]
        return {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": self.max_tokens,
            "stream": True,
            # Final chunk carries usage.completion_tokens, exact even when a chunk holds several tokens.
            "stream_options": {"include_usage": True},
            # vLLM's own benchmark does this so every request generates max_tokens.
            "ignore_eos": True,
        }

    async def _refresh(self) -> None:
        try:
            await asyncio.to_thread(self.router.refresh)
        except Exception:
            log.warning("refreshing endpoints failed; keeping those known", exc_info=True)

    async def _refresh_loop(self) -> None:
        while True:
            await self.clock.sleep(self.refresh_s)
            await self._refresh()

    async def _request(self, session: aiohttp.ClientSession, endpoint: str) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        first: float | None = None
        chunks_with_text = 0
        usage_tokens: int | None = None
        try:
            async with (
                asyncio.timeout(self.clock.real(self.request_timeout_s)),
                session.post(f"{endpoint}/v1/completions", json=self._payload()) as response,
            ):
                if response.status != 200:
                    self._tally.errors[str(response.status)] += 1
                    return
                done = False
                async for raw in response.content:
                    line = raw.decode().strip()
                    # SSE: blank separators, ":" comments (keep-alives) and other fields are skipped.
                    if not line.startswith("data:"):
                        continue
                    data = line.removeprefix("data:").strip()
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = json.loads(data)
                    if not isinstance(chunk, dict):
                        raise _ProtocolError(f"SSE data is not an object: {data[:80]}")
                    if first is None:
                        first = loop.time()
                    if isinstance(chunk.get("model"), str):
                        self._tally.models.add(chunk["model"])
                    choices = chunk.get("choices") or []
                    chunks_with_text += sum(1 for c in choices if isinstance(c, dict) and c.get("text"))
                    usage = chunk.get("usage")
                    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                        usage_tokens = usage["completion_tokens"]
                if not done:
                    raise _ProtocolError("stream ended without data: [DONE]")
        except TimeoutError:
            # Also aiohttp's own read timeouts (ServerTimeoutError is a TimeoutError too).
            self._tally.errors["timeout"] += 1
        except (aiohttp.ClientError, OSError):
            self._tally.errors["connection"] += 1
        except (_ProtocolError, ValueError):  # ValueError: bad JSON or UTF-8, over-long SSE line
            self._tally.errors["protocol"] += 1
        else:
            end = loop.time()
            self._tally.ok += 1
            self._tally.latencies.append(self.clock.simulated(end - start))
            if first is not None:
                self._tally.ttfts.append(self.clock.simulated(first - start))
        finally:
            self._tally.tokens += usage_tokens if usage_tokens is not None else chunks_with_text

    async def run(self, duration_s: float) -> LoadReport:
        """Send load for `duration_s` simulated seconds, then wait for requests still in flight (each
        bounded by the request timeout); returns the report."""
        if self._running:
            raise RuntimeError("this LoadGenerator is already running")
        self._running = True
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks: set[asyncio.Task[None]] = set()
        refresher: asyncio.Task[None] | None = None
        try:
            await self._refresh()
            refresher = asyncio.create_task(self._refresh_loop())
            connector = aiohttp.TCPConnector(limit=self.max_in_flight)
            async with aiohttp.ClientSession(connector=connector) as session:
                for at in arrival_times(self.trace, duration_s, self._rng):
                    delay = self.clock.real(at) - (loop.time() - start)
                    if delay > 0:
                        await asyncio.sleep(delay)
                    # When the loop falls behind, late arrivals go at once: the count stays right.
                    self._tally.sent += 1
                    if len(tasks) >= self.max_in_flight:
                        self._tally.errors["in_flight_limit"] += 1
                        continue
                    pick = self.router.pick()
                    if pick.service is not None:
                        self._tally.routed[pick.service] += 1
                    if pick.endpoint is None:
                        self._tally.errors[pick.error or "no_endpoints"] += 1
                        continue
                    task = asyncio.create_task(self._request(session, pick.endpoint))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                remaining = self.clock.real(duration_s) - (loop.time() - start)
                if remaining > 0:
                    await asyncio.sleep(remaining)
                if tasks:
                    await asyncio.gather(*tasks)
        finally:
            for task in list(tasks):  # only when run itself was cancelled
                task.cancel()
            if refresher is not None:
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresher
            self._duration_s += duration_s
            self._running = False
        return self.report()

    def ttfts(self) -> list[float]:
        """Time to first token of every answered request so far, simulated seconds, in completion order."""
        return list(self._tally.ttfts)

    def report(self) -> LoadReport:
        tally = self._tally
        return LoadReport(
            sent=tally.sent,
            ok=tally.ok,
            errors=dict(sorted(tally.errors.items())),
            ttft_p50=percentile(tally.ttfts, 50),
            ttft_p90=percentile(tally.ttfts, 90),
            ttft_p99=percentile(tally.ttfts, 99),
            latency_p50=percentile(tally.latencies, 50),
            latency_p90=percentile(tally.latencies, 90),
            latency_p99=percentile(tally.latencies, 99),
            tokens=tally.tokens,
            models=tuple(sorted(tally.models)),
            duration_s=self._duration_s,
            routed=dict(sorted(tally.routed.items())),
        )
