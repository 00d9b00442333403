"""The simulated vLLM: model facts, the engine's capacity and scheduling, and its HTTP face."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import replace

import aiohttp
import pytest

from fleetsim.clock import SimClock
from fleetsim.models import gpu_model_name, gpu_spec, model_spec, weight_dtype_bytes
from fleetsim.podspec import plan_pod
from fleetsim.prometheus import sum_samples
from fleetsim.vllm_model import (
    ACCEPTANCE_RATES,
    Engine,
    EngineConfigError,
    EngineProfile,
    FinishedRequest,
    RequestRejectedError,
    profile_for,
    tokens_per_step,
)
from fleetsim.vllm_server import VllmServer
from gpufleet.api.v1alpha1 import ModelDeploymentSpec

A100 = "NVIDIA-A100-SXM4-80GB"
LLAMA_70B = "meta-llama/Meta-Llama-3-70B-Instruct"
LLAMA_8B = "meta-llama/Meta-Llama-3-8B-Instruct"


def _small_profile(**overrides: float) -> EngineProfile:
    """A toy engine whose numbers are easy to reason about."""
    values: dict[str, float] = {
        "kv_cache_tokens": 100_000,
        "prefill_tokens_per_s": 10_000.0,
        "decode_step_base_s": 0.02,
        "decode_step_per_seq_s": 0.001,
        "max_model_len": 4096,
        "max_num_seqs": 8,
        "max_num_batched_tokens": 2048,
    }
    values.update(overrides)
    return EngineProfile(
        kv_cache_tokens=int(values["kv_cache_tokens"]),
        prefill_tokens_per_s=values["prefill_tokens_per_s"],
        decode_step_base_s=values["decode_step_base_s"],
        decode_step_per_seq_s=values["decode_step_per_seq_s"],
        max_model_len=int(values["max_model_len"]),
        max_num_seqs=int(values["max_num_seqs"]),
        max_num_batched_tokens=int(values["max_num_batched_tokens"]),
    )


def _run(engine: Engine, arrivals: list[tuple[float, int, int]]) -> tuple[list[FinishedRequest], int]:
    """Drive the engine on simulated time through (arrival, prompt, max_tokens) requests.

    Returns the finished requests in arrival order and the deepest queue seen.
    """
    now, next_arrival, deepest = 0.0, 0, 0
    finished: dict[str, FinishedRequest] = {}
    while next_arrival < len(arrivals) or engine.has_work:
        while next_arrival < len(arrivals) and arrivals[next_arrival][0] <= now:
            at, prompt, max_tokens = arrivals[next_arrival]
            engine.submit(str(next_arrival), prompt, max_tokens, at)
            next_arrival += 1
        if not engine.has_work:
            now = arrivals[next_arrival][0]
            continue
        result = engine.step(now)
        deepest = max(deepest, engine.num_waiting)
        now = result.end
        finished.update((done.request_id, done) for done in result.finished)
    return [finished[str(i)] for i in range(len(arrivals))], deepest


def test_model_catalog() -> None:
    llama70 = model_spec(LLAMA_70B)
    assert llama70.kv_bytes_per_token() == 320 * 1024  # REFERENCE.md
    assert model_spec(LLAMA_8B).kv_bytes_per_token() == 128 * 1024
    # a bucket or volume path names the model by its last component
    assert model_spec("s3://models/llama/Meta-Llama-3-70B-Instruct/") == llama70
    assert model_spec("/mnt/models/llama-3.1-8b-instruct").max_position_embeddings == 131072
    # gpufleet's catalog: Qwen2.5 32B has its own geometry (64 layers), not a guess
    qwen = model_spec("Qwen/Qwen2.5-32B-Instruct")
    assert (qwen.assumed, qwen.layers, qwen.max_position_embeddings) == (False, 64, 32768)
    guessed = model_spec("acme/Foo-32B-Instruct")
    assert guessed.assumed
    assert guessed.params == 32e9
    assert guessed.layers == 80  # nearest Llama geometry: 70B
    with pytest.raises(ValueError, match="parameter count"):
        model_spec("my-model")
    assert weight_dtype_bytes("x/Meta-Llama-3-70B-Instruct-FP8") == 1
    assert weight_dtype_bytes(LLAMA_70B, "awq") == 0.5
    assert weight_dtype_bytes(LLAMA_70B) == 2


def test_gpu_catalog_and_mig_slices() -> None:
    whole = gpu_spec(A100)
    third = gpu_spec(A100, "3g.40gb")
    assert third.bf16_dense_flops == pytest.approx(whole.bf16_dense_flops * 3 / 7)
    assert third.memory_gib == pytest.approx(whole.memory_gib / 2)
    assert third.hbm_bandwidth_bytes_per_s == pytest.approx(whole.hbm_bandwidth_bytes_per_s / 2)
    assert gpu_spec(f"{A100}-MIG-3g.40gb") == third
    assert gpu_spec(A100, "mig-3g.40gb") == third  # the device-plugin resource spelling
    assert gpu_spec("NVIDIA-H100-80GB-HBM3").hbm_bandwidth_bytes_per_s == 3.35e12
    assert gpu_model_name(f"{A100}-MIG-2g.20gb") == "NVIDIA A100-SXM4-80GB"
    with pytest.raises(ValueError, match="no MIG profile"):
        gpu_spec("NVIDIA-A100-SXM4-40GB", "3g.40gb")


def test_llama3_70b_tp4_a100_profile() -> None:
    profile = profile_for(LLAMA_70B, 4, A100)
    # REFERENCE.md: ≈ 33 GiB of weights per GPU, ≈ 450K KV tokens in total
    assert profile.weights_gib_per_gpu == pytest.approx(32.9, abs=0.2)
    assert 450_000 * 0.85 <= profile.kv_cache_tokens <= 450_000 * 1.15
    # The bandwidth roofline is 4 × 2.039 TB/s / 141 GB ≈ 58 tokens/s; public single-stream
    # reports for 70B TP4 on A100 are ≈ 30-40. The model must land between.
    single_stream = 1 / profile.decode_step_s(1, 1000)
    assert 25 <= single_stream <= 58
    assert profile.max_num_seqs == 256
    assert profile.max_model_len == 8192


def test_startup_failures_and_quantized_profile() -> None:
    with pytest.raises(EngineConfigError, match="No available memory"):
        profile_for(LLAMA_70B, 1, A100)
    fp8 = profile_for(LLAMA_70B, 2, A100, dtype_bytes=1)
    assert 200_000 < fp8.kv_cache_tokens < 280_000  # half of TP4's KV with the same memory per GPU
    # 8B in a 20 GB slice at the default 0.9 cannot hold one 8K-token sequence: vLLM refuses to start.
    with pytest.raises(EngineConfigError, match="max seq len"):
        profile_for(LLAMA_8B, 1, A100, "2g.20gb")
    assert profile_for(LLAMA_8B, 1, A100, "2g.20gb", max_model_len=4096).kv_cache_tokens >= 4096
    with pytest.raises(EngineConfigError, match="MIG"):
        profile_for(LLAMA_8B, 2, A100, "3g.40gb")


def test_mig_slice_is_slower_than_the_whole_gpu() -> None:
    whole = profile_for(LLAMA_8B, 1, A100)
    slice_ = profile_for(LLAMA_8B, 1, A100, "2g.20gb", gpu_memory_utilization=0.95)
    assert slice_.decode_step_s(1, 500) > 3 * whole.decode_step_s(1, 500)
    assert slice_.prefill_tokens_per_s < whole.prefill_tokens_per_s / 3
    assert slice_.kv_cache_tokens < whole.kv_cache_tokens / 10


def test_throughput_rises_with_concurrency_then_saturates() -> None:
    profile = profile_for(LLAMA_8B, 1, A100)
    throughput = {}
    for concurrency in (1, 16, 128, 256, 512):
        finished, _ = _run(Engine(profile), [(0.0, 256, 64)] * concurrency)
        elapsed = max(done.finished_at for done in finished)
        throughput[concurrency] = sum(done.generated_tokens for done in finished) / elapsed
    assert throughput[1] < throughput[16] < throughput[128] < throughput[256]
    assert throughput[16] > 8 * throughput[1]  # batching is nearly free while memory-bound
    # beyond max_num_seqs requests only queue
    assert throughput[512] < 1.1 * throughput[256]


def test_queueing_grows_when_arrivals_exceed_capacity() -> None:
    profile = _small_profile()
    # 8 sequences × 50 tokens per ≈ 0.03 s steps: ≈ 5 requests/s at most
    light = [(i * 0.5, 100, 50) for i in range(40)]
    heavy = [(i * 0.05, 100, 50) for i in range(200)]
    light_done, light_queue = _run(Engine(profile), light)
    heavy_done, heavy_queue = _run(Engine(profile), heavy)
    assert light_queue == 0
    assert max(done.ttft for done in light_done) < 0.1
    assert heavy_queue > 50
    early = sum(done.ttft for done in heavy_done[:10]) / 10
    late = sum(done.ttft for done in heavy_done[-10:]) / 10
    assert late > 20 * early
    assert heavy_done[-1].queue_time > 10


def test_kv_exhaustion_preempts_and_everyone_still_finishes() -> None:
    engine = Engine(_small_profile(kv_cache_tokens=2000, max_model_len=1024, max_num_seqs=64))
    finished, _ = _run(engine, [(0.0, 150, 300)] * 10)  # 1500 admitted, 4500 needed eventually
    assert engine.num_preemptions > 0
    assert [done.generated_tokens for done in finished] == [300] * 10
    assert engine.kv_cache_usage == 0
    assert not engine.has_work


def test_kv_usage_and_busy_fraction() -> None:
    engine = Engine(_small_profile())
    for i in range(4):
        engine.submit(str(i), 1000, 500, 0.0)
    now = 0.0
    while now < 12:
        now = engine.step(now).end
    assert engine.num_running == 4
    assert 0.04 < engine.kv_cache_usage < 0.06  # 4 × (1000 + generated) of 100K
    assert engine.busy_fraction(now) > 0.99
    assert engine.busy_fraction(now + 30) == 0


def test_requests_beyond_max_model_len_are_rejected() -> None:
    engine = Engine(profile_for(LLAMA_8B, 1, A100))
    with pytest.raises(RequestRejectedError, match="maximum context length is 8192"):
        engine.submit("a", 8000, 500, 0.0)
    engine.submit("b", 8000, 192, 0.0)
    assert engine.num_waiting == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _exercise_server() -> None:
    port = _free_port()
    name = "llama-8b"
    server = VllmServer(
        "127.0.0.1", port, name, profile_for(LLAMA_8B, 1, A100), SimClock(1000), lora_names=["sql-lora"]
    )
    await server.start()
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/health") as response:
                assert response.status == 200
            async with http.get(f"{base}/v1/models") as response:
                cards = (await response.json())["data"]
            assert [(c["id"], c["parent"], c["root"]) for c in cards] == [
                (name, None, LLAMA_8B),  # root: the `vllm serve` model argument
                ("sql-lora", name, "sql-lora"),
            ]

            completion = {"model": name, "prompt": "x" * 400, "max_tokens": 20}
            async with http.post(f"{base}/v1/completions", json=completion) as response:
                assert response.status == 200
                body = await response.json()
            assert body["model"] == name
            assert body["usage"] == {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
            assert body["choices"][0]["finish_reason"] == "length"

            chat = {
                "model": "sql-lora",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 5,
                "stream": True,
            }
            async with http.post(f"{base}/v1/chat/completions", json=chat) as response:
                assert response.status == 200
                events = [line for line in (await response.text()).split("\n\n") if line]
            assert events[-1] == "data: [DONE]"
            chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
            assert sum(1 for c in chunks if c["choices"][0]["delta"].get("content")) == 5
            assert chunks[-1]["choices"][0]["finish_reason"] == "length"

            async with http.post(f"{base}/v1/completions", json={**completion, "model": "gpt-4"}) as response:
                assert response.status == 404
                assert (await response.json())["error"] == {
                    "message": f"The model `gpt-4` does not exist. Valid aliases: {name}.",
                    "type": "NotFoundError",
                    "param": "model",
                    "code": 404,
                }
            # No model: the base model answers, under its served name (as vLLM 0.34.0).
            nameless = {"prompt": "x" * 40, "max_tokens": 1}
            async with http.post(f"{base}/v1/completions", json=nameless) as response:
                assert response.status == 200
                assert (await response.json())["model"] == name
            too_long = {**completion, "max_tokens": 9000}
            async with http.post(f"{base}/v1/completions", json=too_long) as response:
                assert response.status == 400

            async with http.get(f"{base}/metrics") as response:
                metrics = await response.text()
            assert f'vllm:num_requests_running{{model_name="{name}"}} 0.0' in metrics
            assert f'vllm:generation_tokens_total{{model_name="{name}"}} 26.0' in metrics
            assert f'vllm:prompt_tokens_total{{model_name="{name}"}} 115.0' in metrics
            assert f'vllm:time_to_first_token_seconds_count{{model_name="{name}"}} 3.0' in metrics
            assert "vllm:spec_decode" not in metrics  # only with a --speculative-config
            assert f'vllm:request_success_total{{finished_reason="length",model_name="{name}"}}' in metrics

            # Draining: the request in flight finishes, new ones get 503.
            long = {**completion, "max_tokens": 2000}  # ≈ 25 simulated s, 25 ms real
            in_flight = asyncio.create_task(http.post(f"{base}/v1/completions", json=long))
            while server.in_flight() == 0:
                await asyncio.sleep(0.001)
            server.start_draining()
            async with http.post(f"{base}/v1/completions", json=completion) as response:
                assert response.status == 503
            async with http.get(f"{base}/health") as response:
                assert response.status == 503
            response = await asyncio.wait_for(in_flight, 10)
            assert response.status == 200
            assert (await response.json())["usage"]["completion_tokens"] == 2000
            response.release()
            assert server.in_flight() == 0
            # Read at the end of the long request's last step, not now: 10 simulated s are 10 real ms
            # here, and a loaded CI machine can take longer than that between the response and this
            # line (the window would then be empty).
            assert server.gpu_utilization(at=server.last_step_end) > 0
            assert server.gpu_utilization(at=server.last_step_end + 30) == 0
    finally:
        await server.stop()


def test_server_speaks_vllm_http() -> None:
    asyncio.run(asyncio.wait_for(_exercise_server(), 20))


def test_the_engine_refuses_exactly_what_gpufleet_validate_rejects() -> None:
    """One arithmetic (gpufleet.api.kv_fit): validation and the simulated vLLM agree at the edge."""
    from gpufleet.api import validate_manifest

    def manifest(utilization: float) -> dict[str, object]:
        return {
            "apiVersion": "gpufleet.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "llama-3-8b"},
            "spec": {
                "model": {"uri": "hf://meta-llama/Meta-Llama-3-8B-Instruct", "maxModelLen": 8192},
                "engine": {"args": [f"--gpu-memory-utilization={utilization}"]},
                "accelerator": {"gpuProduct": A100, "migProfile": "2g.20gb"},
            },
        }

    # 8B bf16 on a 2g.20gb slice holds one 8K sequence from about 0.907 up.
    for utilization in (0.88, 0.90, 0.904, 0.906, 0.91, 0.95):
        rejected = bool(validate_manifest(manifest(utilization)))
        try:
            profile_for(LLAMA_8B, 1, A100, "2g.20gb", gpu_memory_utilization=utilization, max_model_len=8192)
            refused = False
        except EngineConfigError:
            refused = True
        assert rejected is refused, utilization


def test_tokens_per_step_is_the_expected_accepted_prefix_plus_one() -> None:
    """(1 − a^(k+1)) / (1 − a): a = 0.68, k = 3 gives vLLM's logged mean acceptance length 2.46."""
    assert tokens_per_step(0.68, 3) == pytest.approx(2.457, abs=1e-3)
    assert tokens_per_step(0.57, 2) == pytest.approx(1.895, abs=1e-3)
    assert tokens_per_step(0.9, 0) == 1.0
    assert tokens_per_step(1.0, 4) == 5.0
    assert set(ACCEPTANCE_RATES) == {"ngram", "draft_model", "eagle", "eagle3", "mtp"}


def test_a_draft_model_takes_weights_and_kv_and_ngram_takes_nothing() -> None:
    plain = profile_for(LLAMA_70B, 4, A100, max_model_len=8192)
    ngram = profile_for(
        LLAMA_70B, 4, A100, max_model_len=8192, speculative_method="ngram", num_speculative_tokens=3
    )
    draft = profile_for(
        LLAMA_70B,
        4,
        A100,
        max_model_len=8192,
        speculative_method="draft_model",
        num_speculative_tokens=3,
        draft_model_id="meta-llama/Llama-3.2-1B-Instruct",
    )
    eagle = profile_for(
        LLAMA_70B, 4, A100, max_model_len=8192, speculative_method="eagle", num_speculative_tokens=3
    )
    assert ngram.kv_cache_tokens == plain.kv_cache_tokens
    assert draft.kv_cache_tokens < eagle.kv_cache_tokens < plain.kv_cache_tokens
    # Verifying 1 + k tokens per sequence and running the drafter cost more per step than a plain decode.
    assert draft.decode_step_s(8, 8000) > eagle.decode_step_s(8, 8000) > plain.decode_step_s(8, 8000)
    assert ngram.tokens_per_decode_step == pytest.approx(tokens_per_step(ACCEPTANCE_RATES["ngram"], 3))


@pytest.mark.parametrize("method", ["ngram", "eagle", "eagle3", "mtp"])
def test_the_same_load_is_served_faster_per_token_with_speculation(method: str) -> None:
    """Memory-bound decode: proposals that are often right cut time per output token and latency."""
    arrivals = [(i * 0.5, 800, 300) for i in range(40)]
    plain, _ = _run(Engine(profile_for(LLAMA_70B, 4, A100, max_model_len=8192)), arrivals)
    profile = profile_for(
        LLAMA_70B, 4, A100, max_model_len=8192, speculative_method=method, num_speculative_tokens=3
    )
    fast, _ = _run(Engine(profile), arrivals)

    def per_token(done: list[FinishedRequest]) -> float:
        return sum((r.e2e_latency - r.ttft) / (r.generated_tokens - 1) for r in done) / len(done)

    assert all(r.generated_tokens == 300 for r in fast)
    assert per_token(fast) < 0.75 * per_token(plain)
    assert sum(r.e2e_latency for r in fast) < sum(r.e2e_latency for r in plain)


def test_inter_token_latency_is_observed_once_per_step_as_vllm_does() -> None:
    """vLLM records one inter-token latency per request and step, however many tokens it accepted."""
    profile = replace(_small_profile(), num_speculative_tokens=3, tokens_per_decode_step=2.5)
    engine = Engine(profile)
    engine.submit("r", 10, 101, 0.0)
    now, observations, steps = 0.0, 0, 0
    while engine.has_work:
        result = engine.step(now)
        now = result.end
        steps += 1
        observations += sum(result.inter_token_latencies.values())
    # One prefill step (first token), then 100 tokens at 2.5 per step.
    assert steps == 1 + 40
    assert observations == 40


async def _serve_a_speculative_pod() -> None:
    from gpufleet.config import Settings
    from gpufleet.planning.placement import PlacementGroup
    from gpufleet.planning.workloads import Owner, desired_workloads

    spec = ModelDeploymentSpec.model_validate(
        {
            "model": {"uri": "hf://meta-llama/Meta-Llama-3-8B-Instruct", "maxModelLen": 8192},
            "accelerator": {"gpuProduct": A100},
            "engine": {
                "speculativeDecoding": {
                    "method": "draft_model",
                    "numSpeculativeTokens": 4,
                    "draftModel": {"uri": "hf://meta-llama/Llama-3.2-1B-Instruct"},
                }
            },
        }
    )
    workloads = desired_workloads(
        Owner("spec", "ns", "u"),
        spec,
        [PlacementGroup("", "on-demand", 1)],
        Settings.defaults().workload_options(),
    )
    plan = plan_pod({"spec": workloads.deployments[0]["spec"]["template"]["spec"]})
    assert plan is not None
    assert (plan.speculative_method, plan.num_speculative_tokens) == ("draft_model", 4)
    assert plan.draft_model_id == "meta-llama/Llama-3.2-1B-Instruct"
    # What the kubelet does before marking the pod Ready.
    profile = profile_for(
        plan.model_id,
        plan.tensor_parallel_size,
        A100,
        max_model_len=plan.max_model_len,
        speculative_method=plan.speculative_method,
        num_speculative_tokens=plan.num_speculative_tokens,
        draft_model_id=plan.draft_model_id,
    )
    assert profile.tokens_per_decode_step > 1
    port = _free_port()
    server = VllmServer("127.0.0.1", port, plan.served_name, profile, SimClock(1000))
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/health") as response:
                assert response.status == 200
            completion = {"model": plan.served_name, "prompt": "x" * 400, "max_tokens": 50}
            async with http.post(f"http://127.0.0.1:{port}/v1/completions", json=completion) as response:
                assert response.status == 200
                assert (await response.json())["usage"]["completion_tokens"] == 50
            stream = {**completion, "stream": True}
            async with http.post(f"http://127.0.0.1:{port}/v1/completions", json=stream) as response:
                events = [line for line in (await response.text()).split("\n\n") if line]
            chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
            assert sum(1 for c in chunks if c["choices"][0].get("text")) == 50
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                exposition = await response.text()
    finally:
        await server.stop()
    # vLLM's spec-decode counters (vllm/v1/spec_decode/metrics.py): one draft of k = 4 proposals per
    # decoding sequence and step; each step's tokens are the accepted proposals plus the model's own, so
    # over both requests (100 tokens, the first of each from its prefill) accepted + drafts = 98.
    drafts = sum_samples(exposition, "vllm:spec_decode_num_drafts_total")
    proposed = sum_samples(exposition, "vllm:spec_decode_num_draft_tokens_total")
    accepted = sum_samples(exposition, "vllm:spec_decode_num_accepted_tokens_total")
    assert drafts > 0
    assert proposed == 4 * drafts
    assert accepted + drafts == 98
    per_position = [
        sum_samples(exposition, "vllm:spec_decode_num_accepted_tokens_per_pos_total", position=str(i))
        for i in range(4)
    ]
    assert sum(per_position) == accepted
    assert per_position == sorted(per_position, reverse=True)  # a later proposal needs the earlier ones


def test_a_pod_with_speculative_decoding_is_planned_and_served() -> None:
    asyncio.run(asyncio.wait_for(_serve_a_speculative_pod(), 20))
