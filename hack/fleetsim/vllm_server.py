"""A simulated `vllm serve`: vLLM's OpenAI-compatible HTTP API and /metrics over the pure Engine.

One VllmServer stands for one vLLM pod. Dozens share one asyncio loop, each
bound to its own loopback address (127.2.0.5:8000, ...), so the per-server cost
is one aiohttp site, one driver task that sleeps on an event when idle, and a
metrics collector that renders on scrape.

Time: the driver runs Engine.step on a simulated timeline and sleeps the real
equivalent of each step (SimClock). The timeline is continuous while busy, so
asyncio's sleep overshoot does not inflate latencies; if the process falls
more than _MAX_REAL_LAG_S behind, the timeline jumps forward (the simulator is
overloaded, and latencies then honestly include it). Every latency in /metrics
is in simulated seconds.

HTTP behaviour follows vLLM's OpenAI server: 404 NotFoundError for an unknown
model, 400 for a request beyond max_model_len, SSE streaming ending with
`data: [DONE]`. Prompt tokens are estimated as ceil(characters / 4); every
request generates exactly max_tokens tokens (as with ignore_eos). While draining
(vLLM after SIGTERM with --shutdown-timeout, after the preStop hook) new
requests and /health get 503 and in-flight requests run to completion; stop()
(the process gone: SIGTERM without that flag, or the kill at the end of the
grace period) cuts their connections. Every response but /health's and
/metrics' is counted in http_requests_total as vLLM's HTTP instrumentator counts
it (see HTTP_EXCLUDED_HANDLERS). A faulty build (fail_requests) answers a share
of valid completion requests with vLLM's HTTP 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import random
import re
import time
import uuid
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from fleetsim.clock import SimClock
from fleetsim.vllm_model import Engine, EngineProfile, FinishedRequest, RequestRejectedError, StepResult

# Real seconds the simulated timeline may trail the wall clock before it jumps forward.
_MAX_REAL_LAG_S = 0.05
# Default minimum real seconds between two SSE writes of one stream, except for the first
# token and the end. Per-token writes cost ~50 µs each on both ends; at time scale 10 hundreds
# of streams would saturate the process. Clients still see the first token and the end on
# time (TTFT and e2e are exact); tokens between come in bursts. vLLM's metrics are exact.
STREAM_FLUSH_REAL_S = 0.05
# OpenAI's default max_tokens for completions; used for chat too (vLLM would use the
# remaining context, which with ignore_eos would mean thousands of tokens).
DEFAULT_MAX_TOKENS = 16
# Llama 3 chat template tokens around each message (<|start_header_id|>role<|end_header_id|> ... <|eot_id|>).
_CHAT_TOKENS_PER_MESSAGE = 4
# Filler output, four characters a token so that re-counting it as a prompt gives the same length.
_WORDS = (" the", " gpu", " ops", " and", " llm", " for", " sim", " run")

# Bucket bounds of vLLM's v1 PrometheusStatLogger (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

# vLLM 0.34.0's HTTP metrics: its OpenAI server runs `Instrumentator(excluded_handlers=[...]).add()
# .instrument(app)` (vllm/entrypoints/serve/instrumentator/metrics.py in the 0.34.0 wheel), whose METADATA
# requires prometheus-fastapi-instrumentator>=8.0.0. That library's defaults (its metrics.default() and
# middleware.py, identical in v8.0.0, v8.0.2 and the 8.1.0 wheel): should_group_status_codes, so `status` is
# "2xx"/"4xx"/"5xx"; `handler` is the matched route's path template ("/v1/completions"), or "none" for a path
# no route matches (should_group_untemplated); handlers matching an excluded pattern (re.search) are not
# counted at all; every response is counted by the status it started with (500 if the app raised), and its
# duration runs to the end of the body, streams included (should_exclude_streaming_duration False).
HTTP_EXCLUDED_HANDLERS = ("/metrics", "/health", "/load", "/ping", "/version", "/server_info")
HTTP_LATENCY_HIGHR_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5,
    4.0, 4.5, 5.0, 7.5, 10.0, 30.0, 60.0,
)  # fmt: skip
HTTP_LATENCY_LOWR_BUCKETS = (0.1, 0.5, 1.0)
# A faulty build's (fleetsim.builds) failed request, as vLLM 0.34.0 answers an internal error that reaches
# its exception handlers: GenerationError("Internal server error") → create_error_response
# (vllm/entrypoints/serve/exception_handling/error_response.py) → type "InternalServerError", code 500.
INTERNAL_ERROR_MESSAGE = "Internal server error"


def _go_float(value: float) -> str:
    # The `le` label as prometheus_client writes it for its own histograms.
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


class _Histogram:
    """A histogram that takes n equal observations at once: a decode step of 256 sequences
    is one call, not 256 as with prometheus_client.Histogram."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += n
        self.count += n
        self.total += value * n

    def buckets(self) -> list[tuple[str, float]]:
        cumulative = list(itertools.accumulate(self.counts))
        out = [(_go_float(b), float(c)) for b, c in zip(self.bounds, cumulative, strict=False)]
        out.append(("+Inf", float(self.count)))
        return out


@dataclass
class _HttpStats:
    """prometheus-fastapi-instrumentator's default metrics (see HTTP_EXCLUDED_HANDLERS above)."""

    # (method, status group, handler) -> responses
    requests: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # handler -> [count, sum] of the Content-Length headers (0 when absent: a stream has none)
    request_sizes: dict[str, list[float]] = field(default_factory=dict)
    response_sizes: dict[str, list[float]] = field(default_factory=dict)
    duration_highr: _Histogram = field(default_factory=lambda: _Histogram(HTTP_LATENCY_HIGHR_BUCKETS))
    # (method, handler) -> durations
    durations: dict[tuple[str, str], _Histogram] = field(default_factory=dict)

    def observe(
        self, method: str, status: int, handler: str, request_size: int, response_size: int, seconds: float
    ) -> None:
        key = (method, f"{str(status)[0]}xx", handler)
        self.requests[key] = self.requests.get(key, 0) + 1
        for sizes, size in ((self.request_sizes, request_size), (self.response_sizes, response_size)):
            entry = sizes.setdefault(handler, [0.0, 0.0])
            entry[0] += 1
            entry[1] += size
        self.duration_highr.observe(seconds)
        hist = self.durations.get((method, handler))
        if hist is None:
            hist = self.durations[(method, handler)] = _Histogram(HTTP_LATENCY_LOWR_BUCKETS)
        hist.observe(seconds)

    def families(self) -> Iterable[Metric]:
        # Names, help texts and label names as in prometheus_fastapi_instrumentator/metrics.py default().
        total = CounterMetricFamily(
            "http_requests_total",
            "Total number of requests by method, status and handler.",
            labels=["method", "status", "handler"],
        )
        for labels, count in sorted(self.requests.items()):
            total.add_metric(list(labels), float(count))
        yield total
        for name, doc, sizes in (
            (
                "http_request_size_bytes",
                "Content length of incoming requests by handler. Only value of header is respected. "
                "Otherwise ignored. No percentile calculated. ",
                self.request_sizes,
            ),
            (
                "http_response_size_bytes",
                "Content length of outgoing responses by handler. Only value of header is respected. "
                "Otherwise ignored. No percentile calculated. ",
                self.response_sizes,
            ),
        ):
            summary = SummaryMetricFamily(name, doc, labels=["handler"])
            for handler, (observed, total_bytes) in sorted(sizes.items()):
                summary.add_metric([handler], count_value=int(observed), sum_value=total_bytes)
            yield summary
        highr = HistogramMetricFamily(
            "http_request_duration_highr_seconds",
            "Latency with many buckets but no API specific labels. Made for more accurate percentile "
            "calculations. ",
            buckets=self.duration_highr.buckets(),
            sum_value=self.duration_highr.total,
        )
        yield highr
        lowr = HistogramMetricFamily(
            "http_request_duration_seconds",
            "Latency with only few buckets by handler. Made to be only used if aggregation by handler is "
            "important. ",
            labels=["method", "handler"],
        )
        for (method, handler), hist in sorted(self.durations.items()):
            lowr.add_metric([method, handler], hist.buckets(), sum_value=hist.total)
        yield lowr


@dataclass
class _Stats:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    preemptions: int = 0
    success: int = 0
    ttft: _Histogram = field(default_factory=lambda: _Histogram(TTFT_BUCKETS))
    itl: _Histogram = field(default_factory=lambda: _Histogram(ITL_BUCKETS))
    e2e: _Histogram = field(default_factory=lambda: _Histogram(REQUEST_LATENCY_BUCKETS))
    queue: _Histogram = field(default_factory=lambda: _Histogram(REQUEST_LATENCY_BUCKETS))
    # Speculative decoding: drafts verified, tokens proposed, proposals accepted (in all, and by position).
    spec_drafts: int = 0
    spec_draft_tokens: int = 0
    spec_accepted: int = 0
    spec_accepted_per_pos: list[int] = field(default_factory=list)
    http: _HttpStats = field(default_factory=_HttpStats)


def _counters(label: list[str], *rows: tuple[str, str, float]) -> Iterable[CounterMetricFamily]:
    """One counter per (name, help, total), labelled with the served model name."""
    for name, doc, total in rows:
        counter = CounterMetricFamily(name, doc, labels=["model_name"])
        counter.add_metric(label, float(total))
        yield counter


class _VllmCollector(Collector):
    """Renders vLLM's metric families from the engine and the server's counters on scrape."""

    def __init__(self, model_name: str, engine: Engine, stats: _Stats) -> None:
        self._label = [model_name]
        self._engine = engine
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        engine, stats, label = self._engine, self._stats, self._label
        gauges: tuple[tuple[str, str, float], ...] = (
            (
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
                engine.num_running,
            ),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", engine.num_waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", engine.kv_cache_usage),
        )
        for name, doc, value in gauges:
            gauge = GaugeMetricFamily(name, doc, labels=["model_name"])
            gauge.add_metric(label, float(value))
            yield gauge
        yield from _counters(
            label,
            ("vllm:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens),
            ("vllm:generation_tokens", "Number of generation tokens processed.", stats.generation_tokens),
            ("vllm:num_preemptions", "Cumulative number of preemption from the engine.", stats.preemptions),
        )
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=["model_name", "finished_reason"],
        )
        success.add_metric([*label, "length"], float(stats.success))
        yield success
        for name, doc, hist in (
            ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", stats.ttft),
            ("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", stats.itl),
            ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", stats.e2e),
            (
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                stats.queue,
            ),
        ):
            family = HistogramMetricFamily(name, doc, labels=["model_name"])
            family.add_metric(label, hist.buckets(), sum_value=hist.total)
            yield family
        if engine.profile.num_speculative_tokens:
            # vLLM exports these only with a --speculative-config (SpecDecodingProm,
            # vllm/v1/spec_decode/metrics.py at v0.34.0; it also adds an `engine` label).
            yield from _counters(
                label,
                ("vllm:spec_decode_num_drafts", "Number of spec decoding drafts.", stats.spec_drafts),
                ("vllm:spec_decode_num_draft_tokens", "Number of draft tokens.", stats.spec_draft_tokens),
                ("vllm:spec_decode_num_accepted_tokens", "Number of accepted tokens.", stats.spec_accepted),
            )
            per_pos = CounterMetricFamily(
                "vllm:spec_decode_num_accepted_tokens_per_pos",
                "Accepted tokens per draft position.",
                labels=["model_name", "position"],
            )
            for position in range(engine.profile.num_speculative_tokens):
                accepted = (
                    stats.spec_accepted_per_pos[position]
                    if position < len(stats.spec_accepted_per_pos)
                    else 0
                )
                per_pos.add_metric([*label, str(position)], float(accepted))
            yield per_pos
        yield from stats.http.families()


@dataclass(eq=False)
class _Pending:
    """A request's handler waiting on the driver."""

    stream: bool
    event: asyncio.Event = field(default_factory=asyncio.Event)
    # Streaming: tokens produced, tokens written, and when (real monotonic) the last write was.
    ready: int = 0
    sent: int = 0
    last_write: float = -math.inf
    finished: FinishedRequest | None = None
    aborted: bool = False


def _error(status: int, message: str, err_type: str, param: str | None = None) -> web.Response:
    # vLLM's ErrorResponse, OpenAI-shaped.
    body = {"error": {"message": message, "type": err_type, "param": param, "code": status}}
    return web.json_response(body, status=status)


def _cut(request: web.Request) -> None:
    """Reset the connection: the process serving it is gone (stop() is a killed pod)."""
    if request.transport is not None:
        request.transport.abort()


def _text_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def _filler(start: int, count: int) -> str:
    return "".join(_WORDS[i % len(_WORDS)] for i in range(start, start + count))


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class VllmServer:
    """One simulated vLLM OpenAI server on host:port; see the module docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        served_model_name: str,
        profile: EngineProfile,
        clock: SimClock,
        lora_names: Sequence[str] = (),
        *,
        stream_flush_real_s: float = STREAM_FLUSH_REAL_S,
        error_share: float = 0.0,
        error_seed: int | str = 0,
    ) -> None:
        self.host = host
        self.port = port
        self.served_model_name = served_model_name
        self.profile = profile
        self.clock = clock
        self.lora_names = tuple(lora_names)
        self.stream_flush_real_s = stream_flush_real_s
        self.engine = Engine(profile)
        self.registry = CollectorRegistry(auto_describe=False)
        self._stats = _Stats()
        self.registry.register(_VllmCollector(served_model_name, self.engine, self._stats))
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count()
        self._wake = asyncio.Event()
        # Set by start_draining (or directly): new requests and /health get 503.
        self.draining = False
        # A fault the tests inject (a scrape that fails, as when the metrics port is unreachable): /metrics
        # answers 503 while serving goes on, so Prometheus marks the pod's series stale.
        self.refuse_scrapes = False
        self.fail_requests(error_share, error_seed)
        # End of the step in flight (simulated); the timeline the engine runs on.
        self._step_end = 0.0
        self._busy = False
        self._driver: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._created = int(time.time())

    # lifecycle

    async def start(self) -> None:
        app = web.Application(middlewares=[self._instrument])
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/metrics", self._metrics)
        # shutdown_timeout is short because stop() ends every handler first.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self._driver = asyncio.create_task(self._drive(), name=f"vllm-sim {self.host}:{self.port}")

    async def stop(self) -> None:
        """Abort what is in flight (the process is gone) and release the port."""
        for request_id, pending in list(self._pending.items()):
            self.engine.abort(request_id)
            pending.aborted = True
            pending.event.set()
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
            self._driver = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start_draining(self) -> None:
        self.draining = True

    def fail_requests(self, share: float, seed: int | str = 0) -> None:
        """A faulty build (fleetsim.builds): answer `share` of the completion requests that pass validation
        with HTTP 500, which of them drawn from a random.Random(seed) of this server's own (one draw per
        such request, in arrival order), so a given seed and request sequence always fail the same ones.

        They fail at once, before the engine sees them: no batch slot, KV or token counters. In vLLM 0.34.0
        an error raised in the API server before generation (rendering, sampling parameters, admission) ends
        in its exception handlers as HTTP 500 for streamed requests too, since the StreamingResponse is not
        started yet. An error the engine reports for one request (FinishReason.ERROR: a KV-transfer load
        failure, a validation the engine core makes; at admission or its first step, rarely later) is also
        500 for a request that is not streamed, but a streamed one has had its 200 and gets the error as an
        SSE `data: {"error": ...}` chunk then `data: [DONE]` (completion_stream_generator), which the
        instrumentator counts as 2xx. That kind is not simulated: every failure here is a 500 the
        http_requests_total 5xx series counts.
        """
        if not 0 <= share <= 1:
            raise ValueError(f"error share must be in [0, 1], got {share}")
        self.error_share = share
        self._error_rng = random.Random(seed)

    def in_flight(self) -> int:
        """Requests accepted and not yet answered."""
        return len(self._pending)

    def now(self) -> float:
        """Simulated now on the engine's timeline: never past the step in flight."""
        wall = self.clock.now()
        return min(wall, self._step_end) if self._busy else wall

    @property
    def last_step_end(self) -> float:
        """Simulated end of the latest engine step (the arrival, if it has not stepped since)."""
        return self._step_end

    def gpu_utilization(self, at: float | None = None) -> float:
        """Busy fraction of the engine over the ~10 simulated seconds before `at` (default: now)."""
        return self.engine.busy_fraction(self.now() if at is None else at)

    # engine driver

    async def _drive(self) -> None:
        engine, clock = self.engine, self.clock
        max_lag = clock.simulated(_MAX_REAL_LAG_S)
        while True:
            if not engine.has_work:
                self._busy = False
                self._wake.clear()
                await self._wake.wait()  # _serve resumed the timeline at the arrival
                continue
            start = max(self._step_end, clock.now() - max_lag)
            result = engine.step(start)
            self._step_end = result.end
            # sleep(0) still yields when behind, so other servers and handlers run.
            await asyncio.sleep(max(0.0, clock.real(result.end - clock.now())))
            self._deliver(result)

    def _deliver(self, result: StepResult) -> None:
        stats = self._stats
        stats.prompt_tokens += result.prompt_tokens
        stats.generation_tokens += result.generation_tokens
        stats.preemptions += result.preemptions
        for first in result.first_tokens:
            stats.ttft.observe(first.ttft)
        for latency, count in result.inter_token_latencies.items():
            stats.itl.observe(latency, count)
        if result.spec_accepted:
            k = self.profile.num_speculative_tokens
            if len(stats.spec_accepted_per_pos) < k:
                stats.spec_accepted_per_pos.extend([0] * (k - len(stats.spec_accepted_per_pos)))
            for accepted in result.spec_accepted:
                stats.spec_drafts += 1
                stats.spec_draft_tokens += k
                stats.spec_accepted += accepted
                for position in range(accepted):
                    stats.spec_accepted_per_pos[position] += 1
        pending = self._pending
        # Coalesce streamed tokens: wake a handler for its first token, then at most once per
        # flush period (waking it per token costs as much as writing).
        wake_before = time.monotonic() - self.stream_flush_real_s
        for request_id in result.tokens:
            waiter = pending.get(request_id)
            if waiter is not None and waiter.stream:
                waiter.ready += 1
                if waiter.sent == 0 or waiter.last_write <= wake_before:
                    waiter.event.set()
        for done in result.finished:
            stats.success += 1
            stats.e2e.observe(done.e2e_latency)
            stats.queue.observe(done.queue_time)
            waiter = pending.get(done.request_id)
            if waiter is not None:
                waiter.finished = done
                waiter.event.set()

    # HTTP handlers

    @web.middleware
    async def _instrument(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Count every response as prometheus-fastapi-instrumentator's middleware does (see its constants).

        The handler is the route's path (every route here is a plain path), also when only the method is
        wrong (405), as the instrumentator takes a partial route match; a path no route has is "none".
        Durations are simulated seconds, like every latency this server reports.
        """
        path = request.path
        name = path if any(r.canonical == path for r in request.app.router.resources()) else "none"
        if any(re.search(pattern, name) for pattern in HTTP_EXCLUDED_HANDLERS):
            return await handler(request)
        start = self.clock.now()
        status = 500  # the instrumentator's default: an exception that escapes is counted as a 500
        response_size = 0
        try:
            response = await handler(request)
            status = response.status
            if isinstance(response, web.Response):
                response_size = response.content_length or 0
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            try:
                request_size = int(request.headers.get("Content-Length", "0"))
            except ValueError:
                request_size = 0
            self._stats.http.observe(
                request.method, status, name, request_size, response_size, self.clock.now() - start
            )

    async def _health(self, _request: web.Request) -> web.Response:
        return web.Response(status=503 if self.draining else 200)

    async def _models(self, _request: web.Request) -> web.Response:
        # vLLM 0.34.0's ModelCard (vllm/entrypoints/serve/engine/protocol.py): the base model's root is the
        # `vllm serve` model argument; an adapter's card has the base as parent and no max_model_len (its
        # root is its path in vLLM; the simulator knows its name only).
        def card(model_id: str, parent: str | None) -> dict[str, Any]:
            permission = {
                "id": f"modelperm-{uuid.uuid4().hex}",
                "object": "model_permission",
                "created": self._created,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
            return {
                "id": model_id,
                "object": "model",
                "created": self._created,
                "owned_by": "vllm",
                "root": (self.profile.model_id or model_id) if parent is None else model_id,
                "parent": parent,
                "max_model_len": self.profile.max_model_len if parent is None else None,
                "permission": [permission],
            }

        data = [card(self.served_model_name, None)]
        data += [card(name, self.served_model_name) for name in self.lora_names]
        return web.json_response({"object": "list", "data": data})

    async def _metrics(self, _request: web.Request) -> web.Response:
        if self.refuse_scrapes:
            return web.Response(status=503, text="metrics refused (injected fault)\n")
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    def _prompt_tokens(self, body: dict[str, Any], chat: bool) -> int:
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise ValueError("'messages' must be a non-empty list")
            chars = 0
            for message in messages:
                content = message.get("content") if isinstance(message, dict) else None
                if isinstance(content, str):
                    chars += len(content)
                elif isinstance(content, list):
                    chars += sum(len(str(part.get("text", ""))) for part in content if isinstance(part, dict))
            return math.ceil(chars / 4) + _CHAT_TOKENS_PER_MESSAGE * len(messages)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return _text_tokens(prompt)
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return len(prompt)  # already token ids
        raise ValueError("'prompt' must be a string or a list of token ids (batches are not simulated)")

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        if self.draining:
            return _error(503, "The server is shutting down.", "ServiceUnavailableError")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _error(400, "Invalid JSON body.", "BadRequestError")
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.", "BadRequestError")
        # vLLM 0.34.0 (OpenAIServing._check_model, vllm/entrypoints/serve/engine/serving.py): no model
        # means the base model; a served name or a loaded adapter's name is served; anything else is 404
        # naming the served names. The answer's `model` is the adapter's name, or the first served name
        # (OpenAIServingModels.model_name, vllm/entrypoints/openai/models/serving.py).
        requested = body.get("model")
        if requested and requested != self.served_model_name and requested not in self.lora_names:
            message = f"The model `{requested}` does not exist. Valid aliases: {self.served_model_name}."
            return _error(404, message, "NotFoundError", "model")
        model = requested if requested in self.lora_names else self.served_model_name
        max_tokens = body.get("max_completion_tokens") if chat else None
        max_tokens = max_tokens if max_tokens is not None else body.get("max_tokens", DEFAULT_MAX_TOKENS)
        if max_tokens is None:
            max_tokens = DEFAULT_MAX_TOKENS
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            return _error(400, "max_tokens must be an integer.", "BadRequestError", "max_tokens")
        try:
            prompt_tokens = self._prompt_tokens(body, chat)
        except ValueError as exc:
            return _error(400, str(exc), "BadRequestError")

        request_id = str(next(self._ids))
        stream = bool(body.get("stream", False))
        arrival = self.now()
        try:
            self.engine.submit(request_id, prompt_tokens, max_tokens, arrival)
        except RequestRejectedError as exc:
            return _error(400, str(exc), "BadRequestError")
        if self.error_share and self._error_rng.random() < self.error_share:
            # A faulty build (fail_requests): valid, and failed before generation. Nothing has run yet (no
            # await since submit), so the engine forgets it without a trace.
            self.engine.abort(request_id)
            return _error(500, INTERNAL_ERROR_MESSAGE, "InternalServerError")
        if not self._busy:
            # An idle engine starts at once: its timeline resumes at the arrival, not when the
            # driver task gets scheduled (that delay × clock scale would count as queueing).
            self._busy = True
            self._step_end = arrival
        waiter = _Pending(stream=stream)
        self._pending[request_id] = waiter
        self._wake.set()
        response_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        try:
            if stream:
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                return await self._stream(request, waiter, response_id, model, chat, include_usage)
            return await self._complete(request, waiter, response_id, model, chat, prompt_tokens)
        finally:
            if self._pending.pop(request_id, None) is not None and waiter.finished is None:
                self.engine.abort(request_id)

    async def _complete(
        self,
        request: web.Request,
        waiter: _Pending,
        response_id: str,
        model: str,
        chat: bool,
        prompt_tokens: int,
    ) -> web.Response:
        while waiter.finished is None and not waiter.aborted:
            waiter.event.clear()
            await waiter.event.wait()
        done = waiter.finished
        if done is None:
            _cut(request)
            return _error(503, "The request was aborted.", "ServiceUnavailableError")
        text = _filler(0, done.generated_tokens)
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": done.finish_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        choice["stop_reason"] = None
        return web.json_response(
            {
                "id": response_id,
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [choice],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "total_tokens": prompt_tokens + done.generated_tokens,
                    "completion_tokens": done.generated_tokens,
                },
            }
        )

    async def _stream(
        self,
        request: web.Request,
        waiter: _Pending,
        response_id: str,
        model: str,
        chat: bool,
        include_usage: bool,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        created = int(time.time())
        base = {
            "id": response_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
        }
        if chat:
            delta = {"role": "assistant", "content": ""}
            role = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
            await response.write(_sse({**base, "choices": [role]}))
        # A client that went away ends the stream; _serve's finally aborts it in the engine.
        with contextlib.suppress(ConnectionResetError):
            await self._pump(request, response, waiter, base, chat, include_usage)
        return response

    async def _pump(
        self,
        request: web.Request,
        response: web.StreamResponse,
        waiter: _Pending,
        base: dict[str, Any],
        chat: bool,
        include_usage: bool,
    ) -> None:
        def chunk(word: str, finish: str | None) -> bytes:
            choice: dict[str, Any] = (
                {"index": 0, "delta": {"content": word}} if chat else {"index": 0, "text": word}
            )
            choice.update(logprobs=None, finish_reason=finish, stop_reason=None)
            return _sse({**base, "choices": [choice]})

        # Every non-final chunk is one of len(_WORDS) byte strings: encode them once per stream.
        middle = [chunk(word, None) for word in _WORDS]
        while True:
            # _deliver wakes us for the first token, the end, and otherwise once per flush period.
            while waiter.ready == waiter.sent and waiter.finished is None and not waiter.aborted:
                waiter.event.clear()
                await waiter.event.wait()
            if waiter.aborted:
                _cut(request)
                return
            done = waiter.finished
            total = done.generated_tokens if done is not None else waiter.ready
            final = done is not None
            body = [middle[i % len(middle)] for i in range(waiter.sent, total - 1 if final else total)]
            if done is not None:
                body.append(chunk(_WORDS[(total - 1) % len(_WORDS)], done.finish_reason))
                if include_usage:
                    usage = {
                        "prompt_tokens": done.prompt_tokens,
                        "total_tokens": done.prompt_tokens + done.generated_tokens,
                        "completion_tokens": done.generated_tokens,
                    }
                    body.append(_sse({**base, "choices": [], "usage": usage}))
                body.append(b"data: [DONE]\n\n")
            waiter.sent = total
            await response.write(b"".join(body))
            waiter.last_write = time.monotonic()
            if final:
                break
        await response.write_eof()


__all__ = [
    "DEFAULT_MAX_TOKENS",
    "ITL_BUCKETS",
    "REQUEST_LATENCY_BUCKETS",
    "STREAM_FLUSH_REAL_S",
    "TTFT_BUCKETS",
    "VllmServer",
]
