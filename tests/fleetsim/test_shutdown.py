"""Pod deletion behaves like the vLLM release the pod runs.

With --shutdown-timeout (v0.18.0+) SIGTERM makes vLLM refuse new requests and drain; without it (every
older release, or 0) SIGTERM aborts what is in flight and the client sees its connection cut. gpufleet's
preStop for older releases waits, bounded, until the engine is idle, so SIGTERM then cuts nothing.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from kubernetes import client

from fleetsim.clock import SimClock
from fleetsim.kubelet import SimKubelet, SimPod, listening_addresses
from fleetsim.loadgen import LoadGenerator, parse_trace
from fleetsim.podspec import PodPlan, plan_pod
from fleetsim.vllm_model import EngineProfile
from fleetsim.vllm_server import VllmServer
from gpufleet.api.v1alpha1 import ModelDeploymentSpec
from gpufleet.config import Settings
from gpufleet.planning.placement import PlacementGroup
from gpufleet.planning.workloads import Owner, desired_workloads

PORT = 8000
SCALE = 100.0  # simulated seconds per real second
# 0.02 s of simulated decode per step: a 2000-token request takes ~40 simulated s (0.4 s real).
PROFILE = EngineProfile(
    kv_cache_tokens=100_000,
    prefill_tokens_per_s=10_000.0,
    decode_step_base_s=0.02,
    decode_step_per_seq_s=0.001,
    max_model_len=4096,
    max_num_seqs=8,
    max_num_batched_tokens=2048,
)
LONG_TOKENS = 2000


def _plan_for(engine: dict[str, str], **env: int) -> PodPlan:
    spec = ModelDeploymentSpec.model_validate(
        {"model": {"uri": "hf://meta-llama/Meta-Llama-3-8B-Instruct"}, "engine": engine}
    )
    options = replace(Settings.defaults().workload_options(), **env)
    deployment = desired_workloads(Owner("m", "ns", "u"), spec, [PlacementGroup("", "spot", 1)], options)
    plan = plan_pod({"spec": deployment.deployments[0]["spec"]["template"]["spec"]})
    assert plan is not None
    return plan


@pytest.mark.parametrize(
    ("engine", "env", "shutdown", "idle_wait"),
    [
        ({}, {}, 120.0, 0.0),  # the default image drains with --shutdown-timeout
        ({"image": "vllm/vllm-openai:v0.11.0"}, {}, 0.0, 120.0),  # no flag: preStop waits until idle
        ({"image": "vllm/vllm-openai:v0.11.0"}, {"drain_seconds": 0}, 0.0, 0.0),  # no drain at all
    ],
)
def test_the_pod_plan_reads_the_shutdown_the_operator_wrote(
    engine: dict[str, str], env: dict[str, int], shutdown: float, idle_wait: float
) -> None:
    plan = _plan_for(engine, **env)
    assert plan.prestop_seconds == 15.0
    assert (plan.shutdown_timeout_seconds, plan.prestop_idle_wait_seconds) == (shutdown, idle_wait)


def _free_pod_address() -> str:
    in_use = listening_addresses()
    while True:
        address = f"127.2.{random.randrange(200, 250)}.{random.randrange(2, 250)}"
        if address not in in_use:
            return address


class _NoApi:
    """The API server's pod deletion, which these tests do not need."""

    def delete_namespaced_pod(self, *args: Any, **kwargs: Any) -> None:
        return None


async def _delete_during_a_request(plan: PodPlan) -> tuple[Counter[str], int, int]:
    """Start a long streamed request, delete the pod, try a new request; the load generator's tally."""
    clock = SimClock(SCALE)
    kubelet = SimKubelet(client.ApiClient(), clock)
    kubelet.core = _NoApi()  # type: ignore[assignment]
    address = _free_pod_address()
    server = VllmServer(address, PORT, "m", PROFILE, clock)
    await server.start()
    pod = SimPod("uid-1", "ns", "p", "n", address, plan, server=server)
    kubelet.pods[pod.uid] = pod
    base = f"http://{address}:{PORT}"
    generator = LoadGenerator(
        lambda: [base],
        "m",
        parse_trace({"kind": "constant", "rate": 1}),
        clock,
        prompt_tokens=16,
        max_tokens=LONG_TOKENS,
    )
    async with aiohttp.ClientSession() as session:
        first = asyncio.create_task(generator._request(session, base))
        while server.in_flight() == 0:
            await asyncio.sleep(0.001)
        terminating = asyncio.create_task(kubelet._terminate(pod))
        # Past the preStop delay (1 simulated s), well before the long request ends (~40 s).
        await clock.sleep(5)
        late = 0
        if pod.server is not None:
            generator.max_tokens = 1
            await generator._request(session, base)
            late = generator._tally.ok
        await asyncio.wait_for(first, 10)
        await asyncio.wait_for(terminating, 10)
    tally = generator._tally
    return tally.errors, tally.ok - late, late


def _plan(shutdown: float = 0.0, idle_wait: float = 0.0, grace: float = 300.0) -> PodPlan:
    return PodPlan(
        model_id="meta-llama/Meta-Llama-3-8B-Instruct",
        served_name="m",
        tensor_parallel_size=1,
        max_model_len=4096,
        dtype_bytes=2,
        gpu_memory_utilization=0.9,
        max_num_seqs=None,
        gpu_resource="nvidia.com/gpu",
        gpu_count=1,
        lora_names=(),
        source="pvc",
        prestop_seconds=1,
        grace_seconds=grace,
        port=PORT,
        shutdown_timeout_seconds=shutdown,
        prestop_idle_wait_seconds=idle_wait,
    )


def test_without_shutdown_timeout_sigterm_cuts_requests_in_flight() -> None:
    errors, finished, _ = asyncio.run(_delete_during_a_request(_plan()))
    # SIGTERM came at the end of the 1 s preStop: the stream was cut, and the load generator counts it.
    assert finished == 0
    assert sum(errors.values()) >= 1
    assert set(errors) <= {"connection", "protocol"}


def test_with_shutdown_timeout_vllm_refuses_new_requests_and_drains() -> None:
    errors, finished, late = asyncio.run(_delete_during_a_request(_plan(shutdown=120)))
    assert finished == 1  # the long request ran to its end
    assert (errors, late) == (Counter({"503": 1}), 0)  # the request after SIGTERM was refused


def test_the_drain_ends_at_the_shutdown_timeout() -> None:
    errors, finished, _ = asyncio.run(_delete_during_a_request(_plan(shutdown=5)))
    # 5 simulated s of drain cannot finish a ~40 s request: it is cut then.
    assert finished == 0
    assert errors["503"] == 1
    assert sum(errors.values()) == 2


def test_the_prestop_wait_for_older_releases_lets_requests_finish() -> None:
    errors, finished, late = asyncio.run(_delete_during_a_request(_plan(idle_wait=120)))
    # Still in the preStop: the engine serves as before SIGTERM (new requests too), then SIGTERM cuts nothing.
    assert finished == 1
    assert late == 1
    assert errors == Counter()


def test_the_grace_period_bounds_the_prestop_wait() -> None:
    errors, finished, _ = asyncio.run(_delete_during_a_request(_plan(idle_wait=120, grace=10)))
    assert finished == 0
    assert sum(errors.values()) >= 1
