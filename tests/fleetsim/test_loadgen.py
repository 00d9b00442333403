"""fleetsim.loadgen without a cluster: traces, Poisson arrivals, endpoints from pods, and the generator
against a tiny OpenAI-style SSE server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from kubernetes.client import (
    V1Container,
    V1ContainerPort,
    V1ObjectMeta,
    V1Pod,
    V1PodCondition,
    V1PodList,
    V1PodSpec,
    V1PodStatus,
    V1Service,
    V1ServicePort,
    V1ServiceSpec,
)
from kubernetes.client.exceptions import ApiException

from fleetsim.clock import SimClock
from fleetsim.loadgen import (
    BurstTrace,
    ConstantTrace,
    DiurnalTrace,
    LoadGenerator,
    LoadReport,
    StepTrace,
    arrival_times,
    parse_trace,
    ready_endpoints,
)

# --- traces ------------------------------------------------------------------------------------------


def test_constant_trace() -> None:
    trace = parse_trace({"kind": "constant", "rate": 5})
    assert isinstance(trace, ConstantTrace)
    assert trace(0) == trace(1e6) == 5
    assert trace.max_rate == 5


def test_step_trace_holds_each_rate_from_its_time_on() -> None:
    trace = parse_trace({"kind": "step", "rates": [[0, 2], [60, 10], [180, 2]]})
    assert isinstance(trace, StepTrace)
    assert [trace(t) for t in (0, 59.9, 60, 179.9, 180, 1e6)] == [2, 2, 10, 10, 2, 2]
    assert trace.max_rate == 10
    # nothing before the first step
    assert parse_trace({"kind": "step", "rates": [[30, 4]]})(29) == 0


def test_burst_trace() -> None:
    trace = parse_trace({"kind": "burst", "base": 2, "peak": 20, "at": 60, "duration": 30})
    assert isinstance(trace, BurstTrace)
    assert [trace(t) for t in (0, 59.9, 60, 89.9, 90)] == [2, 2, 20, 20, 2]
    assert trace.max_rate == 20


def test_diurnal_trace_is_a_sinusoid_from_min_to_max() -> None:
    trace = parse_trace({"kind": "diurnal", "min": 1, "max": 10, "period": 600})
    assert isinstance(trace, DiurnalTrace)
    assert trace(0) == pytest.approx(1)
    assert trace(150) == pytest.approx(5.5)
    assert trace(300) == pytest.approx(10)
    assert trace(600) == pytest.approx(1)
    assert trace.max_rate == 10


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"kind": "spikey", "rate": 5},
            "load.trace.kind: unknown kind 'spikey'; use constant, step, burst or diurnal",
        ),
        ({"rate": 5}, "load.trace.kind: missing; use constant, step, burst or diurnal"),
        ([1, 2], "load.trace: expected a mapping with a kind, got [1, 2]"),
        (
            {"kind": "constant", "rate": -1},
            "load.trace.rate: Input should be greater than or equal to 0 (got -1)",
        ),
        ({"kind": "constant"}, "load.trace.rate: Field required"),
        ({"kind": "constant", "rate": 5, "rat": 3}, "load.trace.rat: Extra inputs are not permitted (got 3)"),
        (
            {"kind": "step", "rates": []},
            "load.trace.rates: List should have at least 1 item after validation, not 0 (got [])",
        ),
        (
            {"kind": "step", "rates": [[0, 2], [60, -1]]},
            "load.trace.rates.1.1: Input should be greater than or equal to 0 (got -1)",
        ),
        (
            {"kind": "step", "rates": [[0, 2], [60, 10], [60, 3]]},
            "load.trace: step times must increase: rates.2 starts at 60.0 after 60.0",
        ),
        (
            {"kind": "burst", "base": 2, "peak": 20, "at": 60, "duration": 0},
            "load.trace.duration: Input should be greater than 0 (got 0)",
        ),
        ({"kind": "diurnal", "min": 5, "max": 1, "period": 60}, "load.trace: max (1.0) must be >= min (5.0)"),
        ({"kind": "diurnal", "max": 1, "period": 60}, "load.trace.min: Field required"),
    ],
)
def test_bad_traces_name_the_field(spec: Any, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_trace(spec)


def test_the_path_prefix_is_the_callers() -> None:
    with pytest.raises(ValueError, match=r"^scenarios\[2\]\.load\.trace\.rate: "):
        parse_trace({"kind": "constant", "rate": -3}, where="scenarios[2].load.trace")


# --- arrivals ----------------------------------------------------------------------------------------


def test_poisson_arrivals_match_a_constant_rate() -> None:
    times = list(arrival_times(ConstantTrace(rate=5), 2000, random.Random(0)))
    assert len(times) == pytest.approx(10_000, rel=0.03)
    assert times == sorted(times)
    assert times[0] >= 0
    assert times[-1] < 2000
    # exponential gaps: mean 1/rate, and about 1 - 1/e of them shorter than the mean
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert sum(gaps) / len(gaps) == pytest.approx(0.2, rel=0.03)
    assert sum(g < 0.2 for g in gaps) / len(gaps) == pytest.approx(0.632, abs=0.02)


def test_arrivals_follow_a_changing_rate() -> None:
    trace = parse_trace({"kind": "step", "rates": [[0, 2], [600, 10], [1200, 0]]})
    times = list(arrival_times(trace, 1800, random.Random(1)))
    assert sum(t < 600 for t in times) == pytest.approx(1200, rel=0.1)
    assert sum(600 <= t < 1200 for t in times) == pytest.approx(6000, rel=0.05)
    assert not [t for t in times if t >= 1200]


def test_arrivals_are_reproducible_with_a_seed() -> None:
    trace = parse_trace({"kind": "diurnal", "min": 1, "max": 10, "period": 60})
    assert list(arrival_times(trace, 120, random.Random(7))) == list(
        arrival_times(trace, 120, random.Random(7))
    )
    assert list(arrival_times(trace, 120, random.Random(7))) != list(
        arrival_times(trace, 120, random.Random(8))
    )
    assert list(arrival_times(ConstantTrace(rate=0), 120, random.Random(7))) == []


# --- endpoints from pods -----------------------------------------------------------------------------


def pod(
    name: str,
    ip: str | None = "127.0.1.1",
    ready: bool = True,
    labels: dict[str, str] | None = None,
    port_name: str = "http",
    terminating: bool = False,
    namespace: str = "llm",
) -> V1Pod:
    return V1Pod(
        metadata=V1ObjectMeta(
            name=name,
            namespace=namespace,
            labels={"app": "m", **(labels or {})},
            deletion_timestamp=datetime(2030, 1, 1, tzinfo=UTC) if terminating else None,
        ),
        spec=V1PodSpec(
            containers=[
                V1Container(name="vllm", ports=[V1ContainerPort(name=port_name, container_port=8000)])
            ]
        ),
        status=V1PodStatus(
            pod_ip=ip,
            phase="Running",
            conditions=[V1PodCondition(type="Ready", status="True" if ready else "False")],
        ),
    )


class FakeCoreV1:
    """The two CoreV1Api calls ready_endpoints makes, over real kubernetes client models."""

    def __init__(self, services: list[V1Service], pods: list[V1Pod]) -> None:
        self.services = services
        self.pods = pods
        self.selectors: list[str] = []

    def read_namespaced_service(self, name: str, namespace: str) -> V1Service:
        for service in self.services:
            if (service.metadata.name, service.metadata.namespace) == (name, namespace):
                return service
        raise ApiException(status=404, reason="Not Found")

    def list_namespaced_pod(self, namespace: str, label_selector: str = "") -> V1PodList:
        self.selectors.append(label_selector)
        wanted = dict(term.split("=", 1) for term in label_selector.split(",") if term)
        items = [
            p
            for p in self.pods
            if p.metadata.namespace == namespace
            and all((p.metadata.labels or {}).get(k) == v for k, v in wanted.items())
        ]
        return V1PodList(items=items)


def service(target_port: int | str | None = "http", selector: dict[str, str] | None = None) -> V1Service:
    return V1Service(
        metadata=V1ObjectMeta(name="m", namespace="llm"),
        spec=V1ServiceSpec(
            selector={"app": "m"} if selector is None else selector,
            ports=[V1ServicePort(name="http", port=80, target_port=target_port)],
        ),
    )


def test_ready_endpoints_come_from_ready_pods_of_the_selector() -> None:
    api = FakeCoreV1(
        [service()],
        [
            pod("b", ip="127.0.1.2"),
            pod("a", ip="127.0.1.1"),
            pod("not-ready", ip="127.0.1.3", ready=False),
            pod("terminating", ip="127.0.1.4", terminating=True),
            pod("no-ip", ip=None),
            pod("other-app", ip="127.0.1.5", labels={"app": "other"}),
            pod("unnamed-port", ip="127.0.1.6", port_name="metrics"),
            pod("elsewhere", ip="127.0.1.7", namespace="other"),
            pod("routable", ip="10.0.0.7"),  # never addressed: only loopback traffic here
        ],
    )
    assert ready_endpoints(api, "llm", "m") == ["http://127.0.1.1:8000", "http://127.0.1.2:8000"]
    assert api.selectors == ["app=m"]


def test_ready_endpoints_with_a_numeric_or_missing_target_port() -> None:
    pods = [pod("a", port_name="metrics")]
    assert ready_endpoints(FakeCoreV1([service(target_port=9000)], pods), "llm", "m") == [
        "http://127.0.1.1:9000"
    ]
    assert ready_endpoints(FakeCoreV1([service(target_port="9001")], pods), "llm", "m") == [
        "http://127.0.1.1:9001"
    ]
    # no targetPort: the Service port itself
    assert ready_endpoints(FakeCoreV1([service(target_port=None)], pods), "llm", "m") == [
        "http://127.0.1.1:80"
    ]


def test_a_service_without_selector_has_no_pods() -> None:
    assert ready_endpoints(FakeCoreV1([service(selector={})], [pod("a")]), "llm", "m") == []


def test_a_missing_service_is_an_api_error() -> None:
    with pytest.raises(ApiException):
        ready_endpoints(FakeCoreV1([], []), "llm", "m")


# --- the generator against a stub server -------------------------------------------------------------

SERVED_MODEL = "meta-llama/Meta-Llama-3-70B-Instruct"


class Stub:
    """OpenAI-style streaming completions: /v1/completions streams; /down/… answers 503;
    /silent/… never answers; /cut/… stops without [DONE]."""

    def __init__(self, first_token_s: float = 0.005, token_s: float = 0.001) -> None:
        self.first_token_s = first_token_s
        self.token_s = token_s
        self.requests: list[dict[str, Any]] = []
        self.url = ""

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await asyncio.sleep(self.first_token_s)
        for i in range(body["max_tokens"]):
            chunk = {"id": "cmpl-1", "object": "text_completion", "model": SERVED_MODEL}
            chunk["choices"] = [{"index": 0, "text": f" t{i}", "finish_reason": None}]
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(self.token_s)
        usage = {"prompt_tokens": 4, "completion_tokens": body["max_tokens"], "total_tokens": 0}
        final = {
            "id": "cmpl-1",
            "object": "text_completion",
            "model": SERVED_MODEL,
            "choices": [],
            "usage": usage,
        }
        await response.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response

    async def down(self, request: web.Request) -> web.Response:
        return web.Response(status=503, text="no capacity")

    async def silent(self, request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response()

    async def cut(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"model": "x", "choices": [{"text": "a"}]}\n\n')
        await response.write_eof()
        return response


@asynccontextmanager
async def serve(stub: Stub) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/completions", stub.completions)
    app.router.add_post("/down/v1/completions", stub.down)
    app.router.add_post("/silent/v1/completions", stub.silent)
    app.router.add_post("/cut/v1/completions", stub.cut)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    stub.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield stub.url
    finally:
        await runner.cleanup()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def run_load(
    endpoints: Callable[[str], list[str]], stub: Stub | None = None, duration_s: float = 20.0, **options: Any
) -> LoadReport:
    """Serve the stub, point a generator (clock scale 100) at endpoints(stub_url), run it."""
    options = {"trace": ConstantTrace(rate=5), "clock": SimClock(100), "max_tokens": 8, **options}

    async def scenario() -> LoadReport:
        async with serve(stub or Stub()) as url:
            generator = LoadGenerator(lambda: endpoints(url), "m", **options)
            report = await generator.run(duration_s)
            assert report == generator.report()
            return report

    return asyncio.run(scenario())


def test_streams_are_measured_in_simulated_seconds() -> None:
    stub = Stub(first_token_s=0.005, token_s=0.001)
    report = run_load(lambda url: [url], stub, prompt_tokens=16)
    assert 70 <= report.sent <= 130  # 5/s for 20 simulated seconds
    assert report.ok == report.sent
    assert report.errors == {}
    assert report.models == (SERVED_MODEL,)
    assert report.tokens == 8 * report.ok  # from usage.completion_tokens
    # 5 ms real to the first token is 0.5 simulated seconds at scale 100
    assert report.ttft_p50 is not None
    assert 0.45 <= report.ttft_p50 < 20
    assert report.latency_p50 is not None
    assert report.latency_p90 is not None
    assert report.latency_p99 is not None
    assert report.ttft_p50 < report.latency_p50 <= report.latency_p90 <= report.latency_p99
    assert report.duration_s == 20
    request = stub.requests[0]
    assert (request["model"], request["stream"], request["max_tokens"]) == ("m", True, 8)
    # token ids: an exact prompt length for vLLM and for fleetsim's server alike
    assert len(request["prompt"]) == 16
    assert all(isinstance(t, int) for t in request["prompt"])
    assert stub.requests[1]["prompt"] != request["prompt"]


def test_errors_are_counted_by_kind() -> None:
    dead = closed_port_url()
    report = run_load(lambda url: [url, f"{url}/down", dead], duration_s=30)
    assert set(report.errors) == {"503", "connection"}
    assert report.ok + report.error_count == report.sent
    # round robin: a third each
    assert abs(report.errors["503"] - report.ok) <= 1
    assert abs(report.errors["connection"] - report.ok) <= 1


def test_no_endpoints_is_an_error_of_its_own() -> None:
    report = run_load(lambda url: [])
    assert report.sent > 0
    assert report.ok == 0
    assert report.errors == {"no_endpoints": report.sent}
    assert report.ttft_p50 is None
    assert report.latency_p99 is None


def test_timeouts_and_cut_streams() -> None:
    report = run_load(lambda url: [f"{url}/silent", f"{url}/cut"], request_timeout_s=5)
    assert set(report.errors) == {"timeout", "protocol"}
    assert report.error_count == report.sent
    assert report.ok == 0
    assert report.tokens == report.errors["protocol"]  # the one chunk each cut stream delivered


def test_in_flight_requests_are_capped() -> None:
    report = run_load(lambda url: [f"{url}/silent"], max_in_flight=3, request_timeout_s=50)
    assert report.errors["timeout"] == 3
    assert report.errors["in_flight_limit"] == report.sent - 3


def test_endpoints_are_refreshed_during_the_run() -> None:
    calls: list[int] = []

    def endpoints(url: str) -> list[str]:
        calls.append(1)
        return [] if len(calls) == 1 else [url]

    report = run_load(endpoints, refresh_s=2.0)
    assert len(calls) >= 5  # every 2 simulated seconds of 20
    assert report.errors.get("no_endpoints", 0) < report.sent / 4
    assert report.ok > 0


def test_report_table() -> None:
    report = LoadReport(
        sent=10,
        ok=8,
        errors={"503": 1, "connection": 1},
        ttft_p50=0.25,
        ttft_p90=0.5,
        ttft_p99=0.75,
        latency_p50=2.0,
        latency_p90=3.0,
        latency_p99=4.0,
        tokens=1024,
        models=("m",),
        duration_s=4.0,
    )
    rows = dict(report.table())
    assert rows["errors"] == "503: 1, connection: 1"
    assert rows["TTFT p50 / p90 / p99 (s)"] == "0.250 / 0.500 / 0.750"
    assert rows["ok per second"] == "2.00"
    assert rows["models served"] == "m"
