"""vLLM 0.34.0's HTTP request metrics, and faulty builds: errors, slow engines, engines that never start.

No control plane: servers on loopback addresses, the kubelet with a stand-in for the API server's pod status.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from fleetsim.builds import Build
from fleetsim.clock import SimClock
from fleetsim.kubelet import Device, SimKubelet, SimNode, SimPod, listening_addresses
from fleetsim.loadgen import LoadGenerator, parse_trace
from fleetsim.params import KubeletParams
from fleetsim.podspec import plan_pod
from fleetsim.vllm_model import profile_for, slowed
from fleetsim.vllm_server import HTTP_LATENCY_HIGHR_BUCKETS, VllmServer
from gpufleet.api.v1alpha1 import ModelDeploymentSpec
from gpufleet.config import Settings
from gpufleet.planning.placement import PlacementGroup
from gpufleet.planning.workloads import Owner, desired_workloads

A100 = "NVIDIA-A100-SXM4-80GB"
LLAMA_8B = "meta-llama/Meta-Llama-3-8B-Instruct"
PROFILE = profile_for(LLAMA_8B, 1, A100)
NAME = "llama-8b"
# vLLM 0.34.0's body for an internal error (create_error_response of a GenerationError).
INTERNAL_ERROR = {
    "message": "Internal server error",
    "type": "InternalServerError",
    "param": None,
    "code": 500,
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _samples(text: str, name: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(sample name, labels, value) of one family, through prometheus_client's own text parser."""
    for family in text_string_to_metric_families(text):
        if family.name == name:
            for sample in family.samples:
                yield sample.name, sample.labels, sample.value


def _requests_total(text: str) -> dict[tuple[str, str, str], float]:
    out = {}
    for sample, labels, value in _samples(text, "http_requests"):
        assert sample == "http_requests_total"
        assert set(labels) == {"method", "status", "handler"}
        out[(labels["method"], labels["status"], labels["handler"])] = value
    return out


async def _http_metrics() -> str:
    port = _free_port()
    server = VllmServer("127.0.0.1", port, NAME, PROFILE, SimClock(1000))
    await server.start()
    base = f"http://127.0.0.1:{port}"
    completion = {"model": NAME, "prompt": "x" * 40, "max_tokens": 3}
    chat = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True}
    try:
        async with aiohttp.ClientSession() as http:
            for method, path, body, status in (
                ("POST", "/v1/completions", completion, 200),
                ("POST", "/v1/completions", {**completion, "stream": True}, 200),
                ("POST", "/v1/chat/completions", chat, 200),
                ("GET", "/v1/models", None, 200),
                ("POST", "/v1/completions", {**completion, "model": "gpt-4"}, 404),
                ("POST", "/v1/completions", {**completion, "max_tokens": 9000}, 400),  # beyond max_model_len
                ("POST", "/v1/chat/completions", {"model": NAME, "messages": []}, 400),
                ("GET", "/v1/completions", None, 405),  # a route's path: named, not "none"
                ("GET", "/no/such/path", None, 404),  # no route: "none"
                ("GET", "/health", None, 200),  # excluded handlers: not counted
                ("GET", "/metrics", None, 200),
            ):
                async with http.request(method, base + path, json=body) as response:
                    await response.read()
                    assert response.status == status, (method, path)
            server.fail_requests(1.0)  # a faulty build: a valid request answered 500
            async with http.post(f"{base}/v1/completions", json={**completion, "stream": True}) as response:
                assert response.status == 500
                assert (await response.json())["error"] == INTERNAL_ERROR
            server.fail_requests(0.0)
            server.start_draining()  # after the preStop: 503 to new requests
            async with http.post(f"{base}/v1/chat/completions", json=chat) as response:
                assert response.status == 503
            async with http.get(f"{base}/metrics") as response:
                return await response.text()
    finally:
        await server.stop()


def test_http_requests_total_is_the_instrumentators() -> None:
    text = asyncio.run(asyncio.wait_for(_http_metrics(), 20))
    # prometheus-fastapi-instrumentator's defaults, as vLLM 0.34.0 installs them: status grouped, handler the
    # route's path, /health and /metrics not counted.
    assert _requests_total(text) == {
        ("POST", "2xx", "/v1/completions"): 2,
        ("POST", "4xx", "/v1/completions"): 2,
        ("POST", "5xx", "/v1/completions"): 1,
        ("POST", "2xx", "/v1/chat/completions"): 1,
        ("POST", "4xx", "/v1/chat/completions"): 1,
        ("POST", "5xx", "/v1/chat/completions"): 1,
        ("GET", "2xx", "/v1/models"): 1,
        ("GET", "4xx", "/v1/completions"): 1,
        ("GET", "4xx", "none"): 1,
    }
    # The other default metrics: durations by method and handler (no status) in 3 buckets, all requests in
    # the high-resolution histogram, Content-Length summaries by handler.
    lowr = {
        (labels["method"], labels["handler"], labels["le"])
        for sample, labels, _ in _samples(text, "http_request_duration_seconds")
        if sample.endswith("_bucket")
    }
    assert {le for method, handler, le in lowr if (method, handler) == ("POST", "/v1/completions")} == {
        "0.1",
        "0.5",
        "1.0",
        "+Inf",
    }
    highr = {s: v for s, labels, v in _samples(text, "http_request_duration_highr_seconds") if not labels}
    assert highr["http_request_duration_highr_seconds_count"] == 11
    highr_buckets = _samples(text, "http_request_duration_highr_seconds")
    assert [labels["le"] for _, labels, _ in highr_buckets if labels] == [
        *(str(b) for b in HTTP_LATENCY_HIGHR_BUCKETS),
        "+Inf",
    ]
    sizes = {(s, labels["handler"]): v for s, labels, v in _samples(text, "http_request_size_bytes")}
    assert sizes[("http_request_size_bytes_count", "/v1/completions")] == 6
    assert sizes[("http_request_size_bytes_sum", "/v1/completions")] > 0
    out_sizes = {(s, labels["handler"]): v for s, labels, v in _samples(text, "http_response_size_bytes")}
    assert out_sizes[("http_response_size_bytes_count", "/v1/completions")] == 6


async def _faulty_server(requests: int, seed: str) -> tuple[list[int], list[Any], str]:
    port = _free_port()
    server = VllmServer("127.0.0.1", port, NAME, PROFILE, SimClock(1000), error_share=0.2, error_seed=seed)
    await server.start()
    base = f"http://127.0.0.1:{port}"
    statuses, bodies = [], []
    try:
        async with aiohttp.ClientSession() as http:
            for i in range(requests):
                body = {"model": NAME, "prompt": [1, 2, 3, 4], "max_tokens": 1, "stream": i % 2 == 1}
                async with http.post(f"{base}/v1/completions", json=body) as response:
                    statuses.append(response.status)
                    text = await response.text()
                    bodies.append(json.loads(text) if response.status != 200 else None)
            async with http.get(f"{base}/metrics") as response:
                metrics = await response.text()
            assert server.in_flight() == 0
            assert not server.engine.has_work
    finally:
        await server.stop()
    return statuses, bodies, metrics


def test_a_build_with_an_error_share_answers_that_share_with_vllms_internal_error() -> None:
    seed = "default/llama-8b-0"
    statuses, bodies, metrics = asyncio.run(asyncio.wait_for(_faulty_server(200, seed), 30))
    draws = random.Random(seed)  # one draw per valid request, in order: the count is exact for the seed
    expected = sum(draws.random() < 0.2 for _ in range(200))
    assert statuses.count(500) == expected
    assert 25 <= expected <= 55  # about 20 % of 200
    assert set(statuses) == {200, 500}  # streamed requests fail with a 500 too, not a 200 stream
    assert all(b == {"error": INTERNAL_ERROR} for s, b in zip(statuses, bodies, strict=True) if s == 500)
    assert _requests_total(metrics) == {
        ("POST", "2xx", "/v1/completions"): 200 - expected,
        ("POST", "5xx", "/v1/completions"): expected,
    }
    # Failed before generation: the engine never saw them.
    success = {labels["finished_reason"]: v for s, labels, v in _samples(metrics, "vllm:request_success")}
    assert success["length"] == 200 - expected


def test_the_load_generator_counts_500s_as_failed_requests() -> None:
    async def run() -> dict[str, int]:
        port = _free_port()
        clock = SimClock(1000)
        server = VllmServer("127.0.0.1", port, NAME, PROFILE, clock, error_share=1.0)
        await server.start()
        base = f"http://127.0.0.1:{port}"
        generator = LoadGenerator(
            lambda: [base], NAME, parse_trace({"kind": "constant", "rate": 1}), clock, 16, 4
        )
        try:
            async with aiohttp.ClientSession() as session:
                await generator._request(session, base)
        finally:
            await server.stop()
        report = generator.report()
        assert report.ok == 0
        assert report.error_count == 1
        return dict(report.errors)

    assert asyncio.run(asyncio.wait_for(run(), 20)) == {"500": 1}


async def _ttft_and_itl(profile: Any) -> tuple[float, float]:
    """TTFT and inter-token latency sums (simulated seconds, vLLM's histograms) of one request alone."""
    port = _free_port()
    server = VllmServer("127.0.0.1", port, NAME, profile, SimClock(100))
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            body = {"model": NAME, "prompt": list(range(2000)), "max_tokens": 5}
            async with http.post(f"http://127.0.0.1:{port}/v1/completions", json=body) as response:
                assert response.status == 200
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
    finally:
        await server.stop()
    sums = {}
    for family in ("vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds"):
        sums[family] = next(v for s, _, v in _samples(text, family) if s.endswith("_sum"))
    return sums["vllm:time_to_first_token_seconds"], sums["vllm:inter_token_latency_seconds"]


def test_slowdowns_stretch_prefill_and_decode() -> None:
    async def run() -> list[tuple[float, float]]:
        return [
            await _ttft_and_itl(PROFILE),
            await _ttft_and_itl(Build(prefill_slowdown=2.0, decode_slowdown=2.0).engine_profile(PROFILE)),
            await _ttft_and_itl(Build(prefill_slowdown=2.0).engine_profile(PROFILE)),
        ]

    (ttft, itl), (ttft_both, itl_both), (ttft_prefill, itl_prefill) = asyncio.run(asyncio.wait_for(run(), 30))
    # The same request alone: both slowdowns at 2 double every step, so its TTFT and each later token (to the
    # float rounding of a timeline read as monotonic seconds × scale).
    assert ttft_both == pytest.approx(2 * ttft, rel=1e-6)
    assert itl_both == pytest.approx(2 * itl, rel=1e-6)
    # Prefill alone: the prompt's compute doubles, the weights read of its step does not; decode unchanged.
    prompt_compute = 2000 / PROFILE.prefill_tokens_per_s
    assert ttft_prefill == pytest.approx(ttft + prompt_compute, rel=1e-6)
    assert ttft_prefill / ttft > 1.8
    assert itl_prefill == pytest.approx(itl, rel=1e-6)


def test_slowed_profile_and_build_defaults() -> None:
    assert Build().engine_profile(PROFILE) is PROFILE
    slow = slowed(PROFILE, prefill=3.0, decode=1.5)
    assert slow.prefill_tokens_per_s == pytest.approx(PROFILE.prefill_tokens_per_s / 3)
    assert slow.decode_step_s(8, 4096) == pytest.approx(1.5 * PROFILE.decode_step_s(8, 4096))
    with pytest.raises(ValueError, match="> 0"):
        slowed(PROFILE, prefill=0)


# ---- the kubelet gives a pod its image's build ---------------------------------------------------------


class _PodStatuses:
    """The API server's pod status and deletion, recorded."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    def patch_namespaced_pod_status(self, _name: str, _namespace: str, body: dict[str, Any]) -> None:
        self.patches.append(body["status"])

    def delete_namespaced_pod(self, *args: Any, **kwargs: Any) -> None:
        return None


BAD = "vllm/vllm-openai:v0.34.0-bad"


def _pod(image: str) -> dict[str, Any]:
    spec = ModelDeploymentSpec.model_validate(
        {"model": {"uri": f"hf://{LLAMA_8B}"}, "engine": {"image": image}}
    )
    group = PlacementGroup("", "on-demand", 1)
    options = Settings.defaults().workload_options()
    deployment = desired_workloads(Owner("m", "ns", "u"), spec, [group], options).deployments[0]
    return {"metadata": {"name": "m-0", "namespace": "ns"}, "spec": deployment["spec"]["template"]["spec"]}


def _free_pod_address() -> str:
    in_use = listening_addresses()
    while True:
        address = f"127.2.{random.randrange(200, 250)}.{random.randrange(2, 250)}"
        if address not in in_use:
            return address


async def _start_pod(build: Build) -> tuple[SimKubelet, SimPod, _PodStatuses]:
    params = KubeletParams(imagePullSeconds=0, hfGiBPerSecond=1000, engineWarmupSeconds=0)
    kubelet = SimKubelet(client.ApiClient(), SimClock(1000), params, builds={BAD: build})
    statuses = _PodStatuses()
    kubelet.core = statuses  # type: ignore[assignment]
    kubelet.nodes["n"] = SimNode("n", "127.1.250.1", A100, [Device(0, "GPU-n-0", None, None)], 81920)
    raw = _pod(BAD)
    plan = plan_pod(raw)
    assert plan is not None
    assert plan.image == BAD
    pod = SimPod("uid-1", "ns", "m-0", "n", _free_pod_address(), plan)
    kubelet.pods[pod.uid] = pod
    await kubelet._run_pod(pod, raw)
    return kubelet, pod, statuses


def _ready(status: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))


def test_a_build_that_never_becomes_ready() -> None:
    async def run() -> None:
        kubelet, pod, statuses = await _start_pod(Build(never_ready=True))
        try:
            assert statuses.patches[-1]["phase"] == "Running"
            assert not any(_ready(s) for s in statuses.patches)  # Running, never Ready
            assert pod.server is None
            # vLLM has bound its port and never listens: the startup probe's /health is refused, every time.
            async with aiohttp.ClientSession() as http:
                for _ in range(3):
                    with pytest.raises(aiohttp.ClientConnectionError):
                        await http.get(f"http://{pod.ip}:8000/health")
                    await asyncio.sleep(0.01)
        finally:
            await kubelet._forget(pod, delete=False)
        assert pod.held_socket is None  # the port is released with the pod

    asyncio.run(asyncio.wait_for(run(), 20))


def test_the_kubelet_gives_the_pod_its_images_faults() -> None:
    async def run() -> None:
        kubelet, pod, statuses = await _start_pod(Build(error_share=0.2, prefill_slowdown=2.0))
        try:
            assert _ready(statuses.patches[-1])
            server = pod.server
            assert isinstance(server, VllmServer)
            assert server.error_share == 0.2
            assert server.profile.prefill_tokens_per_s == pytest.approx(PROFILE.prefill_tokens_per_s / 2)
            assert server.profile.decode_step_base_s == PROFILE.decode_step_base_s
        finally:
            await kubelet._forget(pod, delete=False)

    asyncio.run(asyncio.wait_for(run(), 20))
