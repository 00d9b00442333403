"""A vLLM pod on llm-d-inference-sim (`engine: llm-d-inference-sim`), on the shared control plane.

The simulated kubelet runs the pod the operator would write: it becomes Ready, serves a completion at its
pod IP, exports the vLLM metrics gpufleet reads, and on deletion llm-d-inference-sim drains on SIGTERM
(503 for new requests, the one in flight finishes) although the pod's vLLM release has no
--shutdown-timeout: that is what the real process does (fleetsim/llmd_sim.py).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from fleetsim.clock import SimClock
from fleetsim.kubelet import SimKubelet, server_factory_for
from fleetsim.llmd_sim import LlmdSimServer
from fleetsim.params import KubeletParams
from fleetsim.podspec import plan_pod
from fleetsim.pools import Pool, node_manifest
from gpufleet.adapters.serving_metrics import MetricQueries
from gpufleet.api.v1alpha1 import ModelDeploymentSpec
from gpufleet.config import Settings
from gpufleet.planning.placement import PlacementGroup
from gpufleet.planning.workloads import Owner, desired_workloads
from tests.conftest import Cluster

T = TypeVar("T")
SERVED = "llama-3-8b"
# 10 simulated seconds per real one: the 15 s preStop takes 1.5 s, and the 8B model's ~11 ms inter-token
# latency is ~1 ms real, llm-d-inference-sim's step, so a 3,000-token answer lasts ~3 real seconds.
SCALE = 10.0
# The image and the weights are taken as already on the node: the test is about the engine.
PARAMS = KubeletParams(imagePullSeconds=0, hfGiBPerSecond=1000, engineWarmupSeconds=0)
LONG_TOKENS = 3000


async def _until(probe: Callable[[], Awaitable[T | None]], timeout: float, what: str) -> T:
    """Await `probe` until it returns something truthy; fail after `timeout` real seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def _pod(namespace: str, node: str) -> dict[str, Any]:
    """The pod of the operator's Deployment for an old vLLM image that has no --shutdown-timeout."""
    spec = ModelDeploymentSpec.model_validate(
        {
            "model": {"uri": "hf://meta-llama/Meta-Llama-3-8B-Instruct", "maxModelLen": 4096},
            "engine": {"image": "vllm/vllm-openai:v0.11.0", "args": ["--max-num-seqs=4"]},
        }
    )
    # A plain preStop sleep, no wait for idle: SIGTERM finds the request still running.
    options = replace(Settings.defaults().workload_options(), drain_seconds=0)
    workloads = desired_workloads(
        Owner(SERVED, namespace, "u"), spec, [PlacementGroup("", "on-demand", 1)], options
    )
    template = workloads.deployments[0]["spec"]["template"]
    # A grace period longer than the 15 s preStop sleep: room for SIGTERM to do what the engine does with it
    # (vLLM without --shutdown-timeout would abort at once; llm-d-inference-sim drains).
    pod_spec = {**template["spec"], "nodeName": node, "terminationGracePeriodSeconds": 60}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "llmd-0"}, "spec": pod_spec}


def _ready(pod: client.V1Pod) -> bool:
    conditions = (pod.status and pod.status.conditions) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


async def _scenario(cluster: Cluster, namespace: str, tmp_path: Path) -> dict[str, Any]:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    core = client.CoreV1Api(api)
    kubelet = SimKubelet(
        api,
        SimClock(SCALE),
        PARAMS,
        server_factory=server_factory_for("llm-d-inference-sim"),
        volumes_root=tmp_path / "pods",
    )
    await asyncio.to_thread(kubelet.reserve_addresses_in_use)
    pool = Pool(
        name=f"llmd-{namespace}",
        instance_type="p4de.24xlarge",
        zone="us-east-1a",
        capacity_type="on-demand",
        count=1,
        max_count=1,
    )
    ip = kubelet.addresses.take("node")
    manifest = node_manifest(pool, 0, "i-llmd", ip)
    node = manifest["metadata"]["name"]
    out: dict[str, Any] = {}
    try:
        await kubelet.add_node(manifest, ip)
        kubelet.start()
        raw = _pod(namespace, node)
        plan = plan_pod(raw)
        assert plan is not None
        assert (plan.shutdown_timeout_seconds, plan.prestop_idle_wait_seconds) == (0, 0)  # no drain asked
        await asyncio.to_thread(core.create_namespaced_pod, namespace, raw)

        async def ready() -> client.V1Pod | None:
            pod = await asyncio.to_thread(core.read_namespaced_pod, "llmd-0", namespace)
            return pod if _ready(pod) else None

        pod = await _until(ready, 60, "the pod Ready")
        sim_pod = next(p for p in kubelet.pods.values() if p.name == "llmd-0")
        out["server"] = type(sim_pod.server).__name__
        assert isinstance(sim_pod.server, LlmdSimServer)
        assert sim_pod.server.process is not None
        pid = sim_pod.server.process.pid
        base = f"http://{pod.status.pod_ip}:{plan.port}"
        async with aiohttp.ClientSession() as session:
            body = {"model": SERVED, "prompt": "Say hello to the fleet", "max_tokens": 5, "ignore_eos": True}
            async with session.post(f"{base}/v1/completions", json=body) as reply:
                out["completion"] = (reply.status, await reply.json())
            async with session.get(f"{base}/metrics") as reply:
                out["metrics"] = await reply.text()

            # A long streamed request, then the pod's deletion: preStop, then SIGTERM.
            long_body = {**body, "prompt": [11, 12, 13], "max_tokens": LONG_TOKENS, "stream": True}

            async def stream() -> tuple[int, bool]:
                async with session.post(f"{base}/v1/completions", json=long_body) as reply:
                    lines = [line async for line in reply.content]
                    return reply.status, any(b"[DONE]" in line for line in lines)

            in_flight = asyncio.create_task(stream())

            async def running() -> bool:
                return sim_pod.server is not None and sim_pod.server.in_flight() > 0

            await _until(running, 10, "the long request running")
            await asyncio.to_thread(core.delete_namespaced_pod, "llmd-0", namespace)

            async def refused() -> int | None:
                try:
                    async with session.post(f"{base}/v1/completions", json=body) as reply:
                        return reply.status if reply.status == 503 else None
                except aiohttp.ClientError:
                    return None

            out["refused"] = await _until(refused, 20, "503 for a new request after SIGTERM")
            out["long"] = await asyncio.wait_for(in_flight, 30)

        async def gone() -> bool:
            try:
                await asyncio.to_thread(core.read_namespaced_pod, "llmd-0", namespace)
            except ApiException as error:
                return error.status == 404
            return False

        out["gone"] = await _until(gone, 30, "the pod deleted")
        out["process_left"] = Path(f"/proc/{pid}").exists()
    finally:
        await kubelet.stop()
    return out


def test_a_pod_on_llm_d_inference_sim_serves_exports_vllm_metrics_and_drains_on_sigterm(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    out = asyncio.run(_scenario(cluster, namespace, tmp_path))
    assert out["server"] == "LlmdSimServer"

    status, answer = out["completion"]
    assert status == 200, answer
    assert answer["model"] == SERVED
    assert answer["usage"]["completion_tokens"] == 5
    assert answer["choices"][0]["finish_reason"] == "length"

    # Every vLLM series gpufleet's autoscaler queries, labelled with the served model name.
    queried = {name for f in fields(MetricQueries) for name in re.findall(r"vllm:[a-z_]+", str(f.default))}
    assert queried >= {"vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"}
    for name in sorted(queried):
        assert re.search(rf'^{name}\{{[^}}]*model_name="{SERVED}"[^}}]*\}} ', out["metrics"], re.MULTILINE), (
            name
        )
    assert f'vllm:time_to_first_token_seconds_count{{model_name="{SERVED}"}} 1' in out["metrics"]

    # SIGTERM: new requests refused, the one in flight ran to its end, then the pod went.
    assert out["refused"] == 503
    assert out["long"] == (200, True)
    assert out["gone"]
    assert not out["process_left"]
